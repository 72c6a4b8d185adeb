// io_uring for asynchronous storage I/O (liburing 2.3): a ring per calling thread, with reads and
// writes whose iovecs point straight into the caller's ArrayBuffers (mapped guest memory), so a
// device can keep many requests in flight and take their completions in whatever order the kernel
// finishes them. Completions are announced on an eventfd registered with the ring
// (IORING_REGISTER_EVENTFD), which a worker watches with native.watch like any other fd.
//
// Memory safety: the kernel writes into the buffers after the call that queued the I/O has
// returned, so every buffer of an operation is held by a strong reference until its completion
// is reaped (or close() has waited it out): the garbage collector cannot free (or, for a mapping's
// window, unmap) memory the kernel still targets. What a reference cannot stop is an explicit
// Mapping.unmap() with I/O in flight; callers must drain first (`inflight` says how many are out).
#include "common.h"

#include <errno.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

// Segments one operation may carry (the kernel's UIO_MAXIOV); operations with more are refused.
#define URING_MAX_IOV 1024
// Most requests have one or two data segments: keep those without a malloc.
#define INLINE_IOV 4
#define MAX_ENTRIES 4096

typedef struct op {
  double user_data;
  uint32_t niov;
  bool busy;
  struct iovec *iov; // inline_iov or malloc'd
  napi_ref *refs;    // one per segment (inline_refs or malloc'd), released at reap
  struct iovec inline_iov[INLINE_IOV];
  napi_ref inline_refs[INLINE_IOV];
} op;

typedef struct uring {
  struct io_uring ring;
  bool open;
  bool wrapped; // once wrapped, the wrap's finalizer owns the struct
  bool hook_registered;
  bool defer; // IORING_SETUP_DEFER_TASKRUN: completions are posted only when reap() enters the ring
  int event_fd;
  uint32_t entries, capacity, inflight;
  op *ops;
  uint32_t *free_ids; // stack of free op indexes
  uint32_t nfree;
} uring;

static const napi_type_tag URING_TAG = {0x7572696e67a00001ULL, 0x766873742d776173ULL};

static void op_release(napi_env env, op *o) {
  for (uint32_t i = 0; i < o->niov; i++)
    if (o->refs[i]) napi_delete_reference(env, o->refs[i]);
  if (o->iov != o->inline_iov) free(o->iov);
  if (o->refs != o->inline_refs) free(o->refs);
  o->iov = o->inline_iov;
  o->refs = o->inline_refs;
  o->niov = 0;
  o->busy = false;
}

static void put_op(napi_env env, uring *u, uint32_t id) {
  op_release(env, &u->ops[id]);
  u->free_ids[u->nfree++] = id;
  u->inflight--;
}

// Cancels what can be cancelled and waits for every operation still in flight, then closes the
// ring: after it returns the kernel touches none of the buffers. It does not release them (no
// N-API calls: it also runs from the environment's cleanup hook). Returns how many completions
// were dropped.
static uint32_t drain_kernel(uring *u) {
  if (!u->open) return 0;
  uint32_t dropped = u->inflight;
  uint32_t outstanding = u->inflight;
  if (outstanding > 0) {
    // Anything queued but not yet submitted goes in now, so every op produces a completion.
    io_uring_submit(&u->ring);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (sqe) {
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(sqe, UINT64_MAX);
      io_uring_submit(&u->ring);
    }
    while (outstanding > 0) {
      struct io_uring_cqe *cqe;
      int r = io_uring_wait_cqe(&u->ring, &cqe);
      if (r == -EINTR) continue;
      if (r < 0) break; // the ring is broken; exiting it below makes the kernel cancel the rest
      uint64_t id = cqe->user_data;
      io_uring_cqe_seen(&u->ring, cqe);
      if (id < u->capacity && u->ops[id].busy) outstanding--;
    }
  }
  io_uring_queue_exit(&u->ring);
  close(u->event_fd);
  u->open = false;
  return dropped;
}

// After drain_kernel: drop the buffers' references and make every slot free again.
static void release_all(napi_env env, uring *u) {
  u->nfree = 0;
  for (uint32_t i = 0; i < u->capacity; i++) {
    if (u->ops[i].busy) op_release(env, &u->ops[i]);
    u->free_ids[u->nfree++] = u->capacity - 1 - i;
  }
  u->inflight = 0;
}

