// One fd budget per process, shared by every thread (see fd_budget.h for why it is native).
//
// fdBudgetInit(reserve) raises RLIMIT_NOFILE's soft limit to its hard limit (the host's own
// need is bounded by the budget below, so there is no reason to stop short of what the
// operator allows), then sets the budget to `soft - reserve`: the reserve is what the host
// needs for everything that is not a share handle (listeners, connections, memfds, eventfds,
// worker loops). The first call wins; later calls (other threads, other FsShares) only read.
// fdBudgetReserve(n) moves n more fds from the budget into the reserve when a device starts
// and its own needs are known. Takes and gives are lock-free atomics: share handles are taken
// on every FUSE LOOKUP/OPEN/CREATE, in any worker.
#include "fd_budget.h"

#include "common.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
// -1 until fdBudgetInit: how many fds all shares together may hold.
static atomic_long budget = -1;
static atomic_long used = 0;
// Written once under init_lock (and by fdBudgetReserve under it); read under it.
static long limit_now, limit_before, limit_hard, reserve_total;

fd_budget_take_result fd_budget_take(void) {
  long b = atomic_load(&budget);
  if (b < 0) return FD_BUDGET_UNSET;
  long u = atomic_fetch_add(&used, 1) + 1;
  if (u > b) {
    atomic_fetch_sub(&used, 1);
    return FD_BUDGET_SPENT;
  }
  return FD_BUDGET_OK;
}

void fd_budget_give(long n) { atomic_fetch_sub(&used, n); }

static bool set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value x;
  return napi_create_double(env, v, &x) == napi_ok && napi_set_named_property(env, obj, key, x) == napi_ok;
}

// {budget, used, limit, limitBefore, hardLimit, reserve}
static napi_value describe(napi_env env) {
  napi_value o;
  if (napi_create_object(env, &o) != napi_ok) return NULL;
  pthread_mutex_lock(&init_lock);
  long b = atomic_load(&budget), u = atomic_load(&used);
  long now = limit_now, before = limit_before, hard = limit_hard, res = reserve_total;
  pthread_mutex_unlock(&init_lock);
  if (!set_num(env, o, "budget", (double)b) || !set_num(env, o, "used", (double)u) ||
      !set_num(env, o, "limit", (double)now) || !set_num(env, o, "limitBefore", (double)before) ||
      !set_num(env, o, "hardLimit", (double)hard) || !set_num(env, o, "reserve", (double)res))
    return NULL;
  return o;
}

static bool arg_count(napi_env env, napi_callback_info info, const char *fn, long *out) {
  napi_value argv[1];
  uint64_t n = 0;
  if (!get_args(env, info, 1, 1, argv, NULL, fn) || !get_u64(env, argv[0], fn, "count", &n)) return false;
  if (n > (1u << 30)) return throw_range(env, "%s: count %llu is not a plausible number of fds", fn, (unsigned long long)n);
  *out = (long)n;
  return true;
}

// fdBudgetInit(reserve) -> describe(); see the top of the file.
static napi_value fd_budget_init(napi_env env, napi_callback_info info) {
  long reserve = 0;
  if (!arg_count(env, info, "fdBudgetInit", &reserve)) return NULL;
  pthread_mutex_lock(&init_lock);
  if (atomic_load(&budget) < 0) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
      int err = errno;
      pthread_mutex_unlock(&init_lock);
      return errno_thrown(env, "getrlimit", err);
    }
    limit_before = rl.rlim_cur == RLIM_INFINITY ? 1L << 30 : (long)rl.rlim_cur;
    limit_hard = rl.rlim_max == RLIM_INFINITY ? 1L << 30 : (long)rl.rlim_max;
    if (rl.rlim_cur != rl.rlim_max) {
      struct rlimit raised = {rl.rlim_max, rl.rlim_max};
      if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
    limit_now = rl.rlim_cur == RLIM_INFINITY ? 1L << 30 : (long)rl.rlim_cur;
    // fs.nr_open caps fds per process even when the rlimit says more.
    if (limit_now > (1L << 30)) limit_now = 1L << 30;
    reserve_total = reserve;
    atomic_store(&budget, limit_now > reserve ? limit_now - reserve : 0);
  }
  pthread_mutex_unlock(&init_lock);
  return describe(env);
}

// fdBudgetReserve(n) -> describe(): n more fds kept for the host (a device that started).
static napi_value fd_budget_reserve(napi_env env, napi_callback_info info) {
  long n = 0;
  if (!arg_count(env, info, "fdBudgetReserve", &n)) return NULL;
  pthread_mutex_lock(&init_lock);
  long b = atomic_load(&budget);
  if (b < 0) {
    pthread_mutex_unlock(&init_lock);
    throw_plain(env, "ERR_FD_BUDGET_UNSET", "fdBudgetReserve: call fdBudgetInit first");
    return NULL;
  }
  reserve_total += n;
  atomic_store(&budget, b > n ? b - n : 0);
  pthread_mutex_unlock(&init_lock);
  return describe(env);
}

// fdBudgetRelease(n) -> describe(): n fds of the reserve go back to the budget (a device the
// daemon removed). The budget stays limit - reserve, so reserve then release is exact.
static napi_value fd_budget_release(napi_env env, napi_callback_info info) {
  long n = 0;
  if (!arg_count(env, info, "fdBudgetRelease", &n)) return NULL;
  pthread_mutex_lock(&init_lock);
  if (atomic_load(&budget) < 0) {
    pthread_mutex_unlock(&init_lock);
    throw_plain(env, "ERR_FD_BUDGET_UNSET", "fdBudgetRelease: call fdBudgetInit first");
    return NULL;
  }
  if (n > reserve_total) {
    long have = reserve_total;
    pthread_mutex_unlock(&init_lock);
    throw_range(env, "fdBudgetRelease: %ld fds were never reserved (the reserve holds %ld)", n, have);
    return NULL;
  }
  reserve_total -= n;
  atomic_store(&budget, limit_now > reserve_total ? limit_now - reserve_total : 0);
  pthread_mutex_unlock(&init_lock);
  return describe(env);
}

static napi_value fd_budget_info(napi_env env, napi_callback_info info) { return describe(env); }

bool init_fd_budget(napi_env env, napi_value exports) {
  return set_fn(env, exports, "fdBudgetInit", fd_budget_init) && set_fn(env, exports, "fdBudgetReserve", fd_budget_reserve) &&
         set_fn(env, exports, "fdBudgetRelease", fd_budget_release) &&
         set_fn(env, exports, "fdBudgetInfo", fd_budget_info);
}
