// Plain fd I/O plus the fd kinds Node cannot create: eventfd, memfd, pipe2 with flags.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

static bool fd_and_buf(napi_env env, napi_callback_info info, size_t nargs, const char *fn, napi_value *argv, int *fd,
                       void **buf, size_t *len) {
  if (!get_args(env, info, nargs, nargs, argv, NULL, fn)) return false;
  if (!get_fd(env, argv[0], fn, "fd", fd)) return false;
  return get_bytes(env, argv[1], fn, "buf", buf, len);
}

// The result of a read(2)/write(2)-like call (already retried on EINTR; errno still its own):
// the byte count, -1 for EAGAIN when `would_block` allows it (non-blocking fds), else throws.
static napi_value io_count(napi_env env, ssize_t n, const char *fn, bool would_block) {
  if (n < 0) {
    if (would_block && (errno == EAGAIN || errno == EWOULDBLOCK)) return make_number(env, -1);
    throw_errno(env, fn, errno);
    return NULL;
  }
  return make_number(env, (double)n);
}

// read(2)/write(2): the fd may be non-blocking, so "would block" is a result (-1), not an error.
static napi_value stream_io(napi_env env, napi_callback_info info, bool writing) {
  const char *fn = writing ? "write" : "read";
  napi_value argv[2];
  int fd;
  void *buf;
  size_t len;
  if (!fd_and_buf(env, info, 2, fn, argv, &fd, &buf, &len)) return NULL;
  if (!writing && len == 0) {
    throw_range(env, "read: buf is empty (length 0); a zero-byte read cannot be told apart from EOF");
    return NULL;
  }
  ssize_t n;
  do n = writing ? write(fd, buf, len) : read(fd, buf, len);
  while (n < 0 && errno == EINTR);
  return io_count(env, n, fn, true);
}

// pread(2)/pwrite(2) at a 64-bit offset (files and block devices: EAGAIN is an error here).
static napi_value positional_io(napi_env env, napi_callback_info info, bool writing) {
  const char *fn = writing ? "pwrite" : "pread";
  napi_value argv[3];
  int fd;
  void *buf;
  size_t len;
  uint64_t off;
  if (!fd_and_buf(env, info, 3, fn, argv, &fd, &buf, &len)) return NULL;
  if (!get_u64(env, argv[2], fn, "offset", &off)) return NULL;
  ssize_t n;
  do n = writing ? pwrite(fd, buf, len, (off_t)off) : pread(fd, buf, len, (off_t)off);
  while (n < 0 && errno == EINTR);
  return io_count(env, n, fn, false);
}

static napi_value do_read(napi_env env, napi_callback_info info) { return stream_io(env, info, false); }
static napi_value do_write(napi_env env, napi_callback_info info) { return stream_io(env, info, true); }
static napi_value do_pread(napi_env env, napi_callback_info info) { return positional_io(env, info, false); }
static napi_value do_pwrite(napi_env env, napi_callback_info info) { return positional_io(env, info, true); }

static napi_value do_close(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "close", &fd)) return NULL;
  // Linux releases the fd even when close reports EINTR; retrying could close a reused number.
  if (close(fd) < 0 && errno != EINTR) {
    throw_errno(env, "close", errno);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value do_dup(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "dup", &fd)) return NULL;
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) {
    throw_errno(env, "dup", errno);
    return NULL;
  }
  return make_number(env, d);
}

static napi_value set_nonblocking(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  bool on;
  if (!get_args(env, info, 2, 2, argv, NULL, "setNonBlocking")) return NULL;
  if (!get_fd(env, argv[0], "setNonBlocking", "fd", &fd)) return NULL;
  if (!get_bool(env, argv[1], "setNonBlocking", "on", &on)) return NULL;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)) < 0) {
    throw_errno(env, "fcntl", errno);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value do_fstat(napi_env env, napi_callback_info info) {
  int fd;
  struct stat st;
  if (!one_fd_stat(env, info, "fstat", &fd, &st)) return NULL;
  napi_value o;
  if (napi_create_object(env, &o) != napi_ok) return NULL;
  napi_set_named_property(env, o, "size", make_number(env, (double)st.st_size));
  napi_set_named_property(env, o, "isFile", make_bool(env, S_ISREG(st.st_mode)));
  napi_set_named_property(env, o, "isFifo", make_bool(env, S_ISFIFO(st.st_mode)));
  napi_set_named_property(env, o, "isSocket", make_bool(env, S_ISSOCK(st.st_mode)));
  return o;
}

static napi_value do_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t init;
  if (!get_args(env, info, 1, 1, argv, NULL, "eventfd")) return NULL;
  if (!get_u64(env, argv[0], "eventfd", "initval", &init)) return NULL;
  if (init > UINT32_MAX) {
    throw_range(env, "eventfd: initval must be in [0, 4294967295], got %llu", (unsigned long long)init);
    return NULL;
  }
  int fd = eventfd((unsigned)init, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    throw_errno(env, "eventfd", errno);
    return NULL;
  }
  return make_number(env, fd);
}