// Runs when the thread's environment tears down (a worker exits), before N-API finalizers do:
// a mapping's window may be unmapped by its finalizer, so the ring must be quiet by then.
static void uring_env_cleanup(void *arg) {
  uring *u = arg;
  u->hook_registered = false;
  drain_kernel(u);
}

static void unregister_hook(napi_env env, uring *u) {
  if (!u->hook_registered) return;
  napi_remove_env_cleanup_hook(env, uring_env_cleanup, u);
  u->hook_registered = false;
}

static uint32_t drain_and_exit(napi_env env, uring *u) {
  unregister_hook(env, u);
  uint32_t dropped = drain_kernel(u);
  release_all(env, u);
  return dropped;
}

static void uring_free(napi_env env, uring *u) {
  drain_and_exit(env, u);
  free(u->ops);
  free(u->free_ids);
  free(u);
}

static void uring_finalize(napi_env env, void *data, void *hint) { uring_free(env, data); }

static uring *this_uring(napi_env env, napi_value self, const char *fn) {
  uring *u = unwrap_this(env, self, &URING_TAG, fn, "a Uring returned by native.uringCreate()");
  if (u && !u->open) {
    throw_plain(env, "ERR_URING_CLOSED", "%s: the ring was closed; create a new one with native.uringCreate()", fn);
    return NULL;
  }
  return u;
}

// Reserves an op slot, marked busy with the caller's user data, and an SQE; NULL (no exception)
// when the ring is at capacity.
static struct io_uring_sqe *reserve(napi_env env, uring *u, double user_data, uint32_t *id_out, const char *fn, bool *failed) {
  *failed = false;
  if (u->nfree == 0) return NULL;
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (!sqe) {
    // The submission queue is full of queued-but-unsubmitted entries: hand them to the kernel.
    int r = io_uring_submit(&u->ring);
    if (r < 0 && r != -EAGAIN && r != -EBUSY) {
      *failed = true;
      throw_errno(env, "io_uring_submit", -r);
      return NULL;
    }
    sqe = io_uring_get_sqe(&u->ring);
    if (!sqe) return NULL;
  }
  *id_out = u->free_ids[--u->nfree];
  u->inflight++;
  u->ops[*id_out].busy = true;
  u->ops[*id_out].user_data = user_data;
  return sqe;
}

// Reads the flat [buffer, offset, length, buffer, offset, length, ...] array into o->iov, taking a
// strong reference on each buffer. `buffer` is an ArrayBuffer or a view (TypedArray, DataView,
// Buffer); offset and length are relative to it and must stay inside it.
static bool take_iov(napi_env env, napi_value arr, op *o, const char *fn, uint64_t *total) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, arr, &is_array) != napi_ok || !is_array)
    return throw_type(env, "%s: iov must be an array of [buffer, offset, length] triples", fn);
  napi_get_array_length(env, arr, &n);
  if (n == 0 || n % 3)
    return throw_range(env, "%s: iov has %u elements; it must hold 1 or more [buffer, offset, length] triples", fn, n);
  uint32_t segs = n / 3;
  if (segs > URING_MAX_IOV) return throw_range(env, "%s: %u segments exceed the limit of %d", fn, segs, URING_MAX_IOV);
  if (segs > INLINE_IOV) {
    o->iov = malloc(segs * sizeof *o->iov);
    o->refs = calloc(segs, sizeof *o->refs);
    if (!o->iov || !o->refs) return throw_errno(env, "malloc", ENOMEM);
  }
  *total = 0;
  for (uint32_t i = 0; i < segs; i++) {
    napi_value b, vo, vl;
    if (napi_get_element(env, arr, 3 * i, &b) != napi_ok || napi_get_element(env, arr, 3 * i + 1, &vo) != napi_ok ||
        napi_get_element(env, arr, 3 * i + 2, &vl) != napi_ok)
      return throw_napi(env, napi_generic_failure, fn);
    void *data = NULL;
    size_t len = 0;
    bool is_ab = false;
    if (napi_is_arraybuffer(env, b, &is_ab) == napi_ok && is_ab) {
      if (napi_get_arraybuffer_info(env, b, &data, &len) != napi_ok) return throw_napi(env, napi_generic_failure, fn);
    } else {
      char name[32];
      snprintf(name, sizeof name, "iov[%u] (a buffer)", 3 * i);
      if (!get_bytes(env, b, fn, name, &data, &len)) return false;
    }
    uint64_t off, l;
    if (!get_u64(env, vo, fn, "an iov offset", &off) || !get_u64(env, vl, fn, "an iov length", &l)) return false;
    if (l == 0 || off > len || l > len - off)
      return throw_range(env, "%s: segment %u [offset %llu, +length %llu) is empty or runs past its %zu-byte buffer", fn,
                         i, (unsigned long long)off, (unsigned long long)l, len);
    if (!data) return throw_range(env, "%s: segment %u's buffer is detached", fn, i);
    o->iov[i] = (struct iovec){(uint8_t *)data + off, (size_t)l};
    if (napi_create_reference(env, b, 1, &o->refs[i]) != napi_ok) return throw_napi(env, napi_generic_failure, fn);
    o->niov = i + 1;
    *total += l;
  }
  if (*total > 0x7ffff000u) return throw_range(env, "%s: %llu bytes in one operation exceed 2 GiB", fn, (unsigned long long)*total);
  return true;
}

