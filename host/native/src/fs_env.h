// The share-fd bookkeeping of host/native/src/fs.c, for the other files that hand out share
// fds (fhandle.c): every such fd is taken from the process-wide budget first and recorded as
// owned by the calling thread's environment, so fsClose and a dying worker give it back.
#ifndef VHOST_NATIVE_FS_ENV_H
#define VHOST_NATIVE_FS_ENV_H

#include <node_api.h>
#include <stdbool.h>

typedef struct fs_env fs_env;

// Registers the fs calls; returns this environment's record (NULL with nothing registered on failure).
fs_env *init_fs(napi_env env, napi_value exports);
// The record a call registered with fs_set_fn carries.
fs_env *fs_env_of(napi_env env, napi_callback_info info);
// Before a call that hands out a share fd: false (exception pending) if the budget was never
// set up; otherwise *r is 0, or -ENFILE when the budget is spent.
bool fs_take_budget(napi_env env, int *r);
// After it: r (an fd) is owned by fe; on failure (r < 0) the budget taken is given back.
int fs_keep(fs_env *fe, int r);
// A function whose calls carry fe.
bool fs_set_fn(napi_env env, napi_value obj, const char *name, napi_callback cb, fs_env *fe);

#endif
