// mmap(MAP_SHARED) exposed as bounded ArrayBuffer windows. The invariant that keeps this
// memory-safe: the pages stay mapped while any window can still reach them. unmap()
// detaches every live window before munmap; if the Mapping object is collected instead,
// the munmap waits until the last window's backing store is released too.
//
// The file behind a mapping belongs to the front-end, which can shrink it after we mapped it;
// touching a page past the new end raises SIGBUS, which would kill every device in the process.
// mmap() refuses a range the file does not cover at map time, and every mapping is registered
// in a process-wide table that a SIGBUS handler consults: a fault inside a registered mapping
// gets anonymous zero pages mapped over the faulting page (so the access completes) and is
// counted, and the owner of the mapping (the device worker) fails that one connection when it
// sees the count move. Faults anywhere else go to the handler that was there before us.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

// --- the fault guard -------------------------------------------------------------------------

// Regions of every device in the process (QEMU's ceiling is 509 per device) plus dirty logs.
#define GUARD_SLOTS 8192

typedef struct {
  _Atomic uintptr_t base; // 0: free
  _Atomic size_t size;
  _Atomic size_t page;    // unit to replace on a fault (hugetlbfs: the huge page size)
  _Atomic unsigned long faults;
} guard_slot;

static guard_slot guard_table[GUARD_SLOTS];
static _Atomic size_t guard_high;            // slots [0, guard_high) may be in use
static _Atomic unsigned long guard_faults;   // faults contained, process-wide
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction guard_previous;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static int guard_install_errno;

static void guard_chain(int sig, siginfo_t *si, void *uctx) {
  if (guard_previous.sa_flags & SA_SIGINFO) {
    guard_previous.sa_sigaction(sig, si, uctx);
    return;
  }
  if (guard_previous.sa_handler == SIG_IGN && si->si_code <= 0) return; // sent by kill(), ignored before us
  if (guard_previous.sa_handler != SIG_DFL && guard_previous.sa_handler != SIG_IGN) {
    guard_previous.sa_handler(sig);
    return;
  }
  // Default action (a real fault cannot be ignored: it would recur for ever): die as we would
  // have without this handler. The signal is blocked while we run, so it lands on return.
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, NULL);
  raise(SIGBUS);
}

// Async-signal-safe: atomics, mmap (a plain system call on Linux), sigaction and raise only.
static void guard_on_sigbus(int sig, siginfo_t *si, void *uctx) {
  int saved = errno;
  if (si->si_code == BUS_ADRERR) {
    uintptr_t a = (uintptr_t)si->si_addr;
    size_t high = atomic_load_explicit(&guard_high, memory_order_acquire);
    for (size_t i = 0; i < high; i++) {
      guard_slot *g = &guard_table[i];
      uintptr_t b = atomic_load_explicit(&g->base, memory_order_acquire);
      if (b == 0 || a < b) continue;
      size_t sz = atomic_load_explicit(&g->size, memory_order_relaxed);
      size_t pg = atomic_load_explicit(&g->page, memory_order_relaxed);
      // The slot may have been recycled by another thread while we read it: size and page
      // belong to `b` only if base did not change meanwhile.
      if (atomic_load_explicit(&g->base, memory_order_acquire) != b || a - b >= sz) continue;
      uintptr_t page = b + ((a - b) & ~(uintptr_t)(pg - 1));
      uintptr_t end = (b + sz + 4095) & ~(uintptr_t)4095;
      size_t len = page + pg > end ? end - page : pg;
      if (mmap((void *)page, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        break; // cannot contain it: behave as if we were not here
      atomic_fetch_add_explicit(&g->faults, 1, memory_order_release);
      atomic_fetch_add_explicit(&guard_faults, 1, memory_order_release);
      errno = saved;
      return;
    }
  }
  errno = saved;
  guard_chain(sig, si, uctx);
}

static void guard_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = guard_on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &guard_previous) < 0) guard_install_errno = errno;
}