static napi_value rw(napi_env env, napi_callback_info info, bool write) {
  const char *fn = write ? "Uring.writev" : "Uring.readv";
  napi_value argv[5], self;
  int fd;
  uint64_t pos;
  if (!get_args(env, info, 5, 4, argv, &self, fn)) return NULL;
  uring *u = this_uring(env, self, fn);
  if (!u) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd) || !get_u64(env, argv[1], fn, "position", &pos)) return NULL;
  uint64_t udi;
  if (!get_u64(env, argv[2], fn, "userData", &udi)) return NULL;
  bool punt = false;
  napi_valuetype pt = napi_undefined;
  napi_typeof(env, argv[4], &pt);
  if (pt != napi_undefined && !get_bool(env, argv[4], fn, "punt", &punt)) return NULL;
  uint32_t id;
  bool failed;
  struct io_uring_sqe *sqe = reserve(env, u, (double)udi, &id, fn, &failed);
  if (!sqe) return failed ? NULL : make_bool(env, false);
  op *o = &u->ops[id];
  uint64_t total;
  if (!take_iov(env, argv[3], o, fn, &total)) {
    // The SQE is already taken from the ring: turn it into a no-op whose completion is ignored.
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, UINT64_MAX);
    put_op(env, u, id);
    return NULL;
  }
  if (write) io_uring_prep_writev(sqe, fd, o->iov, o->niov, pos);
  else io_uring_prep_readv(sqe, fd, o->iov, o->niov, pos);
  // IOSQE_ASYNC: straight to an io-wq worker, never tried inline in io_uring_enter. For files
  // whose "non-blocking" attempt can still wait (a FUSE file opened FOPEN_DIRECT_IO waits for
  // its server inside io_uring_enter on kernel 6.18), which would stall the device's thread.
  if (punt) io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
  io_uring_sqe_set_data64(sqe, id);
  return make_bool(env, true);
}

static napi_value uring_readv(napi_env env, napi_callback_info info) { return rw(env, info, false); }
static napi_value uring_writev(napi_env env, napi_callback_info info) { return rw(env, info, true); }

static napi_value uring_fsync(napi_env env, napi_callback_info info) {
  const char *fn = "Uring.fsync";
  napi_value argv[4], self;
  int fd;
  uint64_t udi;
  bool datasync, drain;
  if (!get_args(env, info, 4, 4, argv, &self, fn)) return NULL;
  uring *u = this_uring(env, self, fn);
  if (!u) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd) || !get_u64(env, argv[1], fn, "userData", &udi) ||
      !get_bool(env, argv[2], fn, "datasync", &datasync) || !get_bool(env, argv[3], fn, "drain", &drain))
    return NULL;
  uint32_t id;
  bool failed;
  struct io_uring_sqe *sqe = reserve(env, u, (double)udi, &id, fn, &failed);
  if (!sqe) return failed ? NULL : make_bool(env, false);
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  // IOSQE_IO_DRAIN: start only after every earlier submission on this ring has completed; a flush
  // that must follow the writes before it.
  if (drain) io_uring_sqe_set_flags(sqe, IOSQE_IO_DRAIN);
  io_uring_sqe_set_data64(sqe, id);
  return make_bool(env, true);
}

