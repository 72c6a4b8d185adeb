// The CPU share of a device (issue 13, "limits per device"): a plugin that burns its whole call
// deadline on every call must not push the other devices' latency up. Every device runs in its
// own worker thread(s), so the kernel's scheduler already does the sharing; what it needs is to
// be told which threads to favour. The governor samples each device's threads in /proc every
// period and, when a device wanted more CPU than its share over the last window (time on a CPU
// plus time runnable and waiting for one: a hog on two busy cores gets little CPU but wants it
// all the time), drops its threads to the lowest priority (nice 19, setpriority on the thread
// id: on Linux the nice value is per thread). A well-behaved device woken by its front-end then
// runs before the hogs; a demoted device still gets every CPU nobody else wants (a lone busy
// device loses nothing). Once its demand falls under half its share it gets its priority back.
//
// Giving a priority back needs CAP_SYS_NICE (or an RLIMIT_NICE of 20): without it the device
// stays demoted, and device-stats says so (restoreRefused).

import { getPriority, setPriority } from 'node:os';
import { threadCpuTimes } from '../device/thread-state.ts';
import { createLogger, errorText } from '../log/logger.ts';

const log = createLogger('cpu-share');

/** The nice value of a demoted device's threads: the lowest priority there is. */
export const DEMOTED_NICE = 19;
/** A device's share when its limits name none: half of one CPU, wanted on average over the window. */
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
  /** The share: CPUs the device may want on average before it is demoted. */
  limit: number;
  /** CPUs the device's threads wanted over the last window (on a CPU or waiting for one). */
  demand: number;
  /** CPUs they ran on over the last window. */
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
  wantMs: number;
}

interface Tracked {
  threads: () => number[];
  limit: number;
  /** Per thread: its counters at the last sample (a new thread's first sample is its baseline). */
  last: Map<number, { runMs: number; waitMs: number }>;
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
  track(id: string, threads: () => number[], limit = DEFAULT_CPU_SHARE): void {
    this.devices.set(id, { threads, limit, last: new Map(), samples: [], demoted: false, lowered: new Set(), demotions: 0, restoreRefused: null });
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
    const { run, want } = this.window(d);
    return { limit: d.limit, demand: round(want), running: round(run), demoted: d.demoted, demotions: d.demotions, restoreRefused: d.restoreRefused };
  }

  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.devices.clear();
  }

  /** CPUs used and wanted over the window (0 until two samples exist). */
  private window(d: Tracked): { run: number; want: number } {
    if (d.samples.length < 2) return { run: 0, want: 0 };
    const span = d.samples[d.samples.length - 1].at - d.samples[0].at;
    if (span <= 0) return { run: 0, want: 0 };
    let run = 0;
    let want = 0;
    for (let i = 1; i < d.samples.length; i++) {
      run += d.samples[i].runMs;
      want += d.samples[i].wantMs;
    }
    return { run: run / span, want: want / span };
  }

  private sample(): void {
    const now = performance.now();
    for (const [id, d] of this.devices) {
      let runMs = 0;
      let wantMs = 0;
      const seen = new Map<number, { runMs: number; waitMs: number }>();
      for (const tid of d.threads()) {
        const t = threadCpuTimes(tid);
        if (t === null) continue;
        seen.set(tid, t);
        const before = d.last.get(tid);
        if (before) {
          runMs += t.runMs - before.runMs;
          wantMs += t.runMs - before.runMs + (t.waitMs - before.waitMs);
        }
        if (d.demoted && !d.lowered.has(tid)) this.lower(id, d, tid);
      }
      d.last = seen;
      for (const tid of d.lowered) if (!seen.has(tid)) d.lowered.delete(tid);
      d.samples.push({ at: now, runMs, wantMs });
      // The first sample kept is the window's start: its own counts came before the window.
      while (d.samples.length > 2 && now - d.samples[1].at >= this.windowMs) d.samples.shift();
      const { want } = this.window(d);
      if (d.samples.length < 2 || now - d.samples[0].at < this.windowMs / 2) continue;
      if (!d.demoted && want > d.limit) this.demote(id, d, want);
      else if (d.demoted && d.restoreRefused === null && want < d.limit / 2) this.restore(id, d, want);
    }
  }

  private demote(id: string, d: Tracked, want: number): void {
    d.demoted = true;
    d.demotions++;
    for (const tid of d.last.keys()) this.lower(id, d, tid);
    log.warn(`${id}: wanted ${round(want)} CPU over the last ${this.windowMs} ms, more than its share of ${d.limit}: its threads run at the lowest priority (nice ${DEMOTED_NICE}) until it wants less than ${d.limit / 2}`);
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

  private restore(id: string, d: Tracked, want: number): void {
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
    log.info(`${id}: wants ${round(want)} CPU now, under half its share of ${d.limit}: back to normal priority`);
  }
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
