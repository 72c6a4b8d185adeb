// The process's last-resort exit. process.exit() first joins every worker thread, so a worker
// blocked in a system call that terminate() cannot interrupt (open() of a FIFO, a write to a
// full blocking pipe) would hold the whole host forever; _exit() ends every thread at once.
// And the CPU time of another thread of this process, for the device watchdog.
#include "common.h"

#include <errno.h>
#include <time.h>
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

// The CPU clock of thread `tid` of this process: Linux names it by the thread id, as glibc's
// pthread_getcpuclockid does (~tid << 3 | CPUCLOCK_PERTHREAD_MASK 4 | CPUCLOCK_SCHED 2), and
// only a thread of the caller's own process may be read (the kernel's lookup_task). Unlike
// sum_exec_runtime in /proc/self/task/<tid>/schedstat, which is as of the thread's last tick
// or switch, the clock is exact for a thread on a CPU right now: the kernel's
// task_sched_runtime() brings the running slice up to date under the runqueue lock first.
static napi_value thread_cpu_ns(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t tid;
  if (!get_args(env, info, 1, 1, argv, NULL, "threadCpuNs")) return NULL;
  if (!get_u64(env, argv[0], "threadCpuNs", "tid", &tid)) return NULL;
  if (tid == 0 || tid > INT32_MAX) {
    throw_range(env, "threadCpuNs: tid must be in [1, 2^31-1], got %llu", (unsigned long long)tid);
    return NULL;
  }
  const clockid_t clock = (clockid_t)((~(uint32_t)tid << 3) | 6);
  struct timespec ts;
  if (clock_gettime(clock, &ts) != 0) {
    // EINVAL: no such thread in this process (it ended): the caller's "gone", not an error.
    if (errno == EINVAL || errno == ESRCH) return make_number(env, -1);
    return errno_thrown(env, "clock_gettime", errno);
  }
  return make_number(env, (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec);
}

bool init_proc(napi_env env, napi_value exports) {
  return set_fn(env, exports, "exitNow", exit_now) && set_fn(env, exports, "threadCpuNs", thread_cpu_ns);
}