// Returns the slot index, or -1 when the table is full.
static int guard_register(void *base, size_t size, size_t page) {
  pthread_mutex_lock(&guard_lock);
  int slot = -1;
  for (size_t i = 0; i < GUARD_SLOTS; i++) {
    if (atomic_load_explicit(&guard_table[i].base, memory_order_relaxed) == 0) {
      slot = (int)i;
      break;
    }
  }
  if (slot >= 0) {
    guard_slot *g = &guard_table[slot];
    atomic_store_explicit(&g->size, size, memory_order_relaxed);
    atomic_store_explicit(&g->page, page, memory_order_relaxed);
    atomic_store_explicit(&g->faults, 0, memory_order_relaxed);
    atomic_store_explicit(&g->base, (uintptr_t)base, memory_order_release);
    if ((size_t)slot + 1 > atomic_load(&guard_high)) atomic_store_explicit(&guard_high, (size_t)slot + 1, memory_order_release);
  }
  pthread_mutex_unlock(&guard_lock);
  return slot;
}

// Before munmap: once the pages are gone the addresses may be reused by anyone.
static void guard_unregister(int slot) {
  if (slot < 0) return;
  pthread_mutex_lock(&guard_lock);
  atomic_store_explicit(&guard_table[slot].base, 0, memory_order_release);
  pthread_mutex_unlock(&guard_lock);
}

typedef struct mapping mapping;

typedef struct window_entry {
  mapping *m;
  napi_ref ref; // weak: windows must stay collectable
  struct window_entry *prev, *next;
} window_entry;

struct mapping {
  uint8_t *base;
  uint64_t size;
  bool mapped;
  bool wrapped;
  bool object_gone;
  size_t live_windows;
  window_entry *windows;
  int guard; // slot in guard_table, -1 once unregistered
  unsigned long faults_at_unmap;
};

static void mapping_unguard(mapping *m) {
  if (m->guard < 0) return;
  m->faults_at_unmap = atomic_load_explicit(&guard_table[m->guard].faults, memory_order_acquire);
  guard_unregister(m->guard);
  m->guard = -1;
}

// Distinguishes Mapping objects from other wrapped objects (a Watcher passed as `this`).
static const napi_type_tag MAPPING_TAG = {0x7668f57b4d617070ULL, 0x6d6170706e67a001ULL};

static void release_if_unreachable(mapping *m) {
  if (!m->object_gone || m->live_windows > 0) return;
  mapping_unguard(m);
  if (m->mapped) munmap(m->base, m->size);
  free(m);
}

static void window_finalize(napi_env env, void *data, void *hint) {
  window_entry *e = hint;
  mapping *m = e->m;
  if (e->prev) e->prev->next = e->next;
  else m->windows = e->next;
  if (e->next) e->next->prev = e->prev;
  if (e->ref) napi_delete_reference(env, e->ref);
  free(e);
  m->live_windows--;
  release_if_unreachable(m);
}

static void mapping_finalize(napi_env env, void *data, void *hint) {
  mapping *m = data;
  m->object_gone = true;
  release_if_unreachable(m);
}

static mapping *this_mapping(napi_env env, napi_value self, const char *fn) {
  return unwrap_this(env, self, &MAPPING_TAG, fn, "a Mapping returned by native.mmap()");
}

static napi_value mapping_ctor(napi_env env, napi_callback_info info) {
  napi_value self;
  mapping *m = ctor_external(env, info, &self, "Mapping", "native.mmap()");
  if (!m) return NULL;
  napi_property_descriptor size = {"size", NULL, NULL, NULL, NULL, make_number(env, (double)m->size),
                                   napi_enumerable, NULL};
  if (napi_define_properties(env, self, 1, &size) != napi_ok) {
    throw_napi(env, napi_generic_failure, "Mapping constructor");
    return NULL;
  }
  if (!wrap_tagged(env, self, &MAPPING_TAG, m, mapping_finalize, "Mapping constructor")) return NULL;
  m->wrapped = true;
  return self;
}

