// Shared helpers for the addon: argument validation that names the bad value, errno
// exceptions shaped like Node's own, and the per-environment state (one per thread that
// loads the addon, because every worker_thread gets its own napi_env and event loop).
#ifndef VHOST_NATIVE_COMMON_H
#define VHOST_NATIVE_COMMON_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

// Number.MAX_SAFE_INTEGER: larger sizes cannot round-trip through a JS number.
#define SAFE_INT_MAX 9007199254740991.0
#define MAX_WINDOW ((uint64_t)1 << 30)
// SCM_MAX_FD in the kernel: a single SCM_RIGHTS message never carries more.
#define MAX_FDS_PER_MSG 253

struct watcher;

typedef struct addon_env {
  napi_env env;
  napi_ref mapping_ctor;
  napi_ref watcher_ctor;
  struct watcher *watchers; // open (not yet closing) watchers, so teardown can close them
  napi_async_cleanup_hook_handle cleanup_handle;
  int pending_closes;       // handles uv_close'd by the cleanup hook, not yet called back
  bool tearing_down;
} addon_env;

// Every helper below returns false with a JS exception pending on failure; callers
// return NULL straight away.
bool throw_errno(napi_env env, const char *syscall, int err);
bool throw_errno_path(napi_env env, const char *syscall, int err, const char *path);
// throw_errno, returning NULL instead: `if (fail) return errno_thrown(env, "mmap", errno);`
// in a callback.
napi_value errno_thrown(napi_env env, const char *syscall, int err);
bool throw_uv(napi_env env, const char *syscall, int uverr);
bool throw_type(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool throw_range(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool throw_plain(napi_env env, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// A napi_status failure we did not expect: surface whatever napi recorded.
bool throw_napi(napi_env env, napi_status st, const char *what);

// Fills argv[0..cap) (missing ones are undefined); fails unless at least `required` were passed.
bool get_args(napi_env env, napi_callback_info info, size_t cap, size_t required, napi_value *argv,
              napi_value *self, const char *fn);
bool get_fd(napi_env env, napi_value v, const char *fn, const char *name, int *out);
// The call's one argument, an fd (named "fd" in the error).
bool one_fd(napi_env env, napi_callback_info info, const char *fn, int *fd);
// one_fd, then fstat() of it (an errno error with syscall "fstat" if that fails).
bool one_fd_stat(napi_env env, napi_callback_info info, const char *fn, int *fd, struct stat *st);
bool get_u64(napi_env env, napi_value v, const char *fn, const char *name, uint64_t *out);
bool get_bool(napi_env env, napi_value v, const char *fn, const char *name, bool *out);
bool get_bytes(napi_env env, napi_value v, const char *fn, const char *name, void **data, size_t *len);
bool get_typed(napi_env env, napi_value v, const char *fn, const char *name, napi_typedarray_type want,
               const char *want_name, void **data, size_t *len);
// Returns a malloc'd NUL-terminated string; rejects embedded NULs and strings over max_len.
bool get_string(napi_env env, napi_value v, const char *fn, const char *name, size_t max_len, char **out);

napi_value make_number(napi_env env, double d);
napi_value make_bool(napi_env env, bool b);
napi_value make_undefined(napi_env env);

// A fresh [a, b] array; closes both fds if it cannot be built.
napi_value make_fd_pair(napi_env env, int a, int b);

bool set_fn(napi_env env, napi_value obj, const char *name, napi_callback cb);

// Classes the addon wraps (Mapping, Watcher) are made only by the addon: their JS constructor
// takes one External holding the native object. ctor_external returns that pointer, or NULL
// with a TypeError ("<cls> cannot be constructed directly; use <factory>").
void *ctor_external(napi_env env, napi_callback_info info, napi_value *self, const char *cls, const char *factory);
// Type-tags `self` and wraps `p` in it; false with an exception naming `what` if N-API refuses.
bool wrap_tagged(napi_env env, napi_value self, const napi_type_tag *tag, void *p, napi_finalize fin, const char *what);
// The native object behind `this` of a method (`fn`), or NULL with a TypeError saying `this` is
// not `what` (e.g. "a Mapping returned by native.mmap()").
void *unwrap_this(napi_env env, napi_value self, const napi_type_tag *tag, const char *fn, const char *what);

addon_env *get_addon_env(napi_env env);

// Module parts, called once per environment from addon.c.
bool init_sock(napi_env env, napi_value exports);
bool init_fdio(napi_env env, napi_value exports);
bool init_mapping(napi_env env, napi_value exports, addon_env *ae);
bool init_watch(napi_env env, napi_value exports, addon_env *ae);
bool init_proc(napi_env env, napi_value exports);

#endif