static napi_value uring_fallocate(napi_env env, napi_callback_info info) {
  const char *fn = "Uring.fallocate";
  napi_value argv[5], self;
  int fd;
  uint64_t mode, off, len, udi;
  if (!get_args(env, info, 5, 5, argv, &self, fn)) return NULL;
  uring *u = this_uring(env, self, fn);
  if (!u) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd) || !get_u64(env, argv[1], fn, "mode", &mode) ||
      !get_u64(env, argv[2], fn, "offset", &off) || !get_u64(env, argv[3], fn, "length", &len) ||
      !get_u64(env, argv[4], fn, "userData", &udi))
    return NULL;
  const uint64_t known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
  if (mode & ~known) {
    throw_range(env, "%s: mode 0x%llx has flags other than KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE", fn,
                (unsigned long long)mode);
    return NULL;
  }
  if (len == 0) {
    throw_range(env, "%s: length must be at least 1", fn);
    return NULL;
  }
  uint32_t id;
  bool failed;
  struct io_uring_sqe *sqe = reserve(env, u, (double)udi, &id, fn, &failed);
  if (!sqe) return failed ? NULL : make_bool(env, false);
  io_uring_prep_fallocate(sqe, fd, (int)mode, (off_t)off, (off_t)len);
  io_uring_sqe_set_data64(sqe, id);
  return make_bool(env, true);
}

static napi_value uring_submit(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Uring.submit")) return NULL;
  uring *u = this_uring(env, self, "Uring.submit");
  if (!u) return NULL;
  int r = io_uring_submit(&u->ring);
  if (r == -EAGAIN || r == -EBUSY || r == -EINTR) return make_number(env, 0); // try again after reaping
  if (r < 0) return errno_thrown(env, "io_uring_submit", -r);
  return make_number(env, r);
}

static napi_value uring_reap(napi_env env, napi_callback_info info) {
  napi_value argv[1], self;
  if (!get_args(env, info, 1, 1, argv, &self, "Uring.reap")) return NULL;
  uring *u = this_uring(env, self, "Uring.reap");
  if (!u) return NULL;
  bool is = false;
  napi_typedarray_type t;
  size_t n = 0;
  void *p = NULL;
  if (napi_is_typedarray(env, argv[0], &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, argv[0], &t, &n, &p, NULL, NULL) != napi_ok || t != napi_float64_array) {
    throw_type(env, "Uring.reap: out must be a Float64Array (pairs of userData, result)");
    return NULL;
  }
  double *out = p;
  size_t max = n / 2, got = 0;
  // One io_uring_enter for both directions: hand over what is queued and, under DEFER_TASKRUN,
  // run the completions' task work so their CQEs are posted. Skipped when there is neither
  // (the kernel sets IORING_SQ_TASKRUN while work waits).
  // Under DEFER_TASKRUN the eventfd fires when task work is queued, not only when a completion
  // is posted (kernel commit 21a091b970cd, "io_uring: signal registered eventfd to process
  // deferred task work", merged with the flag itself for 6.1-rc1; host/io/uring-setup.ts asks
  // for the flag only from 6.1 on), so a wake-up always finds the work this enter runs.
  if (io_uring_sq_ready(&u->ring) > 0 || (u->defer && (IO_URING_READ_ONCE(*u->ring.sq.kflags) & IORING_SQ_TASKRUN))) {
    int r = io_uring_submit_and_get_events(&u->ring);
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) return errno_thrown(env, "io_uring_enter", -r);
  }
  while (got < max) {
    struct io_uring_cqe *cqe;
    if (io_uring_peek_cqe(&u->ring, &cqe) != 0) break;
    uint64_t id = cqe->user_data;
    int res = cqe->res;
    io_uring_cqe_seen(&u->ring, cqe);
    if (id >= u->capacity || !u->ops[id].busy) continue; // a no-op or cancel of our own
    out[2 * got] = u->ops[id].user_data;
    out[2 * got + 1] = res;
    got++;
    put_op(env, u, (uint32_t)id);
  }
  return make_number(env, (double)got);
}