static napi_value mapping_window(napi_env env, napi_callback_info info) {
  napi_value argv[2], self;
  uint64_t off, len;
  if (!get_args(env, info, 2, 2, argv, &self, "Mapping.window")) return NULL;
  mapping *m = this_mapping(env, self, "Mapping.window");
  if (!m) return NULL;
  if (!m->mapped) {
    throw_plain(env, "ERR_MAPPING_UNMAPPED", "Mapping.window: the mapping was unmapped; mmap the region again");
    return NULL;
  }
  if (!get_u64(env, argv[0], "Mapping.window", "offset", &off)) return NULL;
  if (!get_u64(env, argv[1], "Mapping.window", "length", &len)) return NULL;
  if (len == 0 || len > MAX_WINDOW) {
    throw_range(env, "Mapping.window: length %llu is out of range; it must be in [1, %llu] (MAX_WINDOW)",
                (unsigned long long)len, (unsigned long long)MAX_WINDOW);
    return NULL;
  }
  if (off >= m->size || len > m->size - off) {
    throw_range(env, "Mapping.window: [offset %llu, +length %llu) runs past the end of the %llu-byte mapping",
                (unsigned long long)off, (unsigned long long)len, (unsigned long long)m->size);
    return NULL;
  }
  window_entry *e = calloc(1, sizeof *e);
  if (!e) return errno_thrown(env, "malloc", ENOMEM);
  e->m = m;
  e->next = m->windows;
  if (m->windows) m->windows->prev = e;
  m->windows = e;
  m->live_windows++;
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(env, m->base + off, (size_t)len, window_finalize, e, &ab);
  if (st != napi_ok) {
    // Node has already run (or queued) window_finalize for `e`; touching it would double free.
    throw_napi(env, st, "Mapping.window: napi_create_external_arraybuffer");
    return NULL;
  }
  if (napi_create_reference(env, ab, 0, &e->ref) != napi_ok) {
    // Without a handle to detach it, this window could outlive the pages: refuse it.
    napi_detach_arraybuffer(env, ab);
    throw_napi(env, napi_generic_failure, "Mapping.window: napi_create_reference");
    return NULL;
  }
  return ab;
}