// Reads and clears an eventfd's counter without ever blocking, whatever the fd's own O_NONBLOCK
// flag says: a front-end's eventfds may be blocking, and it may drain one between our poll
// wake-up and our read. RWF_NOWAIT makes the read non-blocking on this call only (the flag
// lives in the open file description, shared with the front-end, so it is not touched);
// kernels without it for eventfds fall back to poll() first.
static napi_value eventfd_rd(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "eventfdRead", &fd)) return NULL;
  uint64_t v;
  struct iovec iov = {&v, sizeof v};
  ssize_t n;
  do n = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EOPNOTSUPP) {
    struct pollfd p = {fd, POLLIN, 0};
    int r;
    do r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    if (r == 0 || (r > 0 && !(p.revents & POLLIN))) return make_number(env, -1);
    do n = read(fd, &v, sizeof v);
    while (n < 0 && errno == EINTR);
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_number(env, -1);
    throw_errno(env, "eventfdRead", errno);
    return NULL;
  }
  if (n != sizeof v) {
    throw_plain(env, "ERR_NOT_EVENTFD", "eventfdRead: fd %d returned %zd bytes instead of 8; is it an eventfd?", fd, n);
    return NULL;
  }
  // A counter beyond 2^53 loses precision; only a runaway writer gets there.
  return make_number(env, (double)v);
}

// Adds n to an eventfd's counter without ever blocking: returns false when the counter has no
// room for n (a reader that stopped reading; the notification it would carry is already
// pending, so dropping it loses nothing). An eventfd write blocks only when the counter would
// pass 2^64-2, which poll() reports as "not writable"; RWF_NOWAIT does not apply to eventfd
// writes, and the fd's O_NONBLOCK flag is the front-end's, so poll first, then write.
static napi_value eventfd_wr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint64_t v = 1;
  if (!get_args(env, info, 2, 1, argv, NULL, "eventfdWrite")) return NULL;
  if (!get_fd(env, argv[0], "eventfdWrite", "fd", &fd)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_undefined && !get_u64(env, argv[1], "eventfdWrite", "n", &v)) return NULL;
  struct pollfd p = {fd, POLLOUT, 0};
  int r;
  do r = poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    throw_errno(env, "poll", errno);
    return NULL;
  }
  if (p.revents & POLLNVAL) {
    throw_errno(env, "eventfdWrite", EBADF);
    return NULL;
  }
  // POLLOUT means room for 1; a larger n may still not fit: only then can write() block, so
  // such writes need an O_NONBLOCK fd (the host's own eventfds all are).
  if (!(p.revents & POLLOUT)) return make_bool(env, false);
  if (v > 1) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || !(fl & O_NONBLOCK)) {
      throw_range(env, "eventfdWrite: fd %d is blocking; only n = 1 can be written to it without blocking", fd);
      return NULL;
    }
  }
  ssize_t n;
  do n = write(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_bool(env, false);
    throw_errno(env, "eventfdWrite", errno);
    return NULL;
  }
  if (n != sizeof v) {
    throw_plain(env, "ERR_NOT_EVENTFD", "eventfdWrite: fd %d took %zd bytes instead of 8; is it an eventfd?", fd, n);
    return NULL;
  }
  return make_bool(env, true);
}

// The notification hot path: one write(2) of 1, nothing else (eventfdWrite's poll() first costs
// as much again: ~0.5 us per call on this machine). Only for an fd the caller found O_NONBLOCK
// (isNonBlocking, when it received it): then a full counter is EAGAIN, reported as false (a
// notification is already pending). A peer that makes its shared file blocking afterwards and
// fills the counter can make this block; callers bracket it with their watchdog for that.
static napi_value eventfd_signal(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "eventfdSignal", &fd)) return NULL;
  uint64_t v = 1;
  ssize_t n;
  do n = write(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_bool(env, false);
    throw_errno(env, "eventfdSignal", errno);
    return NULL;
  }
  if (n != sizeof v) {
    throw_plain(env, "ERR_NOT_EVENTFD", "eventfdSignal: fd %d took %zd bytes instead of 8; is it an eventfd?", fd, n);
    return NULL;
  }
  return make_bool(env, true);
}