// Asks the kernel to cancel every operation in flight (IORING_ASYNC_CANCEL_ALL|ANY): each one
// not yet finished completes with -ECANCELED (or -EINTR); one the kernel cannot stop (a file
// read already under way) completes normally. For an executor's drain before guest memory
// goes away; the caller then waits the rest out with wait().
static napi_value uring_cancel_all(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Uring.cancelAll")) return NULL;
  uring *u = this_uring(env, self, "Uring.cancelAll");
  if (!u) return NULL;
  if (u->inflight == 0) return make_number(env, 0);
  io_uring_submit(&u->ring); // what is queued must be in the kernel to be cancelled
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (!sqe) return make_number(env, 0);
  io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, UINT64_MAX); // reap() skips it
  int r = io_uring_submit(&u->ring);
  if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) return errno_thrown(env, "io_uring_submit", -r);
  return make_number(env, u->inflight);
}

// Hands queued operations to the kernel and blocks until at least one completion is posted
// (none when nothing is in flight). The one blocking call: for draining, where the thread must
// not go on until the kernel has let go of the buffers.
static napi_value uring_wait(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Uring.wait")) return NULL;
  uring *u = this_uring(env, self, "Uring.wait");
  if (!u) return NULL;
  if (u->inflight == 0) return make_number(env, 0);
  int r;
  do r = io_uring_submit_and_wait(&u->ring, 1);
  while (r == -EINTR);
  if (r < 0 && r != -EAGAIN && r != -EBUSY) return errno_thrown(env, "io_uring_submit_and_wait", -r);
  return make_number(env, io_uring_cq_ready(&u->ring));
}

static napi_value uring_close(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Uring.close")) return NULL;
  uring *u = unwrap_this(env, self, &URING_TAG, "Uring.close", "a Uring returned by native.uringCreate()");
  if (!u) return NULL;
  return make_number(env, drain_and_exit(env, u));
}

static napi_value uring_get_inflight(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Uring.inflight")) return NULL;
  uring *u = unwrap_this(env, self, &URING_TAG, "Uring.inflight", "a Uring returned by native.uringCreate()");
  return u ? make_number(env, u->inflight) : NULL;
}

static napi_value uring_ctor(napi_env env, napi_callback_info info) {
  napi_value self;
  uring *u = ctor_external(env, info, &self, "Uring", "native.uringCreate()");
  if (!u) return NULL;
  napi_property_descriptor props[] = {
      {"entries", NULL, NULL, NULL, NULL, make_number(env, u->entries), napi_enumerable, NULL},
      {"capacity", NULL, NULL, NULL, NULL, make_number(env, u->capacity), napi_enumerable, NULL},
      {"eventFd", NULL, NULL, NULL, NULL, make_number(env, u->event_fd), napi_enumerable, NULL},
      {"deferTaskrun", NULL, NULL, NULL, NULL, make_bool(env, u->defer), napi_enumerable, NULL},
  };
  if (napi_define_properties(env, self, 4, props) != napi_ok) {
    throw_napi(env, napi_generic_failure, "Uring constructor");
    return NULL;
  }
  if (!wrap_tagged(env, self, &URING_TAG, u, uring_finalize, "Uring constructor")) return NULL;
  u->wrapped = true;
  return self;
}

typedef struct uring_env {
  napi_ref ctor;
} uring_env;

static void free_uring_env(napi_env env, void *data, void *hint) {
  uring_env *ue = data;
  napi_delete_reference(env, ue->ctor);
  free(ue);
}