// Mapping.populate(offset, length, write): madvise(MADV_POPULATE_WRITE or _READ) over the range
// (rounded out to pages): the pages are made and mapped in one call, where touching them one by
// one takes a page fault each (65,536 per 256 MiB). Throws ENOSYS/EINVAL on a kernel before 5.14,
// EFAULT when the file does not cover the range (a shrunk file: nothing is contained here).
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static napi_value mapping_populate(napi_env env, napi_callback_info info) {
  napi_value argv[3], self;
  uint64_t off, len;
  bool write;
  if (!get_args(env, info, 3, 3, argv, &self, "Mapping.populate")) return NULL;
  mapping *m = this_mapping(env, self, "Mapping.populate");
  if (!m) return NULL;
  if (!m->mapped) {
    throw_plain(env, "ERR_MAPPING_UNMAPPED", "Mapping.populate: the mapping was unmapped; mmap the region again");
    return NULL;
  }
  if (!get_u64(env, argv[0], "Mapping.populate", "offset", &off) || !get_u64(env, argv[1], "Mapping.populate", "length", &len) ||
      !get_bool(env, argv[2], "Mapping.populate", "write", &write))
    return NULL;
  if (off > m->size || len > m->size - off) {
    throw_range(env, "Mapping.populate: [offset %llu, +length %llu) runs past the end of the %llu-byte mapping",
                (unsigned long long)off, (unsigned long long)len, (unsigned long long)m->size);
    return NULL;
  }
  if (len == 0) return make_undefined(env);
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t start = (uintptr_t)(m->base + off) & ~(uintptr_t)(page - 1);
  uintptr_t end = ((uintptr_t)(m->base + off + len) + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
  int r;
  do r = madvise((void *)start, end - start, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
  while (r < 0 && errno == EINTR);
  if (r < 0) return errno_thrown(env, "madvise", errno);
  return make_undefined(env);
}

static napi_value mapping_unmap(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Mapping.unmap")) return NULL;
  mapping *m = this_mapping(env, self, "Mapping.unmap");
  if (!m) return NULL;
  if (!m->mapped) return make_undefined(env);
  // `next` is read first: should a Node version finalize synchronously on detach, `e` is freed.
  for (window_entry *e = m->windows, *next; e; e = next) {
    next = e->next;
    napi_value ab = NULL;
    if (!e->ref || napi_get_reference_value(env, e->ref, &ab) != napi_ok) continue;
    if (!ab) continue; // already collected; its finalizer is on the way
    bool detached = false;
    napi_is_detached_arraybuffer(env, ab, &detached);
    if (detached) continue;
    napi_status st = napi_detach_arraybuffer(env, ab);
    if (st != napi_ok) {
      // Keep the pages mapped: unmapping under a live view would crash the process.
      throw_napi(env, st, "Mapping.unmap: detaching a window (the mapping stays mapped)");
      return NULL;
    }
  }
  mapping_unguard(m);
  if (munmap(m->base, m->size) < 0) return errno_thrown(env, "munmap", errno);
  m->mapped = false;
  return make_undefined(env);
}

// Faults the guard contained inside this mapping (pages of it that now read as zeros and are no
// longer shared with the front-end). Latched: it never goes back to 0.
static napi_value mapping_faults(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Mapping.faults")) return NULL;
  mapping *m = this_mapping(env, self, "Mapping.faults");
  if (!m) return NULL;
  if (m->guard < 0) return make_number(env, (double)m->faults_at_unmap);
  return make_number(env, (double)atomic_load_explicit(&guard_table[m->guard].faults, memory_order_acquire));
}

static napi_value mapping_fault_count(napi_env env, napi_callback_info info) {
  return make_number(env, (double)atomic_load_explicit(&guard_faults, memory_order_acquire));
}

static const char *file_type_name(mode_t mode) {
  if (S_ISREG(mode)) return "file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISCHR(mode)) return "char";
  if (S_ISBLK(mode)) return "block";
  if (S_ISFIFO(mode)) return "fifo";
  if (S_ISSOCK(mode)) return "socket";
  return "other";
}

// What a front-end's memory fd is: type, size, seals (memfd), and the page size that
// faults are contained in (hugetlbfs files fault a whole huge page).
static const char *file_type_text(mode_t mode) {
  if (S_ISDIR(mode)) return "directory";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISFIFO(mode)) return "pipe or FIFO";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

static napi_value memory_fd_info(napi_env env, napi_callback_info info) {
  int fd;
  struct stat st;
  if (!one_fd_stat(env, info, "memoryFdInfo", &fd, &st)) return NULL;
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) seals = -1; // not a memfd (EINVAL): nothing stops a shrink
  double page = (double)sysconf(_SC_PAGESIZE);
  // The file system's f_type, of the open file itself: a check made by path (statfs) could see
  // another file than the fd's once the path was renamed or replaced.
  double fs_type = -1;
  struct statfs sf;
  if (fstatfs(fd, &sf) == 0) {
    fs_type = (double)(unsigned long)sf.f_type;
    if (sf.f_type == HUGETLBFS_MAGIC) page = (double)sf.f_bsize;
  }
  napi_value obj, type;
  if (napi_create_object(env, &obj) != napi_ok ||
      napi_create_string_utf8(env, file_type_name(st.st_mode), NAPI_AUTO_LENGTH, &type) != napi_ok) {
    throw_napi(env, napi_generic_failure, "memoryFdInfo");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"type", NULL, NULL, NULL, NULL, type, napi_enumerable, NULL},
      {"size", NULL, NULL, NULL, NULL, make_number(env, (double)st.st_size), napi_enumerable, NULL},
      {"seals", NULL, NULL, NULL, NULL, make_number(env, (double)seals), napi_enumerable, NULL},
      {"pageSize", NULL, NULL, NULL, NULL, make_number(env, page), napi_enumerable, NULL},
      {"fsType", NULL, NULL, NULL, NULL, make_number(env, fs_type), napi_enumerable, NULL},
  };
  if (napi_define_properties(env, obj, 5, props) != napi_ok) {
    throw_napi(env, napi_generic_failure, "memoryFdInfo");
    return NULL;
  }
  return obj;
}

// fcntl(F_ADD_SEALS): what QEMU's memory-backend-memfd does to guest RAM (F_SEAL_SHRINK|
// F_SEAL_GROW|F_SEAL_SEAL by default); our own front-end and tests use it to behave the same.
static napi_value memfd_add_seals(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint64_t seals;
  if (!get_args(env, info, 2, 2, argv, NULL, "memfdAddSeals")) return NULL;
  if (!get_fd(env, argv[0], "memfdAddSeals", "fd", &fd)) return NULL;
  if (!get_u64(env, argv[1], "memfdAddSeals", "seals", &seals)) return NULL;
  if (seals > 0xffff) {
    throw_range(env, "memfdAddSeals: seals 0x%llx has bits outside F_SEAL_*", (unsigned long long)seals);
    return NULL;
  }
  if (fcntl(fd, F_ADD_SEALS, (int)seals) < 0) return errno_thrown(env, "fcntl(F_ADD_SEALS)", errno);
  return make_undefined(env);
}

