// What one notification costs the thread that sends it: write(2) of 1 to an eventfd, timed in the
// writer, when the eventfd's reader (a) sleeps in poll() on the other CPU, (b) sleeps in poll() on
// the writer's CPU, (c) is not waiting at all. A vhost-user back-end pays (a) or (b) for every
// call that wakes its front-end, and the front-end pays it for every kick that wakes the back-end;
// docs/BENCHMARKS.md ("Event mode's wake-ups") has the figures for this VM.
//
//   gcc -O2 -pthread -o /tmp/eventfd-wake bench/eventfd-wake.c && /tmp/eventfd-wake [ROUNDS (default 2000)]
//
// The writer runs on CPU 0; the sleeper on CPU 1 (a) or 0 (b). Before each write the writer waits
// D microseconds after the sleeper said it is about to poll (D = 0 .. 200): whether a longer sleep
// (an idle CPU that has halted) costs the writer more.
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static int efd, back;
static int sleeper_cpu;
static atomic_int about_to_poll;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  if (pthread_setaffinity_np(pthread_self(), sizeof s, &s) != 0) {
    fprintf(stderr, "eventfd-wake: cannot pin to CPU %d (needs 2 CPUs)\n", cpu);
    exit(1);
  }
}

static void *sleeper(void *arg) {
  (void)arg;
  pin(sleeper_cpu);
  for (;;) {
    struct pollfd p = {efd, POLLIN, 0};
    atomic_store(&about_to_poll, 1);
    poll(&p, 1, -1);
    uint64_t v, one = 1;
    if (read(efd, &v, sizeof v) != sizeof v || v > 1) return NULL; // the writer's "stop"
    if (write(back, &one, sizeof one) != sizeof one) return NULL;
  }
}

static int cmp(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

static void waking(int cpu, int rounds) {
  sleeper_cpu = cpu;
  efd = eventfd(0, 0);
  back = eventfd(0, 0);
  atomic_store(&about_to_poll, 0);
  pthread_t t;
  pthread_create(&t, NULL, sleeper, NULL);
  static const int delays_us[] = {0, 2, 10, 50, 200};
  uint64_t *w = malloc(sizeof *w * (size_t)rounds);
  for (unsigned k = 0; k < sizeof delays_us / sizeof *delays_us; k++) {
    for (int i = 0; i < rounds; i++) {
      while (!atomic_load(&about_to_poll)) sched_yield();
      atomic_store(&about_to_poll, 0);
      uint64_t t0 = now_ns();
      while (now_ns() - t0 < (uint64_t)delays_us[k] * 1000) {
      }
      uint64_t one = 1, a = now_ns(), v;
      if (write(efd, &one, sizeof one) != sizeof one) exit(1);
      w[i] = now_ns() - a;
      if (read(back, &v, sizeof v) != sizeof v) exit(1);
    }
    qsort(w, (size_t)rounds, sizeof *w, cmp);
    printf("reader asleep in poll() on CPU %d (%s), ~%3d us after it began: write(2) %5.2f us median, %5.2f p90\n", cpu,
           cpu == 0 ? "the writer's" : "the other", delays_us[k], w[rounds / 2] / 1e3, w[rounds * 9 / 10] / 1e3);
  }
  uint64_t stop = 2;
  if (write(efd, &stop, sizeof stop) != sizeof stop) exit(1);
  pthread_join(t, NULL);
  close(efd);
  close(back);
  free(w);
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 2000;
  if (rounds < 10) rounds = 10;
  pin(0);
  waking(1, rounds);
  waking(0, rounds);
  int e = eventfd(0, EFD_NONBLOCK);
  uint64_t *w = malloc(sizeof *w * (size_t)rounds);
  for (int i = 0; i < rounds; i++) {
    uint64_t one = 1, v, a = now_ns();
    if (write(e, &one, sizeof one) != sizeof one) exit(1);
    w[i] = now_ns() - a;
    if (read(e, &v, sizeof v) != sizeof v) exit(1);
  }
  qsort(w, (size_t)rounds, sizeof *w, cmp);
  printf("no reader waiting: write(2) %5.2f us median, %5.2f p90\n", w[rounds / 2] / 1e3, w[rounds * 9 / 10] / 1e3);
  free(w);
  return 0;
}
