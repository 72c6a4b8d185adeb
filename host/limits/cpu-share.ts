// The CPU share of a device (issue 13, "limits per device"): a plugin that burns its whole call
// deadline on every call must not push the other devices' latency up. Every device runs in its
// own worker thread(s), so the kernel's scheduler already does the sharing; what it needs is to
// be told which threads to favour. The governor looks at each device every period and, when the
// device's code ran long calls (2 ms or more of CPU in one call: LONG_CALL_SECONDS) for more of
// the last window than its share, drops its threads to the lowest priority (nice 19, setpriority
// on the thread id: on Linux the nice value is per thread). A well-behaved device woken by its
// front-end then runs before the hogs; a demoted device still gets every CPU nobody else wants (a
// lone busy device loses nothing). Once it claims less than half its share (measured a little
// wider, below) it gets its priority back.
//
// Time in long calls, not CPU time, is the measure. On two busy cores a looping plugin gets as
// little CPU as a busy well-behaved device (each ran ~0.1 CPU with 10 hogs in bench/tenancy.ts
// cpu), and a blk plugin driven flat out at queue depth 1 spends ~85% of its wall clock in its
// calls, a few microseconds each: by CPU or by call time the two look alike. What sets a hog
// apart is that it keeps its thread in its own code for milliseconds at a time. A plugin that
// ran many 1.9 ms calls would escape; it is also one whose front-end asks for that much work.
// The threads' CPU time is shown beside it.
//
// Which calls are long is decided by the CPU the thread ran in them (its CPU clock, read by the
// worker only for a call that took 2 ms of wall clock: request-meter.ts CPU_MARK_MS); how much a
// long call counts is its wall clock. By wall clock alone, a call of microseconds that the
// scheduler preempted for 2 ms on a loaded machine was long: a calm rng device showed 0.03-0.14
// CPU of demand it never used and a share of 0.1 demoted it. By CPU alone, a hog on cores shared
// with other hogs would count only the slice it got (0.1-0.2 CPU), under a share of 0.5.
//
// A demoted device gets its priority back by a wider measure: its slow calls (2 ms or more of
// wall clock, run or waiting for a CPU: slowCalls) and its spin must fall under half its share.
// At nice 19 on busy cores a plugin that loops on the clock rather than on work gets a fraction
// of a millisecond of CPU in each of its long calls; judged by what it ran it would look calm,
// get its priority back and hog again, over and over. The cost: a demoted device whose quick
// calls are often preempted at nice 19 may stay demoted while the machine stays loaded.
//
// Adaptive polling (--poll-max-ns, pollMaxNs) is the other way a device keeps a thread busy: its
// worker spins on its rings between requests, in no call at all. That spin is CPU the device
// claims as surely as a long call (a polling device with a guest that sends a request every
// 100 us spins most of the time), so it is counted into the demand beside the long calls
// (request-meter.ts pollSpun, wall clock as calls are): a device's share covers both, and a
// polling device over it is demoted as a looping plugin is.
//
// Giving a priority back needs CAP_SYS_NICE (or an RLIMIT_NICE of 20): without it the device
// stays demoted, and device-stats says so (restoreRefused).

import { getPriority, setPriority } from 'node:os';
import { threadCpuTimes } from '../device/thread-state.ts';
import { createLogger, errorText } from '../log/logger.ts';

const log = createLogger('cpu-share');

/** The nice value of a demoted device's threads: the lowest priority there is. */
export const DEMOTED_NICE = 19;
/** A device's share when its limits name none: its code may run half the time (of one CPU) on average over the window. */
export const DEFAULT_CPU_SHARE = 0.5;
/** Shares are fractions of one CPU: below 1% a device would be demoted for its own start-up. */
export const MIN_CPU_SHARE = 0.01;
export const MAX_CPU_SHARE = 64;

export interface CpuShareOptions {
  /** How often the threads are sampled (ms). */
  periodMs?: number;
  /** The span a device's demand is averaged over (ms). */
  windowMs?: number;
}