// Makes a Mapping object own `base` (size bytes, mapped by the caller): registered with the fault
// guard, unmapped by unmap() or the object's finalizer. On failure the pages are unmapped and an
// exception is pending.
static napi_value adopt_mapping(napi_env env, void *base, uint64_t size, size_t fault_unit) {
  mapping *m = calloc(1, sizeof *m);
  if (!m) {
    munmap(base, (size_t)size);
    return errno_thrown(env, "malloc", ENOMEM);
  }
  m->base = base;
  m->size = size;
  m->mapped = true;
  m->guard = guard_register(base, (size_t)size, fault_unit);
  if (m->guard < 0) {
    munmap(base, (size_t)size);
    free(m);
    throw_plain(env, "ERR_MAPPING_LIMIT",
                "mmap: this process already maps %d shared memory areas, the most its fault guard tracks",
                GUARD_SLOTS);
    return NULL;
  }
  addon_env *ae = get_addon_env(env);
  napi_value ctor, ext, obj = NULL;
  if (napi_get_reference_value(env, ae->mapping_ctor, &ctor) != napi_ok ||
      napi_create_external(env, m, NULL, NULL, &ext) != napi_ok ||
      napi_new_instance(env, ctor, 1, &ext, &obj) != napi_ok) {
    if (!m->wrapped) { // otherwise the wrap's finalizer owns m
      mapping_unguard(m);
      munmap(base, (size_t)size);
      free(m);
    }
    throw_napi(env, napi_generic_failure, "mmap: creating the Mapping object");
    return NULL;
  }
  return obj;
}

static napi_value do_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  uint64_t size, off;
  bool writable;
  if (!get_args(env, info, 4, 4, argv, NULL, "mmap")) return NULL;
  if (!get_fd(env, argv[0], "mmap", "fd", &fd)) return NULL;
  if (!get_u64(env, argv[1], "mmap", "size", &size)) return NULL;
  if (!get_u64(env, argv[2], "mmap", "offset", &off)) return NULL;
  if (!get_bool(env, argv[3], "mmap", "writable", &writable)) return NULL;
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  if (size == 0) {
    throw_range(env, "mmap: size must be at least 1 byte, got 0");
    return NULL;
  }
  if (off % page) {
    throw_range(env, "mmap: offset %llu is not a multiple of the page size (%llu)", (unsigned long long)off,
                (unsigned long long)page);
    return NULL;
  }
  if (off + size > (uint64_t)SAFE_INT_MAX) {
    throw_range(env, "mmap: offset %llu + size %llu exceeds 2^53-1", (unsigned long long)off,
                (unsigned long long)size);
    return NULL;
  }
  // Only a regular file (memfd, tmpfs, hugetlbfs, a disk file) is memory two processes share
  // with a size we can check: a shared mapping of /dev/zero is private to us, and other
  // devices have no size fstat reports.
  struct stat st;
  if (fstat(fd, &st) < 0) return errno_thrown(env, "fstat", errno);
  if (!S_ISREG(st.st_mode)) {
    throw_plain(env, "ERR_MAPPING_NOT_FILE",
                "mmap: the fd is a %s, not a regular file or memfd; only those can back shared memory",
                file_type_text(st.st_mode));
    return NULL;
  }
  if ((uint64_t)st.st_size < off || size > (uint64_t)st.st_size - off) {
    throw_plain(env, "ERR_MAPPING_BEYOND_FILE",
                "mmap: [offset %llu, +size %llu) ends past the end of the %llu-byte file behind the fd; "
                "touching that part would fault (SIGBUS)",
                (unsigned long long)off, (unsigned long long)size, (unsigned long long)st.st_size);
    return NULL;
  }
  size_t fault_unit = page;
  struct statfs sf;
  if (fstatfs(fd, &sf) == 0 && sf.f_type == HUGETLBFS_MAGIC) fault_unit = (size_t)sf.f_bsize;
  pthread_once(&guard_once, guard_install);
  if (guard_install_errno != 0) return errno_thrown(env, "sigaction(SIGBUS)", guard_install_errno);
  void *base = mmap(NULL, (size_t)size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, (off_t)off);
  if (base == MAP_FAILED) return errno_thrown(env, "mmap", errno);
  return adopt_mapping(env, base, size, fault_unit);
}