static napi_value uring_create(napi_env env, napi_callback_info info) {
  napi_value argv[2], fn_self;
  uint64_t entries;
  bool want_defer = true;
  if (!get_args(env, info, 2, 1, argv, &fn_self, "uringCreate")) return NULL;
  if (!get_u64(env, argv[0], "uringCreate", "entries", &entries)) return NULL;
  napi_valuetype dt;
  napi_typeof(env, argv[1], &dt);
  if (dt != napi_undefined && !get_bool(env, argv[1], "uringCreate", "deferTaskrun", &want_defer)) return NULL;
  if (entries < 1 || entries > MAX_ENTRIES) {
    throw_range(env, "uringCreate: entries must be in [1, %d], got %llu", MAX_ENTRIES, (unsigned long long)entries);
    return NULL;
  }
  uring *u = calloc(1, sizeof *u);
  if (!u) return errno_thrown(env, "malloc", ENOMEM);
  // SINGLE_ISSUER + DEFER_TASKRUN (Linux 6.1): the kernel runs a completion's task work only when
  // this thread enters the ring to collect completions (reap), instead of interrupting the thread
  // wherever it is (an epoll_wait returns EINTR and the loop goes round again). The ring's eventfd
  // still announces that completions are waiting, and reap() runs the work in the io_uring_enter
  // that also submits. Measured end to end (docs/BENCHMARKS.md, "the storage side"): ~0.5 us less
  // back-end CPU per O_DIRECT 4 KiB read and ~2 us per write, small against a loaded machine's
  // noise; the device worker no longer takes an interrupted epoll_wait per completion. The ring
  // is only ever entered by the thread that made it (its N-API environment's), which
  // SINGLE_ISSUER requires. An older kernel refuses the flags (EINVAL): a plain ring then. The
  // caller may ask for a plain ring (deferTaskrun false: host/io/uring-setup.ts decides by the
  // kernel's release).
  struct io_uring_params p = {
      .flags = want_defer ? IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG : 0};
  int r = io_uring_queue_init_params((unsigned)entries, &u->ring, &p);
  if (r == -EINVAL && want_defer) {
    memset(&p, 0, sizeof p);
    r = io_uring_queue_init_params((unsigned)entries, &u->ring, &p);
  }
  u->defer = (p.flags & IORING_SETUP_DEFER_TASKRUN) != 0;
  if (r < 0) {
    free(u);
    return errno_thrown(env, "io_uring_setup", -r);
  }
  u->entries = p.sq_entries;
  // At most as many operations in flight as the completion queue holds, so none is ever lost
  // to an overflowing CQ.
  u->capacity = p.cq_entries;
  u->ops = calloc(u->capacity, sizeof *u->ops);
  u->free_ids = malloc(u->capacity * sizeof *u->free_ids);
  u->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int err = (!u->ops || !u->free_ids) ? ENOMEM : u->event_fd < 0 ? errno : 0;
  if (!err) {
    r = io_uring_register_eventfd(&u->ring, u->event_fd);
    if (r < 0) err = -r;
  }
  if (err) {
    const char *what = err == ENOMEM ? "malloc" : u->event_fd < 0 ? "eventfd" : "io_uring_register_eventfd";
    if (u->event_fd >= 0) close(u->event_fd);
    io_uring_queue_exit(&u->ring);
    free(u->ops);
    free(u->free_ids);
    free(u);
    return errno_thrown(env, what, err);
  }
  for (uint32_t i = 0; i < u->capacity; i++) {
    u->ops[i].iov = u->ops[i].inline_iov;
    u->ops[i].refs = u->ops[i].inline_refs;
    u->free_ids[i] = u->capacity - 1 - i;
  }
  u->nfree = u->capacity;
  u->open = true;
  if (napi_add_env_cleanup_hook(env, uring_env_cleanup, u) != napi_ok) {
    uring_free(env, u);
    throw_napi(env, napi_generic_failure, "uringCreate: registering the thread-exit cleanup");
    return NULL;
  }
  u->hook_registered = true;

  uring_env *ue = NULL;
  napi_value ctor, ext, obj = NULL;
  napi_get_cb_info(env, info, NULL, NULL, NULL, (void **)&ue);
  if (napi_get_reference_value(env, ue->ctor, &ctor) != napi_ok || napi_create_external(env, u, NULL, NULL, &ext) != napi_ok ||
      napi_new_instance(env, ctor, 1, &ext, &obj) != napi_ok) {
    if (!u->wrapped) uring_free(env, u);
    throw_napi(env, napi_generic_failure, "uringCreate: creating the Uring object");
    return NULL;
  }
  return obj;
}