export interface CpuShareStats {
  /** The share: CPUs' worth of time the device's code may run in long calls, on average, before it is demoted. */
  limit: number;
  /**
   * What it claimed over the last window, in CPUs (0.8: 80% of the window, on one thread): the
   * time (wall clock) of the calls in which its code ran 2 ms or more of CPU, plus the time its
   * threads spun polling its rings (pollSpin).
   */
  demand: number;
  /** The part of `demand` its threads spent spinning on their rings (adaptive polling), in CPUs. */
  pollSpin: number;
  /**
   * Time in its calls that took 2 ms or more of wall clock over the last window, in CPUs, whether
   * its code ran or waited for a CPU: a demoted device gets its priority back once this and
   * pollSpin fall under half its share.
   */
  slowCalls: number;
  /** CPUs its threads ran on over the last window (host work included). */
  running: number;
  /** Whether its threads run at the lowest priority now. */
  demoted: boolean;
  /** Times it was demoted since it was added. */
  demotions: number;
  /** Why a demoted device cannot get its priority back (no CAP_SYS_NICE), or null. */
  restoreRefused: string | null;
}

interface Sample {
  at: number;
  runMs: number;
  callMs: number;
  slowMs: number;
  spinMs: number;
}

/** What a device has claimed ever, in seconds (DeviceMeter). */
export interface ClaimedSeconds {
  /** In calls whose code ran LONG_CALL_SECONDS or more of CPU (each counted by its wall clock). */
  calls: number;
  /** In calls that took LONG_CALL_SECONDS or more of wall clock. */
  slowCalls: number;
  /** Spinning on its rings. */
  spin: number;
}

interface Tracked {
  threads: () => number[];
  claimed: () => ClaimedSeconds;
  /** claimed() at the last sample, in ms (null before the first). */
  lastClaimed: { callMs: number; slowMs: number; spinMs: number } | null;
  limit: number;
  /** Per thread: its CPU time at the last sample (a new thread's first sample is its baseline). */
  last: Map<number, number>;
  /** The window's samples: the CPU time used and wanted since the previous one. */
  samples: Sample[];
  demoted: boolean;
  /** Threads set to DEMOTED_NICE (a restarted worker's new threads are demoted when seen). */
  lowered: Set<number>;
  demotions: number;
  restoreRefused: string | null;
}

export class CpuShareGovernor {
  private readonly devices = new Map<string, Tracked>();
  private readonly periodMs: number;
  private readonly windowMs: number;
  private timer: NodeJS.Timeout | null = null;

  constructor(opts: CpuShareOptions = {}) {
    this.periodMs = opts.periodMs ?? 200;
    this.windowMs = opts.windowMs ?? 1000;
  }

  /** Starts watching a device; `threads` names its running worker threads each time it is asked. */
  track(id: string, threads: () => number[], claimed: () => ClaimedSeconds, limit = DEFAULT_CPU_SHARE): void {
    this.devices.set(id, { threads, claimed, lastClaimed: null, limit, last: new Map(), samples: [], demoted: false, lowered: new Set(), demotions: 0, restoreRefused: null });
    if (this.timer === null) {
      this.timer = setInterval(() => this.sample(), this.periodMs);
      this.timer.unref();
    }
  }

