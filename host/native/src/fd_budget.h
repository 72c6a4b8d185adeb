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

// One thread's share of the budget (fd_budget.c: the fairness rule). Every thread's fs
// environment has one; it holds a reserve only while a share of that thread has joined
// (fd_budget_join), i.e. while a device's share is open in it. Fields are the budget's to
// change, under its lock.
typedef struct fd_account {
  struct fd_account *prev, *next;
  // Fds this thread holds from the budget now (joined or not).
  long used;
  // Shares of this thread that joined (the account is in the reserve list while > 0).
  long joins;
  // The most this account may keep reserved (its share's maxHandles).
  long cap;
  // Its reserve now: min(cap, the fair share), recomputed when accounts or the budget change.
  long reserve;
} fd_account;

// Takes one fd from the budget for a. FD_BUDGET_UNSET means fdBudgetInit was never called (a bug).
fd_budget_take_result fd_budget_take(fd_account *a);
// Gives n fds of a back.
void fd_budget_give(fd_account *a, long n);
// A share of a's thread opened (cap: its maxHandles) / closed: the thread holds a reserve while any is open.
void fd_budget_join(fd_account *a, long cap);
void fd_budget_leave(fd_account *a);
// a's thread is going away: its fds (n, closed by the caller) and its reserve go back.
void fd_budget_drop(fd_account *a, long n);
// How many more fds a may take now, its reserve and what it holds: {room, reserve, used}.
void fd_budget_account_info(fd_account *a, long out[3]);

bool init_fd_budget(napi_env env, napi_value exports);

#endif
