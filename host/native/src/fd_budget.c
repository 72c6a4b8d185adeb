// One fd budget per process, shared by every thread (see fd_budget.h for why it is native).
//
// fdBudgetInit(reserve) raises RLIMIT_NOFILE's soft limit to its hard limit (the host's own
// need is bounded by the budget below, so there is no reason to stop short of what the
// operator allows), then sets the budget to `soft - reserve`: the reserve is what the host
// needs for everything that is not a share handle (listeners, connections, memfds, eventfds,
// worker loops). The first call wins; later calls (other threads, other FsShares) only read.
// fdBudgetReserve(n) moves n more fds from the budget into the reserve when a device starts
// and its own needs are known.
//
// Fairness between devices. Every thread with an open share (a device's worker: its share is
// opened there) is an account with a reserve: fds no other account may take. The rule:
//   reserve(a) = min(cap(a), floor(budget / (2 * accounts)))     (cap: the share's maxHandles)
//   a take by a succeeds while used < budget and either
//     - a holds less than its reserve (it takes from its own reserve), or
//     - used + 1 + the unspent reserves of the other accounts <= budget (the common pool).
// So half the budget is split evenly into reserves and the other half is a common pool any
// device may take from, but never so far that another live device's reserve is no longer
// free: one device that opens files until ENFILE holds at most budget - (the others' unspent
// reserves), and each other device still gets its own reserve's worth. A thread that never
// joined (the main thread's memory regions go through fdBudgetReserve, not here) has no
// reserve and takes from the pool only. The reserves are recomputed (O(accounts)) when an
// account joins or leaves and when the budget changes; takes and gives are O(1). A device that
// joins after another spent the pool past the new reserves (a late device-add) has its reserve
// promised but not yet free: the others take nothing from the pool until it is (their gives
// go to it first), and the hard cap `used <= budget` holds throughout. One mutex guards it
// all: a take is one uncontended lock beside a LOOKUP's half-dozen system calls.
#include "fd_budget.h"

#include "common.h"

#include <errno.h>
#include <pthread.h>
#include <sys/resource.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
// -1 until fdBudgetInit: how many fds all shares together may hold.
static long budget = -1;
static long used = 0;
static long limit_now, limit_before, limit_hard, reserve_total;
// Of reserve_total, the fds memory regions past a device's own took from the common pool
// (fdBudgetTakePool): the reserves are computed as if the budget still held them, so regions
// that shrink the budget do not shrink the fs devices' reserves with it.
static long pool_taken = 0;
// The joined accounts (a circular list through a sentinel), how many, and the sum over them
// of max(0, reserve - used): fds promised to an account that it does not hold.
static fd_account accounts = {&accounts, &accounts, 0, 0, 0, 0};
static long n_accounts = 0;
static long unspent = 0;
// The fair share recompute() last gave every account (before its cap): for describe().
static long fair_share = 0;

static long unspent_of(const fd_account *a) { return a->joins > 0 && a->reserve > a->used ? a->reserve - a->used : 0; }

// Lock held: every account's reserve for the current budget and account count.
static void recompute(void) {
  long base = budget + pool_taken;
  long share = n_accounts > 0 && base > 0 ? base / (2 * n_accounts) : 0;
  fair_share = share;
  unspent = 0;
  for (fd_account *a = accounts.next; a != &accounts; a = a->next) {
    a->reserve = a->cap < share ? a->cap : share;
    unspent += unspent_of(a);
  }
}

// Lock held: how many more fds a may take now (see the rule above).
static long room_of(const fd_account *a) {
  if (budget < 0 || used >= budget) return 0;
  long own = a ? unspent_of(a) : 0;
  long pool = budget - used - unspent;
  if (pool < 0) pool = 0;
  long room = own + pool;
  return room < budget - used ? room : budget - used;
}

fd_budget_take_result fd_budget_take(fd_account *a) {
  pthread_mutex_lock(&lock);
  fd_budget_take_result r = FD_BUDGET_OK;
  if (budget < 0) {
    r = FD_BUDGET_UNSET;
  } else if (room_of(a) < 1) {
    r = FD_BUDGET_SPENT;
  } else {
    long before = a ? unspent_of(a) : 0;
    used++;
    if (a) {
      a->used++;
      unspent += unspent_of(a) - before;
    }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

void fd_budget_give(fd_account *a, long n) {
  pthread_mutex_lock(&lock);
  long before = a ? unspent_of(a) : 0;
  used -= n;
  if (a) {
    a->used -= n;
    unspent += unspent_of(a) - before;
  }
  pthread_mutex_unlock(&lock);
}

void fd_budget_join(fd_account *a, long cap) {
  pthread_mutex_lock(&lock);
  if (a->joins++ == 0) {
    a->cap = cap;
    a->next = &accounts;
    a->prev = accounts.prev;
    accounts.prev->next = a;
    accounts.prev = a;
    n_accounts++;
    recompute();
  }
  pthread_mutex_unlock(&lock);
}

static void unlink_account(fd_account *a) {
  a->prev->next = a->next;
  a->next->prev = a->prev;
  a->prev = a->next = NULL;
  a->joins = 0;
  a->reserve = 0;
  n_accounts--;
  recompute();
}

void fd_budget_leave(fd_account *a) {
  pthread_mutex_lock(&lock);
  if (a->joins > 0 && --a->joins == 0) unlink_account(a);
  pthread_mutex_unlock(&lock);
}

void fd_budget_drop(fd_account *a, long n) {
  pthread_mutex_lock(&lock);
  used -= n;
  a->used -= n;
  if (a->joins > 0) unlink_account(a);
  pthread_mutex_unlock(&lock);
}

void fd_budget_account_info(fd_account *a, long out[3]) {
  pthread_mutex_lock(&lock);
  out[0] = room_of(a);
  out[1] = a->joins > 0 ? a->reserve : 0;
  out[2] = a->used;
  pthread_mutex_unlock(&lock);
}

static bool set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value x;
  return napi_create_double(env, v, &x) == napi_ok && napi_set_named_property(env, obj, key, x) == napi_ok;
}

// {budget, used, limit, limitBefore, hardLimit, reserve, accounts, unspentReserves, pool, fairReserve}
static napi_value describe(napi_env env) {
  napi_value o;
  if (napi_create_object(env, &o) != napi_ok) return NULL;
  pthread_mutex_lock(&lock);
  long b = budget, u = used;
  long now = limit_now, before = limit_before, hard = limit_hard, res = reserve_total;
  long n = n_accounts, un = unspent, pool = room_of(NULL), fair = fair_share;
  pthread_mutex_unlock(&lock);
  if (!set_num(env, o, "budget", (double)b) || !set_num(env, o, "used", (double)u) ||
      !set_num(env, o, "limit", (double)now) || !set_num(env, o, "limitBefore", (double)before) ||
      !set_num(env, o, "hardLimit", (double)hard) || !set_num(env, o, "reserve", (double)res) ||
      !set_num(env, o, "accounts", (double)n) || !set_num(env, o, "unspentReserves", (double)un) ||
      !set_num(env, o, "pool", (double)pool) || !set_num(env, o, "fairReserve", (double)fair))
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
  pthread_mutex_lock(&lock);
  if (budget < 0) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
      int err = errno;
      pthread_mutex_unlock(&lock);
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
    budget = limit_now > reserve ? limit_now - reserve : 0;
    recompute();
  }
  pthread_mutex_unlock(&lock);
  return describe(env);
}

