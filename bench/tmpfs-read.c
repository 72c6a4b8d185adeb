// What a 4 KiB random read of a tmpfs file costs each way the host could do it, in C without
// the host around it: pread, preadv, io_uring READV at depth 64 in one io_uring_enter per batch
// (SINGLE_ISSUER|DEFER_TASKRUN, or a plain ring), and a memcpy out of a shared mapping of the
// file. CPU per read of the whole process (io-wq kernel threads included), into a 64 MiB memfd
// mapping standing for guest memory. host/io/mapped-reads.ts says why the host maps tmpfs files.
//
//   gcc -O2 -o /tmp/tmpfs-read bench/tmpfs-read.c -luring && /tmp/tmpfs-read [READS]
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#define FILE_BYTES (256L << 20)
#define GUEST_BYTES (64L << 20)
#define DEPTH 64

static double cpu_s(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static unsigned seed = 1;
static void next(long *file_off, long *guest_off) {
  seed = seed * 1103515245 + 12345;
  *file_off = ((long)(seed >> 8) % (FILE_BYTES / 4096)) * 4096;
  *guest_off = ((long)((seed * 7) >> 8) % (GUEST_BYTES / 4096)) * 4096;
}

static void die(const char *what, int err) {
  fprintf(stderr, "%s: %s\n", what, strerror(err));
  exit(1);
}

int main(int argc, char **argv) {
  long reads = argc > 1 ? atol(argv[1]) : 2000000;
  char path[] = "/dev/shm/tmpfs-read-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) die("mkstemp", errno);
  unlink(path);
  char *chunk = malloc(1 << 20);
  memset(chunk, 0x5a, 1 << 20);
  for (long o = 0; o < FILE_BYTES; o += 1 << 20)
    if (pwrite(fd, chunk, 1 << 20, o) != 1 << 20) die("fill", errno);
  int mfd = memfd_create("guest", 0);
  if (mfd < 0 || ftruncate(mfd, GUEST_BYTES) < 0) die("memfd", errno);
  char *guest = mmap(NULL, GUEST_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  char *file = mmap(NULL, FILE_BYTES, PROT_READ, MAP_SHARED, fd, 0);
  if (guest == MAP_FAILED || file == MAP_FAILED) die("mmap", errno);
  memset(guest, 0, GUEST_BYTES);
  struct iovec nw = {guest, 4096};
  if (preadv2(fd, &nw, 1, 0, RWF_NOWAIT) < 0) printf("preadv2(RWF_NOWAIT) on tmpfs: %s (io_uring punts such reads to io-wq)\n", strerror(errno));
  volatile char sink = 0;
  for (long o = 0; o < FILE_BYTES; o += 4096) sink += file[o]; // mapped once, as after a warm-up
  const char *modes[] = {"pread", "preadv", "io_uring DEFER_TASKRUN", "io_uring plain", "mapping memcpy"};
  for (int m = 0; m < 5; m++) {
    struct io_uring ring;
    if (m == 2 || m == 3) {
      struct io_uring_params p = {0};
      if (m == 2) p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
      int r = io_uring_queue_init_params(2 * DEPTH, &ring, &p);
      if (r < 0) die("io_uring_queue_init_params", -r);
    }
    struct iovec iov[DEPTH];
    double c0 = cpu_s();
    for (long done = 0; done < reads; done += DEPTH) {
      for (int i = 0; i < DEPTH; i++) {
        long off, at;
        next(&off, &at);
        if (m == 0) {
          if (pread(fd, guest + at, 4096, off) != 4096) die("pread", errno);
        } else if (m == 1) {
          struct iovec v = {guest + at, 4096};
          if (preadv(fd, &v, 1, off) != 4096) die("preadv", errno);
        } else if (m == 4) {
          memcpy(guest + at, file + off, 4096);
        } else {
          iov[i] = (struct iovec){guest + at, 4096};
          struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
          io_uring_prep_readv(sqe, fd, &iov[i], 1, off);
        }
      }
      if (m == 2 || m == 3) {
        int r = io_uring_submit_and_wait(&ring, DEPTH);
        if (r < 0) die("io_uring_submit_and_wait", -r);
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
          if (cqe->res != 4096) die("readv", cqe->res < 0 ? -cqe->res : EIO);
          n++;
        }
        io_uring_cq_advance(&ring, n);
      }
    }
    printf("%-24s %.2f us CPU per 4 KiB read\n", modes[m], (cpu_s() - c0) / reads * 1e6);
    if (m == 2 || m == 3) io_uring_queue_exit(&ring);
  }
  return 0;
}