static napi_value is_nonblocking(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "isNonBlocking", &fd)) return NULL;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) {
    throw_errno(env, "fcntl", errno);
    return NULL;
  }
  return make_bool(env, (fl & O_NONBLOCK) != 0);
}

// What an fd is, from fstat() and its /proc/self/fd link, for checking what a front-end sent
// before using it: 'eventfd', 'memfd', 'file', 'directory', 'pipe' (anonymous), 'fifo' (named),
// 'socket', 'char-device', 'block-device', 'symlink' (an O_PATH fd) or 'other' (timerfd,
// signalfd, epoll, ...). Anonymous-inode fds have no file type in st_mode; the link names them
// ("anon_inode:[eventfd]") and their file system (anon_inodefs) tells them from path-based files.
static napi_value fd_kind(napi_env env, napi_callback_info info) {
  int fd;
  struct stat st;
  if (!one_fd_stat(env, info, "fdKind", &fd, &st)) return NULL;
  char path[64], link[256];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) {
    throw_errno_path(env, "readlink", errno, path);
    return NULL;
  }
  link[n] = 0;
  struct statfs fs;
  bool have_fs = fstatfs(fd, &fs) == 0;
  const char *kind = "other";
  if (have_fs && fs.f_type == ANON_INODE_FS_MAGIC) {
    // Anonymous inodes (eventfd, timerfd, signalfd, epoll, ...) are told apart by their link;
    // their st_mode carries no dependable file type.
    if (strcmp(link, "anon_inode:[eventfd]") == 0) kind = "eventfd";
  } else {
    switch (st.st_mode & S_IFMT) {
    case S_IFREG:
      // memfd_create names its files "/memfd:NAME (deleted)" on tmpfs or hugetlbfs; a file a
      // user named like that elsewhere is not on one of those.
      kind = have_fs && (fs.f_type == TMPFS_MAGIC || fs.f_type == HUGETLBFS_MAGIC) && strncmp(link, "/memfd:", 7) == 0
                 ? "memfd"
                 : "file";
      break;
    case S_IFDIR: kind = "directory"; break;
    case S_IFIFO: kind = link[0] == '/' ? "fifo" : "pipe"; break;
    case S_IFSOCK: kind = "socket"; break;
    case S_IFCHR: kind = "char-device"; break;
    case S_IFBLK: kind = "block-device"; break;
    case S_IFLNK: kind = "symlink"; break;
    }
  }
  napi_value out;
  if (napi_create_string_utf8(env, kind, NAPI_AUTO_LENGTH, &out) != napi_ok) return NULL;
  return out;
}

static napi_value memfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char *name;
  bool sealing;
  if (!get_args(env, info, 2, 2, argv, NULL, "memfdCreate")) return NULL;
  if (!get_bool(env, argv[1], "memfdCreate", "allowSealing", &sealing)) return NULL;
  // The kernel limit: NAME_MAX minus the "memfd:" prefix it adds.
  if (!get_string(env, argv[0], "memfdCreate", "name", 249, &name)) return NULL;
  int fd = memfd_create(name, MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0));
  int err = errno;
  if (fd < 0) {
    throw_errno_path(env, "memfd_create", err, name);
    free(name);
    return NULL;
  }
  free(name);
  return make_number(env, fd);
}

static napi_value do_ftruncate(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint64_t size;
  if (!get_args(env, info, 2, 2, argv, NULL, "ftruncate")) return NULL;
  if (!get_fd(env, argv[0], "ftruncate", "fd", &fd)) return NULL;
  if (!get_u64(env, argv[1], "ftruncate", "size", &size)) return NULL;
  int r;
  do r = ftruncate(fd, (off_t)size);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    throw_errno(env, "ftruncate", errno);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value do_pipe2(napi_env env, napi_callback_info info) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
    throw_errno(env, "pipe2", errno);
    return NULL;
  }
  return make_fd_pair(env, p[0], p[1]);
}