// --- preallocPages: a memory disk's pages made off the main thread -------------------------
//
// fallocate(2) of a memfd and MADV_POPULATE_WRITE over its mapping cost ~1.3 s per GiB here (a
// fresh tmpfs page is microseconds to make), and the daemon's one event loop serves every
// tenant's vhost-user messages and management calls: done there, one tenant's prealloc=on disk
// would stall all the others. So both run as N-API async work on libuv's threadpool.
// Why not io_uring (uring.c): the ring is the I/O path's, owned by the thread that submits on it,
// and has an IORING_OP_FALLOCATE but no populate of a mapping (IORING_OP_MADVISE goes to io-wq
// and populate is not among the advice it is documented to take); a threadpool job does both
// steps with plain system calls and reports one outcome. It holds one of the pool's threads
// (4 by default) for the duration, which Node's own fs calls share: bounded by one job per disk
// being added.
//
// The job owns what it touches until it ends: a dup of the memfd (the caller may close its fd
// at any time, e.g. a device-del) and the mapping it makes itself, which becomes a Mapping
// object only when the job is done (nobody can unmap it under the populate). The caller cancels
// by storing non-zero into cell 0 of an Int32Array over a SharedArrayBuffer (a buffer that
// cannot be detached, held by a reference until the job ends); the work checks it between
// chunks, unmaps, and rejects with ECANCELED.
#define PREALLOC_CHUNK ((uint64_t)64 << 20)

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref cancel_ref;
  _Atomic int32_t *cancel;
  int fd;
  uint64_t size;
  size_t fault_unit;
  void *base; // set once mapped; NULL again if the work unmapped it
  int err;    // 0, or the errno of the step that failed
  const char *step;
  // Map the pages by touching each one instead of MADV_POPULATE_WRITE, which kernels before
  // 5.14 refuse with EINVAL (the caller decides, prealloc.ts, and says so in the log).
  bool touch;
} prealloc_job;

// Write-faults every fault unit of [p, p+len) in without changing a byte: an atomic add of 0 is
// a locked read-modify-write, so a write by anyone else sharing the memfd is never undone (a
// plain `*p = *p` could put back a byte read before another writer's store).
static void touch_pages(uint8_t *p, uint64_t len, size_t unit) {
  for (uint64_t off = 0; off < len; off += unit) __atomic_fetch_add(p + off, 0, __ATOMIC_RELAXED);
}

static bool prealloc_cancelled(prealloc_job *j) {
  return atomic_load_explicit(j->cancel, memory_order_acquire) != 0;
}

// Marks every page of the memfd accessed, through the same path a SAVE into a pipe takes
// (splice: filemap's page look-up and folio_mark_accessed), into a pipe drained into /dev/null:
// no byte is copied. A fresh tmpfs page is on the inactive LRU list; the first SAVE's splices
// otherwise move each one to the active list, under the LRU lock with interrupts off, ~10 ms of
// the source's CPU per 256 MiB measured in the first migration a host serves as source
// (docs/BENCHMARKS.md, 2026-12-07 "direct15b"). A page is activated on its second access, so
// two passes. Best effort: it changes no byte, and a failure only leaves that cost to the SAVE.
#define ACTIVATE_PASSES 2
static void activate_pages(prealloc_job *j) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return;
  int sink = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (sink >= 0) {
    (void)fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    for (int pass = 0; pass < ACTIVATE_PASSES; pass++) {
      loff_t off = 0;
      while ((uint64_t)off < j->size && !prealloc_cancelled(j)) {
        ssize_t n = splice(j->fd, &off, p[1], NULL, (size_t)(j->size - (uint64_t)off), 0);
        if (n <= 0) {
          if (n < 0 && errno == EINTR) continue;
          goto done;
        }
        for (ssize_t left = n; left > 0;) {
          ssize_t m = splice(p[0], NULL, sink, NULL, (size_t)left, 0);
          if (m <= 0) {
            if (m < 0 && errno == EINTR) continue;
            goto done;
          }
          left -= m;
        }
      }
    }
  done:
    close(sink);
  }
  close(p[0]);
  close(p[1]);
}

