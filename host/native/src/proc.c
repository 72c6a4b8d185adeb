// The process's last-resort exit. process.exit() first joins every worker thread, so a worker
// blocked in a system call that terminate() cannot interrupt (open() of a FIFO, a write to a
// full blocking pipe) would hold the whole host forever; _exit() ends every thread at once.
#include "common.h"

#include <unistd.h>

static napi_value exit_now(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t code;
  if (!get_args(env, info, 1, 1, argv, NULL, "exitNow")) return NULL;
  if (!get_u64(env, argv[0], "exitNow", "code", &code)) return NULL;
  if (code > 255) {
    throw_range(env, "exitNow: code must be in [0, 255], got %llu", (unsigned long long)code);
    return NULL;
  }
  _exit((int)code);
}

bool init_proc(napi_env env, napi_value exports) { return set_fn(env, exports, "exitNow", exit_now); }
