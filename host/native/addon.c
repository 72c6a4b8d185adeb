// vhost_native: the syscalls Node lacks (SCM_RIGHTS, eventfd, memfd, pipe2 flags, mmap,
// uv_poll on the calling thread's loop). Everything above this layer is TypeScript; the
// contract is host/native/api.ts. Loaded once per thread: each worker gets its own state.
#include "src/common.h"

#include <stdlib.h>

// host/native/src/fs.c: fd-relative file-system calls for the filesystem capability.
#include "src/fs_env.h"
// host/native/src/fhandle.c: file handles (name_to_handle_at/open_by_handle_at) for share inodes.
bool init_fhandle(napi_env env, napi_value exports, fs_env *fe);
// host/native/src/fd_budget.c: the process-wide fd budget the share handles are taken from.
bool init_fd_budget(napi_env env, napi_value exports);
// host/native/src/uring.c: io_uring rings for asynchronous storage I/O.
bool init_uring(napi_env env, napi_value exports);
// host/native/src/peercred.c: SO_PEERCRED of a connected Unix socket (the daemon's control socket).
bool init_peercred(napi_env env, napi_value exports);
// host/native/src/tap.c: TAP interfaces for the switch's TAP ports (--network tap:IFNAME).
bool init_tap(napi_env env, napi_value exports);
// host/native/src/checksum.c: CRC-32C (Intel ISA-L) for the state container and pre-copy.
bool init_checksum(napi_env env, napi_value exports);

static void free_addon_env(napi_env env, void *data, void *hint) {
  // The constructor references die with the environment itself.
  free(data);
}

static napi_value init(napi_env env, napi_value exports) {
  addon_env *ae = calloc(1, sizeof *ae);
  if (!ae) {
    napi_throw_error(env, "ENOMEM", "vhost_native: out of memory while loading");
    return NULL;
  }
  ae->env = env;
  if (napi_set_instance_data(env, ae, free_addon_env, NULL) != napi_ok) {
    free(ae);
    napi_throw_error(env, "ERR_NAPI", "vhost_native: napi_set_instance_data failed");
    return NULL;
  }
  fs_env *fe = NULL;
  if (!init_sock(env, exports) || !init_fdio(env, exports) || !init_mapping(env, exports, ae) ||
      !init_watch(env, exports, ae) || !(fe = init_fs(env, exports)) || !init_fhandle(env, exports, fe) ||
      !init_proc(env, exports) ||
      !init_fd_budget(env, exports) || !init_uring(env, exports) || !init_peercred(env, exports) || !init_tap(env, exports) ||
      !init_checksum(env, exports)) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_error(env, "ERR_NAPI", "vhost_native: failed to set up the module's exports");
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