// setPipeSize(fd, bytes): fcntl(F_SETPIPE_SZ); returns the pipe's capacity afterwards (the kernel
// rounds up to a power-of-two number of pages). EPERM above /proc/sys/fs/pipe-max-size for an
// unprivileged process, EBUSY when shrinking below what the pipe holds.
static napi_value set_pipe_size(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint64_t want;
  if (!get_args(env, info, 2, 2, argv, NULL, "setPipeSize")) return NULL;
  if (!get_fd(env, argv[0], "setPipeSize", "fd", &fd)) return NULL;
  if (!get_u64(env, argv[1], "setPipeSize", "bytes", &want)) return NULL;
  if (want > INT32_MAX) {
    errno = EINVAL;
    throw_errno(env, "fcntl", errno);
    return NULL;
  }
  int r = fcntl(fd, F_SETPIPE_SZ, (int)want);
  if (r < 0) {
    throw_errno(env, "fcntl", errno);
    return NULL;
  }
  return make_number(env, r);
}

// Kernel-side copies for the memory disk's state (host/migration/disk-copy.ts): the bytes move
// between the disk's memfd and a state fd without entering JavaScript.
//
// copyFileRange(fdIn, offIn, fdOut, offOut, len): copy_file_range(2) between two files at explicit
// offsets; returns the bytes copied (0 at the input's end). Throws on error.
static napi_value copy_file_range_fn(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int in, out;
  uint64_t offIn, offOut, len;
  if (!get_args(env, info, 5, 5, argv, NULL, "copyFileRange")) return NULL;
  if (!get_fd(env, argv[0], "copyFileRange", "fdIn", &in) || !get_u64(env, argv[1], "copyFileRange", "offIn", &offIn) ||
      !get_fd(env, argv[2], "copyFileRange", "fdOut", &out) || !get_u64(env, argv[3], "copyFileRange", "offOut", &offOut) ||
      !get_u64(env, argv[4], "copyFileRange", "len", &len))
    return NULL;
  loff_t a = (loff_t)offIn, b = (loff_t)offOut;
  ssize_t n;
  do n = copy_file_range(in, &a, out, &b, (size_t)len, 0);
  while (n < 0 && errno == EINTR);
  return io_count(env, n, "copy_file_range", false);
}

// splice(fdIn, offIn, fdOut, offOut, len): splice(2) with SPLICE_F_NONBLOCK (the pipe side never
// blocks); an offset < 0 means "no offset" (the pipe side). Returns bytes moved, 0 at EOF of the
// input, -1 when the pipe is full (writing) or empty (reading).
static napi_value splice_fn(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int in, out;
  int64_t offIn, offOut;
  uint64_t len;
  if (!get_args(env, info, 5, 5, argv, NULL, "splice")) return NULL;
  if (!get_fd(env, argv[0], "splice", "fdIn", &in) || !get_fd(env, argv[2], "splice", "fdOut", &out) ||
      !get_u64(env, argv[4], "splice", "len", &len))
    return NULL;
  if (napi_get_value_int64(env, argv[1], &offIn) != napi_ok || napi_get_value_int64(env, argv[3], &offOut) != napi_ok) {
    throw_range(env, "splice: offIn and offOut must be numbers (-1: no offset)");
    return NULL;
  }
  loff_t a = (loff_t)offIn, b = (loff_t)offOut;
  ssize_t n;
  do n = splice(in, offIn < 0 ? NULL : &a, out, offOut < 0 ? NULL : &b, (size_t)len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
  while (n < 0 && errno == EINTR);
  return io_count(env, n, "splice", true);
}

bool init_fdio(napi_env env, napi_value exports) {
  return set_fn(env, exports, "copyFileRange", copy_file_range_fn) && set_fn(env, exports, "splice", splice_fn) &&
         set_fn(env, exports, "read", do_read) && set_fn(env, exports, "write", do_write) &&
         set_fn(env, exports, "pread", do_pread) && set_fn(env, exports, "pwrite", do_pwrite) &&
         set_fn(env, exports, "close", do_close) && set_fn(env, exports, "dup", do_dup) &&
         set_fn(env, exports, "setNonBlocking", set_nonblocking) && set_fn(env, exports, "fstat", do_fstat) &&
         set_fn(env, exports, "eventfd", do_eventfd) && set_fn(env, exports, "eventfdRead", eventfd_rd) &&
         set_fn(env, exports, "eventfdWrite", eventfd_wr) && set_fn(env, exports, "eventfdSignal", eventfd_signal) &&
         set_fn(env, exports, "isNonBlocking", is_nonblocking) && set_fn(env, exports, "memfdCreate", memfd) &&
         set_fn(env, exports, "ftruncate", do_ftruncate) && set_fn(env, exports, "pipe2", do_pipe2) &&
         set_fn(env, exports, "setPipeSize", set_pipe_size) && set_fn(env, exports, "fdKind", fd_kind);
}