static void prealloc_execute(napi_env env, void *data) {
  prealloc_job *j = data;
  for (uint64_t off = 0; off < j->size; off += PREALLOC_CHUNK) {
    if (prealloc_cancelled(j)) {
      j->err = ECANCELED, j->step = "fallocate";
      return;
    }
    uint64_t len = j->size - off < PREALLOC_CHUNK ? j->size - off : PREALLOC_CHUNK;
    int r;
    // mode 0: allocate, and grow nothing (the memfd is already SIZE bytes and sealed at that size).
    do r = fallocate(j->fd, 0, (off_t)off, (off_t)len);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
      j->err = errno, j->step = "fallocate";
      return;
    }
  }
  void *base = mmap(NULL, (size_t)j->size, PROT_READ | PROT_WRITE, MAP_SHARED, j->fd, 0);
  if (base == MAP_FAILED) {
    j->err = errno, j->step = "mmap";
    return;
  }
  for (uint64_t off = 0; off < j->size; off += PREALLOC_CHUNK) {
    uint64_t len = j->size - off < PREALLOC_CHUNK ? j->size - off : PREALLOC_CHUNK;
    int r = 0;
    if (prealloc_cancelled(j)) r = -1, errno = ECANCELED;
    else if (j->touch)
      touch_pages((uint8_t *)base + off, len, j->fault_unit);
    else {
      do r = madvise((uint8_t *)base + off, (size_t)len, MADV_POPULATE_WRITE);
      while (r < 0 && errno == EINTR);
    }
    if (r < 0) {
      j->err = errno, j->step = j->touch ? "touching pages" : "madvise(MADV_POPULATE_WRITE)";
      munmap(base, (size_t)j->size);
      return;
    }
  }
  activate_pages(j);
  if (prealloc_cancelled(j)) {
    j->err = ECANCELED, j->step = "marking pages accessed";
    munmap(base, (size_t)j->size);
    return;
  }
  j->base = base;
}

static void prealloc_complete(napi_env env, napi_status status, void *data) {
  prealloc_job *j = data;
  close(j->fd);
  napi_value result = NULL;
  bool ok = false;
  if (status != napi_ok && j->err == 0) j->err = ECANCELED, j->step = "preallocPages"; // the environment is going away
  if (j->err != 0) {
    if (j->base) munmap(j->base, (size_t)j->size);
    throw_errno(env, j->step, j->err);
  } else {
    result = adopt_mapping(env, j->base, j->size, j->fault_unit); // unmaps on failure
    ok = result != NULL;
  }
  if (!ok) napi_get_and_clear_last_exception(env, &result);
  if (ok) napi_resolve_deferred(env, j->deferred, result);
  else napi_reject_deferred(env, j->deferred, result);
  napi_delete_reference(env, j->cancel_ref);
  napi_delete_async_work(env, j->work);
  free(j);
}