  untrack(id: string): void {
    this.devices.delete(id);
    if (this.devices.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  setLimit(id: string, limit: number): void {
    const d = this.devices.get(id);
    if (d) d.limit = limit;
  }

  stats(id: string): CpuShareStats | null {
    const d = this.devices.get(id);
    if (!d) return null;
    const { run, calls, slow, spin } = this.window(d);
    return { limit: d.limit, demand: round(calls + spin), pollSpin: round(spin), slowCalls: round(slow), running: round(run), demoted: d.demoted, demotions: d.demotions, restoreRefused: d.restoreRefused };
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.devices.clear();
  }

  /** CPUs run on, time in long and in slow calls and time spinning (in CPUs), over the window (0 until two samples exist). */
  private window(d: Tracked): { run: number; calls: number; slow: number; spin: number } {
    const sum = { run: 0, calls: 0, slow: 0, spin: 0 };
    const span = d.samples.length < 2 ? 0 : d.samples[d.samples.length - 1].at - d.samples[0].at;
    if (span <= 0) return sum;
    for (const x of d.samples.slice(1)) {
      sum.run += x.runMs / span;
      sum.calls += x.callMs / span;
      sum.slow += x.slowMs / span;
      sum.spin += x.spinMs / span;
    }
    return sum;
  }

  private sample(): void {
    const now = performance.now();
    for (const [id, d] of this.devices) {
      let runMs = 0;
      const seen = new Map<number, number>();
      for (const tid of d.threads()) {
        const t = threadCpuTimes(tid);
        if (t === null) continue;
        seen.set(tid, t.runMs);
        const before = d.last.get(tid);
        if (before !== undefined) runMs += Math.max(0, t.runMs - before);
        if (d.demoted && !d.lowered.has(tid)) this.lower(id, d, tid);
      }
      d.last = seen;
      for (const tid of d.lowered) if (!seen.has(tid)) d.lowered.delete(tid);
      const c = d.claimed();
      const claimed = { callMs: c.calls * 1000, slowMs: c.slowCalls * 1000, spinMs: c.spin * 1000 };
      const before = d.lastClaimed ?? claimed;
      // A restarted worker may start its cells from zero: never a negative time.
      const delta = (k: keyof typeof claimed) => Math.max(0, claimed[k] - before[k]);
      d.lastClaimed = claimed;
      d.samples.push({ at: now, runMs, callMs: delta('callMs'), slowMs: delta('slowMs'), spinMs: delta('spinMs') });
      // The first sample kept is the window's start: its own counts came before the window.
      while (d.samples.length > 2 && now - d.samples[1].at >= this.windowMs) d.samples.shift();
      if (d.samples.length < 2 || now - d.samples[0].at < this.windowMs / 2) continue;
      const { calls, slow, spin } = this.window(d);
      if (!d.demoted && calls + spin > d.limit) this.demote(id, d, calls, spin);
      else if (d.demoted && d.restoreRefused === null && slow + spin < d.limit / 2) this.restore(id, d, slow + spin);
    }
  }

  private demote(id: string, d: Tracked, calls: number, spin: number): void {
    d.demoted = true;
    d.demotions++;
    for (const tid of d.last.keys()) this.lower(id, d, tid);
    const what = spin > 0 ? `ran in long calls (2 ms or more of CPU) for ${round(calls)} and spun polling its rings for ${round(spin)}` : `ran in long calls (2 ms or more of CPU) for ${round(calls)}`;
    log.warn(
      `${id}: its code ${what} CPU's worth of the last ${this.windowMs} ms, more than its share of ${d.limit}: ` +
        `its threads run at the lowest priority (nice ${DEMOTED_NICE}) until its calls of 2 ms or more (run or waiting for a CPU) and its polling take less than ${d.limit / 2}`,
    );
  }

  private lower(id: string, d: Tracked, tid: number): void {
    try {
      setPriority(tid, DEMOTED_NICE);
      d.lowered.add(tid);
    } catch (e) {
      // The thread ended between the sample and now: the next sample no longer sees it.
      if (threadCpuTimes(tid) !== null) log.error(`${id}: cannot lower the priority of thread ${tid}: ${errorText(e)}`);
    }
  }

  private restore(id: string, d: Tracked, slowAndSpin: number): void {
    for (const tid of d.lowered) {
      try {
        // Only what the governor lowered is raised back: a thread someone else reniced keeps its value.
        if (getPriority(tid) === DEMOTED_NICE) setPriority(tid, 0);
      } catch (e) {
        if (threadCpuTimes(tid) === null) continue;
        d.restoreRefused = `raising thread ${tid} back to nice 0 was refused (${errorText(e)}): the daemon needs CAP_SYS_NICE or an RLIMIT_NICE of 20 for that; the device stays at nice ${DEMOTED_NICE}`;
        log.warn(`${id}: ${d.restoreRefused}`);
        return;
      }
    }
    d.lowered.clear();
    d.demoted = false;
    log.info(`${id}: its calls of 2 ms or more and its polling took ${round(slowAndSpin)} CPU's worth of the last ${this.windowMs} ms, under half its share of ${d.limit}: back to normal priority`);
  }
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