// fdBudgetReserve(n) -> describe(): n more fds kept for the host (a device that started).
static napi_value fd_budget_reserve(napi_env env, napi_callback_info info) {
  long n = 0;
  if (!arg_count(env, info, "fdBudgetReserve", &n)) return NULL;
  pthread_mutex_lock(&lock);
  long b = budget;
  if (b < 0) {
    pthread_mutex_unlock(&lock);
    throw_plain(env, "ERR_FD_BUDGET_UNSET", "fdBudgetReserve: call fdBudgetInit first");
    return NULL;
  }
  reserve_total += n;
  budget = b > n ? b - n : 0;
  recompute();
  pthread_mutex_unlock(&lock);
  return describe(env);
}

// fdBudgetRelease(n) -> describe(): n fds of the reserve go back to the budget (a device the
// daemon removed). The budget stays limit - reserve, so reserve then release is exact.
static napi_value fd_budget_release(napi_env env, napi_callback_info info) {
  long n = 0;
  if (!arg_count(env, info, "fdBudgetRelease", &n)) return NULL;
  pthread_mutex_lock(&lock);
  if (budget < 0) {
    pthread_mutex_unlock(&lock);
    throw_plain(env, "ERR_FD_BUDGET_UNSET", "fdBudgetRelease: call fdBudgetInit first");
    return NULL;
  }
  if (n > reserve_total) {
    long have = reserve_total;
    pthread_mutex_unlock(&lock);
    throw_range(env, "fdBudgetRelease: %ld fds were never reserved (the reserve holds %ld)", n, have);
    return NULL;
  }
  reserve_total -= n;
  budget = limit_now > reserve_total ? limit_now - reserve_total : 0;
  recompute();
  pthread_mutex_unlock(&lock);
  return describe(env);
}

// fdBudgetTakePool(n) -> bool: n fds of the common pool kept for the host (memory regions that
// arrived), only if the pool has n free: the check and the take are one step under the lock.
static napi_value fd_budget_take_pool(napi_env env, napi_callback_info info) {
  long n = 0;
  if (!arg_count(env, info, "fdBudgetTakePool", &n)) return NULL;
  pthread_mutex_lock(&lock);
  bool ok = budget >= 0 && room_of(NULL) >= n;
  if (ok) {
    budget -= n;
    reserve_total += n;
    pool_taken += n;
  }
  pthread_mutex_unlock(&lock);
  napi_value r;
  return napi_get_boolean(env, ok, &r) == napi_ok ? r : NULL;
}

// fdBudgetGivePool(n) -> describe(): what fdBudgetTakePool kept goes back to the pool.
static napi_value fd_budget_give_pool(napi_env env, napi_callback_info info) {
  long n = 0;
  if (!arg_count(env, info, "fdBudgetGivePool", &n)) return NULL;
  pthread_mutex_lock(&lock);
  if (n > pool_taken) {
    long have = pool_taken;
    pthread_mutex_unlock(&lock);
    throw_range(env, "fdBudgetGivePool: %ld fds were never taken (the pool gave out %ld)", n, have);
    return NULL;
  }
  budget += n;
  reserve_total -= n;
  pool_taken -= n;
  pthread_mutex_unlock(&lock);
  return describe(env);
}

static napi_value fd_budget_info(napi_env env, napi_callback_info info) { return describe(env); }

bool init_fd_budget(napi_env env, napi_value exports) {
  return set_fn(env, exports, "fdBudgetInit", fd_budget_init) && set_fn(env, exports, "fdBudgetReserve", fd_budget_reserve) &&
         set_fn(env, exports, "fdBudgetRelease", fd_budget_release) && set_fn(env, exports, "fdBudgetTakePool", fd_budget_take_pool) &&
         set_fn(env, exports, "fdBudgetGivePool", fd_budget_give_pool) &&
         set_fn(env, exports, "fdBudgetInfo", fd_budget_info);
}