// preallocPages(fd, size, cancel: Int32Array over a SharedArrayBuffer, touch?: boolean) -> Promise<Mapping>
static napi_value prealloc_pages(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  uint64_t size;
  bool touch = false;
  if (!get_args(env, info, 4, 3, argv, NULL, "preallocPages") || !get_fd(env, argv[0], "preallocPages", "fd", &fd) ||
      !get_u64(env, argv[1], "preallocPages", "size", &size))
    return NULL;
  napi_valuetype touch_type;
  napi_typeof(env, argv[3], &touch_type);
  if (touch_type != napi_undefined && !get_bool(env, argv[3], "preallocPages", "touch", &touch)) return NULL;
  if (size == 0 || size > (uint64_t)SAFE_INT_MAX) {
    throw_range(env, "preallocPages: size %llu is out of range; it must be in [1, 2^53-1]", (unsigned long long)size);
    return NULL;
  }
  bool is_ta = false;
  napi_typedarray_type ta_type;
  size_t ta_len = 0;
  void *ta_data = NULL;
  napi_value ab;
  bool is_sab = false;
  if (napi_is_typedarray(env, argv[2], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, argv[2], &ta_type, &ta_len, &ta_data, &ab, NULL) != napi_ok ||
      ta_type != napi_int32_array || ta_len < 1 || napi_is_arraybuffer(env, ab, &is_sab) != napi_ok || is_sab) {
    // napi_is_arraybuffer is false for a SharedArrayBuffer: a plain (detachable) one is refused.
    throw_type(env, "preallocPages: cancel must be an Int32Array over a SharedArrayBuffer (a buffer that cannot be detached)");
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) return errno_thrown(env, "fstat", errno);
  if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < size) {
    throw_plain(env, "ERR_MAPPING_BEYOND_FILE", "preallocPages: the fd is not a regular file of at least %llu bytes",
                (unsigned long long)size);
    return NULL;
  }
  size_t fault_unit = (size_t)sysconf(_SC_PAGESIZE);
  struct statfs sf;
  if (fstatfs(fd, &sf) == 0 && sf.f_type == HUGETLBFS_MAGIC) fault_unit = (size_t)sf.f_bsize;
  pthread_once(&guard_once, guard_install);
  if (guard_install_errno != 0) return errno_thrown(env, "sigaction(SIGBUS)", guard_install_errno);
  prealloc_job *j = calloc(1, sizeof *j);
  if (!j) return errno_thrown(env, "malloc", ENOMEM);
  j->cancel = (_Atomic int32_t *)ta_data;
  j->touch = touch;
  j->size = size;
  j->fault_unit = fault_unit;
  j->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (j->fd < 0) {
    int e = errno;
    free(j);
    return errno_thrown(env, "fcntl(F_DUPFD_CLOEXEC)", e);
  }
  napi_value promise, name;
  if (napi_create_reference(env, argv[2], 1, &j->cancel_ref) != napi_ok) goto fail;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) goto fail_ref;
  if (napi_create_string_utf8(env, "vhost-wasm:preallocPages", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, prealloc_execute, prealloc_complete, j, &j->work) != napi_ok)
    goto fail_promise;
  if (napi_queue_async_work(env, j->work) != napi_ok) {
    napi_delete_async_work(env, j->work);
    goto fail_promise;
  }
  return promise;
fail_promise : {
  // The promise is returned to nobody: settle it so it is not left pending for ever.
  napi_value u = make_undefined(env);
  napi_reject_deferred(env, j->deferred, u);
}
fail_ref:
  napi_delete_reference(env, j->cancel_ref);
fail:
  close(j->fd);
  free(j);
  throw_napi(env, napi_generic_failure, "preallocPages: queueing the work");
  return NULL;
}

bool init_mapping(napi_env env, napi_value exports, addon_env *ae) {
  napi_property_descriptor methods[] = {
      {"window", NULL, mapping_window, NULL, NULL, NULL, napi_default_method, NULL},
      {"unmap", NULL, mapping_unmap, NULL, NULL, NULL, napi_default_method, NULL},
      {"faults", NULL, mapping_faults, NULL, NULL, NULL, napi_default_method, NULL},
      {"populate", NULL, mapping_populate, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls;
  if (napi_define_class(env, "Mapping", NAPI_AUTO_LENGTH, mapping_ctor, NULL, 4, methods, &cls) != napi_ok)
    return false;
  if (napi_create_reference(env, cls, 1, &ae->mapping_ctor) != napi_ok) return false;
  napi_value mw = make_number(env, (double)MAX_WINDOW);
  napi_property_descriptor props[] = {
      {"MAX_WINDOW", NULL, NULL, NULL, NULL, mw, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, 1, props) == napi_ok && set_fn(env, exports, "mmap", do_mmap) &&
         set_fn(env, exports, "memoryFdInfo", memory_fd_info) && set_fn(env, exports, "memfdAddSeals", memfd_add_seals) &&
         set_fn(env, exports, "mappingFaultCount", mapping_fault_count) &&
         set_fn(env, exports, "preallocPages", prealloc_pages);
}
