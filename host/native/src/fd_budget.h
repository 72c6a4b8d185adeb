// The process-wide fd budget (host/native/src/fd_budget.c): how many fds the filesystem
// shares of all devices together may hold. Devices run in worker threads of one process and
// share one fd table, so the count lives here, in the addon's process-global memory (the
// shared object is loaded once per process; every thread's environment sees the same
// counter), not in any one thread's JavaScript heap. That holds as long as every thread
// loads the addon from the same file (host/native/index.ts resolves one path for all, in the
// sources and in the bundle alike): two copies of the .node file would be two counters.
#ifndef VHOST_NATIVE_FD_BUDGET_H
#define VHOST_NATIVE_FD_BUDGET_H

#include <node_api.h>
#include <stdbool.h>

typedef enum { FD_BUDGET_OK, FD_BUDGET_SPENT, FD_BUDGET_UNSET } fd_budget_take_result;

// Takes one fd from the budget. FD_BUDGET_UNSET means fdBudgetInit was never called (a bug).
fd_budget_take_result fd_budget_take(void);
// Gives n fds back.
void fd_budget_give(long n);

bool init_fd_budget(napi_env env, napi_value exports);

#endif