// The size of a backing: st_size for a regular file, BLKGETSIZE64 for a block device (a loop
// device), whose st_size is 0; and the alignment O_DIRECT needs on it.
static napi_value backing_info(napi_env env, napi_callback_info info) {
  int fd;
  struct stat st;
  if (!one_fd_stat(env, info, "backingInfo", &fd, &st)) return NULL;
  uint64_t size;
  uint32_t lbs = 0;
  bool blk = S_ISBLK(st.st_mode);
  if (blk) {
    int ss = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) return errno_thrown(env, "ioctl(BLKGETSIZE64)", errno);
    if (ioctl(fd, BLKSSZGET, &ss) < 0) return errno_thrown(env, "ioctl(BLKSSZGET)", errno);
    lbs = (uint32_t)ss;
  } else if (S_ISREG(st.st_mode)) {
    size = (uint64_t)st.st_size;
    struct statx sx;
    // STATX_DIOALIGN (Linux 6.1): what O_DIRECT needs on this file; 0 when the file system does
    // not say (then O_DIRECT on it is unsupported or unknown).
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN))
      lbs = sx.stx_dio_offset_align;
  } else {
    throw_plain(env, "EINVAL", "backingInfo: fd %d is neither a regular file nor a block device", fd);
    return NULL;
  }
  napi_value obj;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "size", make_number(env, (double)size));
  napi_set_named_property(env, obj, "blockDevice", make_bool(env, blk));
  napi_set_named_property(env, obj, "directAlign", make_number(env, lbs));
  return obj;
}

bool init_uring(napi_env env, napi_value exports) {
  napi_property_descriptor methods[] = {
      {"readv", NULL, uring_readv, NULL, NULL, NULL, napi_default_method, NULL},
      {"writev", NULL, uring_writev, NULL, NULL, NULL, napi_default_method, NULL},
      {"fsync", NULL, uring_fsync, NULL, NULL, NULL, napi_default_method, NULL},
      {"fallocate", NULL, uring_fallocate, NULL, NULL, NULL, napi_default_method, NULL},
      {"submit", NULL, uring_submit, NULL, NULL, NULL, napi_default_method, NULL},
      {"reap", NULL, uring_reap, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, uring_close, NULL, NULL, NULL, napi_default_method, NULL},
      {"cancelAll", NULL, uring_cancel_all, NULL, NULL, NULL, napi_default_method, NULL},
      {"wait", NULL, uring_wait, NULL, NULL, NULL, napi_default_method, NULL},
      {"inflight", NULL, NULL, uring_get_inflight, NULL, NULL, napi_enumerable, NULL},
  };
  napi_value cls;
  if (napi_define_class(env, "Uring", NAPI_AUTO_LENGTH, uring_ctor, NULL, 10, methods, &cls) != napi_ok) return false;
  uring_env *ue = calloc(1, sizeof *ue);
  if (!ue) return false;
  if (napi_create_reference(env, cls, 1, &ue->ctor) != napi_ok) {
    free(ue);
    return false;
  }
  // The constructor reference lives with this environment: a finalizer on the exports frees it.
  if (napi_add_finalizer(env, exports, ue, free_uring_env, NULL, NULL) != napi_ok) {
    napi_delete_reference(env, ue->ctor);
    free(ue);
    return false;
  }
  napi_value create, binfo, falloc;
  if (napi_create_function(env, "uringCreate", NAPI_AUTO_LENGTH, uring_create, ue, &create) != napi_ok ||
      napi_set_named_property(env, exports, "uringCreate", create) != napi_ok)
    return false;
  if (napi_create_function(env, "backingInfo", NAPI_AUTO_LENGTH, backing_info, NULL, &binfo) != napi_ok ||
      napi_set_named_property(env, exports, "backingInfo", binfo) != napi_ok)
    return false;
  napi_create_object(env, &falloc);
  napi_set_named_property(env, falloc, "KEEP_SIZE", make_number(env, FALLOC_FL_KEEP_SIZE));
  napi_set_named_property(env, falloc, "PUNCH_HOLE", make_number(env, FALLOC_FL_PUNCH_HOLE));
  napi_set_named_property(env, falloc, "ZERO_RANGE", make_number(env, FALLOC_FL_ZERO_RANGE));
  napi_object_freeze(env, falloc);
  return napi_set_named_property(env, exports, "FALLOC_FL", falloc) == napi_ok;
}
