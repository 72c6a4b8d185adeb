// The main thread's handle on one device worker thread: starts it, calls into it, and watches
// it. A device call that runs past its deadline gets the thread terminated; the session then
// reports the device as needing a reset and every other device keeps running, because each
// lives in its own worker(s). A device runs in one thread, or in several with --queue-threads
// (worker-client.ts routes the session's calls over them).

import { Worker, type TransferListItem } from 'node:worker_threads';
import type { DeviceInfo } from './device.ts';
import { WATCHDOG_SLOT_INTS, WATCHDOG_TID, WatchdogPhase, deviceWorkerOps, readWatchdogWord, type DeviceSource, type DeviceWorkerApi, type MainToWorker, type PrepareRequest, type WorkerInit, type WorkerToMain } from './rpc.ts';
import { PendingCalls, installRemote, type Remote } from './typed-rpc.ts';
import { threadCpuMs, threadCpuWaitMs, threadRunnable } from './thread-state.ts';
import { setWorkerFactory, takeSpareWorker } from './spare-workers.ts';
import { DeviceLoadError, DeviceStoppedError } from './errors.ts';
import { WORKER_ERROR_CLASSES } from './worker-errors.ts';
import { deserializeError } from '../errors.ts';
import { createLogger, errorText, getLogLevel, logLevelCell, type Logger } from '../log/logger.ts';
import type { NetInit } from '../net/link.ts';

export interface DeviceWorkerOptions {
  label: string;
  /** Longest a single device call may run before the worker is killed (ms). */
  callDeadlineMs: number;
  /**
   * Longest the device's own code may run while it is built (a plugin's instantiation, identity,
   * info), at start and when a reset rebuilds it (ms). Default: the call deadline, at least 5 s
   * (it includes compiling the plugin's core modules).
   */
  loadDeadlineMs?: number;
  /** Longest the device may take to load as a whole, transpiling included (ms). */
  startTimeoutMs?: number;
  /**
   * --queue-threads: threads to run a device with independent queues in (default 1). The
   * device's info decides whether it may (worker-client.ts).
   */
  queueThreads?: number;
  /** Which of the device's queue threads this is (0: the first). */
  queueThread?: number;
  /** --poll-max-ns: how long each queue thread may spin on its rings before it waits for a kick (0 or absent: never). */
  pollMaxNs?: number;
  /** The per-request counter cells of queue thread N (the device's DeviceMeter), when metrics are kept. */
  meterCells?: (queueThread: number) => SharedArrayBuffer;
  /** The I/O throttle cell every queue thread of the device draws from (host/limits/token-bucket.ts). */
  throttle?: SharedArrayBuffer;
  /** Pre-copy's auto-converge cell (host/migration/auto-converge.ts): charged with the bytes each request carries to the device. */
  converge?: SharedArrayBuffer;
  /**
   * The device's mapped-reads stop cell (host/io/mapped-reads.ts): a hole punched through one
   * queue thread stops every thread's mapping of the file. DeviceWorker.start makes it.
   */
  mappedReadsStop?: SharedArrayBuffer;
  /** The device's link to the switch (host/net), made afresh for each worker started: its ports stay. */
  net?: () => NetInit;
}

/** How long a terminated worker gets to exit before it is reported as stuck (ms). */
export const EXIT_GRACE_MS = 1000;

const DEFAULT_START_TIMEOUT_MS = 30_000;

function loadDeadline(opts: DeviceWorkerOptions): number {
  return opts.loadDeadlineMs ?? Math.max(5000, opts.callDeadlineMs);
}

/**
 * The main thread's side of the watchdog: reads what the worker is doing from the shared slot
 * and says why it must be killed, or null. Runs on a timer here, so a worker spinning in device
 * code cannot delay it.
 *
 * A call's deadline is CPU time: what the thread used on a CPU since the watchdog first saw the
 * call (its CPU clock, thread-state.ts). Time it waited for a CPU is not the device's: a device
 * demoted to nice 19 by the CPU-share governor on a loaded machine waits seconds for a few
 * milliseconds of CPU. The call's first moments, before the first look (at most one period, a
 * quarter of the deadline, later), are not counted: the CPU clock at the call's start is not
 * known here, and the worker reading it on every call would cost more than the call.
 *
 * A call that uses no CPU (asleep, or blocked in a system call: a host import waiting on a slow
 * file) would never reach that deadline, so wall clock is the backstop: a thread found asleep in
 * the call is killed once the wall-clock time since the first look, less what it waited for a
 * CPU meanwhile, passes the deadline. The wait is read only then, when it is exact: the kernel
 * adds a wait to run_delay when the thread gets a CPU, so for a runnable thread the wait in
 * progress would count as the device's time. Both measures start at the first look: on a loaded
 * machine this timer can fire late, and what came before it may all have been waiting.
 */
/**
 * A call asleep is killed only after this long at least, whatever its (CPU) deadline. A sleeping
 * thread costs other devices no CPU, so the backstop is there for calls that never come back,
 * not for slow ones; and on a loaded machine a worker's call can sleep 100+ ms without the
 * device doing anything: V8 parks it on a futex while its GC's helper tasks wait for a CPU (seen
 * in CI: an rng call killed after 111 ms asleep with 0 ms of CPU, at load 20 on 2 cores).
 */
export const ASLEEP_BACKSTOP_MIN_MS = 1000;

export class Watchdog {
  /** The bracket (its watchdog word) seen last; when it was first seen, how long it had run, and the thread's CPU clock and CPU wait. */
  private bracket = 0;
  private ranAtFirstLook = 0;
  private cpuAtFirstLook: number | null = null;
  private waitAtFirstLook: number | null = null;

  constructor(
    private readonly slot: Int32Array,
    private readonly epoch: number,
    private readonly opts: DeviceWorkerOptions,
  ) {}

  /** The worker's Linux thread id (0 until the worker has stored it). */
  get tid(): number {
    return Atomics.load(this.slot, WATCHDOG_TID);
  }

  get period(): number {
    return Math.max(5, Math.min(50, Math.floor(Math.min(this.opts.callDeadlineMs, loadDeadline(this.opts)) / 4)));
  }

  /** Why the worker must go (prefixed with `name` when one is given), or null. */
  overdue(name?: string): string | null {
    const word = Atomics.load(this.slot, 0);
    if (word === 0) return null;
    const { phase, ran } = readWatchdogWord(word, Date.now() - this.epoch);
    const tid = Atomics.load(this.slot, WATCHDOG_TID);
    if (word !== this.bracket) {
      this.bracket = word;
      this.ranAtFirstLook = ran;
      this.cpuAtFirstLook = tid !== 0 && phase === WatchdogPhase.call ? threadCpuMs(tid) : null;
      this.waitAtFirstLook = tid !== 0 && phase === WatchdogPhase.call ? threadCpuWaitMs(tid) : null;
    }
    const [what, limit] =
      phase === WatchdogPhase.load
        ? ['loading the device (its instantiation, identity or info)', loadDeadline(this.opts)]
        : phase === WatchdogPhase.prepare
          ? ['preparing the device (import or transpile)', this.opts.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS]
          : phase === WatchdogPhase.notify
            ? ["a notification write to the front-end's call or err eventfd", this.opts.callDeadlineMs]
            : ['a device call', this.opts.callDeadlineMs];
    // No phase can use more CPU than wall clock: under its deadline by wall clock, under it by all.
    if (ran <= limit) return null;
    const late = (spent: number, how: string) => `${name ? `${name}: ` : ''}${what} ran ${Math.round(spent)} ms, past its ${limit} ms deadline; worker terminated${how}`;
    if (phase === WatchdogPhase.call && this.cpuAtFirstLook !== null) return this.callOverdue(word, tid, ran, limit, late);
    // A notification write to an O_NONBLOCK eventfd returns at once; the bracket overran because
    // the thread waited for a CPU (a loaded machine) or stopped for its GC, not because the
    // front-end blocked it. Only a thread asleep in the write is stuck; a runnable one is left
    // to finish, and is looked at again next period.
    if (phase === WatchdogPhase.notify && tid !== 0 && !this.asleepIn(word, tid)) return null;
    // Load and prepare are wall clock (they include host work: compiling, transpiling); so is a
    // call whose thread's CPU clock could not be read.
    return late(ran, phase === WatchdogPhase.call ? ' (wall clock: the thread\'s CPU time could not be read)' : '');
  }

  /** A call past its deadline by wall clock: past it by CPU time, or asleep past it (see the class). */
  private callOverdue(word: number, tid: number, ran: number, limit: number, late: (spent: number, how: string) => string): string | null {
    const cpu = threadCpuMs(tid);
    // The thread is gone: its exit is reported (worker 'exit'), not a deadline.
    if (cpu === null) return null;
    const used = cpu - this.cpuAtFirstLook!;
    if (used > limit) return late(used, ` (CPU time; ${ran} ms of wall clock since it began)`);
    const since = ran - this.ranAtFirstLook;
    const asleepLimit = Math.max(limit, ASLEEP_BACKSTOP_MIN_MS);
    if (since <= asleepLimit || !this.asleepIn(word, tid)) return null;
    // Asleep, so run_delay holds every wait that ended, and none is in progress.
    const wait = threadCpuWaitMs(tid);
    const waited = wait !== null && this.waitAtFirstLook !== null ? Math.max(0, wait - this.waitAtFirstLook) : 0;
    if (since - waited <= asleepLimit) return null;
    const excused = waited >= 1 ? `, less ${Math.round(waited)} ms waiting for a CPU` : '';
    const floor = asleepLimit > limit ? `, at least ${asleepLimit} ms asleep` : '';
    return late(since - waited, ` (asleep or blocked in a system call: wall clock${excused}${floor}; ${ran} ms since it began, ${Math.round(used)} ms of CPU time)`);
  }

  /**
   * Whether the worker is asleep inside bracket `word` now. The state read counts only if the
   * bracket is still the one read before it: else the thread (or this one) was preempted
   * meanwhile, and the sleeping thread seen is one that already left the bracket (seen in its
   * epoll_wait).
   */
  private asleepIn(word: number, tid: number): boolean {
    return !threadRunnable(tid) && Atomics.load(this.slot, 0) === word;
  }
}

export type DeviceEvent =
  | { type: 'ring-broken'; index: number; reason: string }
  | { type: 'device-failed'; reason: string }
  | { type: 'inband-call'; index: number }
  | { type: 'memory-fault'; reason: string };

function workerUrl(): URL {
  // From source (tests via tsx) the worker is a .ts file beside this one; in the esbuild
  // bundle it is dist/device-worker.mjs beside dist/vhost-wasm.mjs.
  return import.meta.url.endsWith('.ts') ? new URL('./worker.ts', import.meta.url) : new URL('./device-worker.mjs', import.meta.url);
}

/** A device worker thread; `workerData` null makes a spare that waits for its init (spare-workers.ts). */
function newWorker(workerData: unknown, transferList: TransferListItem[] = []): Worker {
  const url = workerUrl();
  if (url.pathname.endsWith('.ts')) {
    // Running from TypeScript sources (tests): Node 20 loads a worker's entry before any
    // --import hook applies, so a tiny JS entry registers tsx and then loads the real one.
    const tsxApi = import.meta.resolve('tsx/esm/api');
    const boot = `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(url.href)}); })`;
    return new Worker(boot, { eval: true, workerData, transferList, stdout: false, stderr: false });
  }
  return new Worker(url, { workerData, transferList, stdout: false, stderr: false });
}
setWorkerFactory(newWorker);

/**
 * Transpiles the plugin at `path` into the transpile cache in a worker of its own (rpc.ts
 * PrepareRequest), so the main thread's event loop keeps serving while jco runs; rejects with
 * the loader's error (not a component, another world). Nothing of the plugin runs.
 */
export async function prepareInWorker(path: string, cacheDir?: string): Promise<void> {
  const request: PrepareRequest = { prepareOnly: { path, ...(cacheDir === undefined ? {} : { cacheDir }) } };
  const worker = newWorker(request);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new DeviceLoadError(`${path} was not transpiled within ${DEFAULT_START_TIMEOUT_MS} ms`)), DEFAULT_START_TIMEOUT_MS);
      const settle = (f: () => void) => {
        clearTimeout(timer);
        f();
      };
      worker.on('message', (m: WorkerToMain) => {
        if (m.type === 'prepared') settle(resolve);
        else if (m.type === 'init-failed') settle(() => reject(deserializeError(m.error, WORKER_ERROR_CLASSES)));
      });
      worker.once('error', (e) => settle(() => reject(new DeviceLoadError(`transpiling ${path} failed: ${errorText(e)}`, { cause: e }))));
      worker.once('exit', (code) => settle(() => reject(new DeviceLoadError(`the worker transpiling ${path} exited with code ${code}`))));
    });
  } finally {
    await worker.terminate();
  }
}

/**
 * Every operation of deviceWorkerOps is a method of WorkerThread answering a typed promise
 * (`worker.ringStop(0)`: Promise<number>); the constructor installs them from the table.
 */
export interface WorkerThread extends Remote<DeviceWorkerApi> {}

export class WorkerThread {
  private readonly calls = new PendingCalls(WORKER_ERROR_CLASSES);
  private deathReason: string | null = null;
  private readonly watchdog: Watchdog;
  private readonly timer: NodeJS.Timeout;
  private exitedYet = false;
  /** exitedWithin() already gave up on this worker once. */
  private stuck = false;
  private readonly log: Logger;
  /** Settles once the worker thread is gone (its watchers closed): only then may borrowed fds be closed. */
  readonly exited: Promise<void>;
  onEvent: (e: DeviceEvent) => void = () => {};

  private constructor(
    private readonly worker: Worker,
    readonly info: DeviceInfo,
    watchdog: Watchdog,
    private readonly opts: DeviceWorkerOptions,
  ) {
    this.watchdog = watchdog;
    this.log = createLogger(`device ${opts.label}`);
    installRemote(this, deviceWorkerOps, (method, args, transfer) => this.invoke(method, args, transfer));
    worker.on('message', (m: WorkerToMain) => this.onMessage(m));
    // An exception nothing in the worker caught ends the worker: the device has failed, and the
    // front-end must hear it (NEEDS_RESET), not find out from requests that are never answered.
    worker.on('error', (e) => this.failed(`worker crashed: ${errorText(e)}`));
    this.exited = new Promise<void>((resolve) =>
      worker.once('exit', () => {
        this.exitedYet = true;
        resolve();
      }),
    );
    worker.on('exit', (code) => this.failed(`worker exited unexpectedly with code ${code}`));
    this.timer = setInterval(() => this.checkDeadline(), watchdog.period);
    this.timer.unref();
  }

  static async start(source: DeviceSource, opts: DeviceWorkerOptions): Promise<WorkerThread> {
    const sab = new SharedArrayBuffer(WATCHDOG_SLOT_INTS * Int32Array.BYTES_PER_ELEMENT); // see WorkerInit.watchdog
    const epoch = Date.now();
    const net = opts.net?.();
    const init: WorkerInit = { source, logLevel: getLogLevel(), logLevelCell: logLevelCell(), label: opts.label, watchdog: sab, epoch, meter: opts.meterCells?.(opts.queueThread ?? 0), throttle: opts.throttle, ...(opts.pollMaxNs ? { pollMaxNs: opts.pollMaxNs } : {}), ...(opts.converge ? { converge: opts.converge } : {}), ...(opts.mappedReadsStop ? { mappedReadsStop: opts.mappedReadsStop } : {}), ...(net ? { net } : {}) };
    const transferList = net ? [net.port] : [];
    const spare = takeSpareWorker();
    const worker = spare ?? newWorker(init, transferList);
    if (spare) spare.postMessage(init, transferList);
    const timeoutMs = opts.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    const watchdog = new Watchdog(new Int32Array(sab), epoch, opts);
    const log = createLogger(`device ${opts.label}`);
    const info = await new Promise<DeviceInfo>((resolve, reject) => {
      const timer = setTimeout(() => {
        done();
        void worker.terminate();
        reject(new DeviceLoadError(`device ${opts.label} did not load within ${timeoutMs} ms`));
      }, timeoutMs);
      // The device's code runs while it loads (a plugin's identity() can loop): time it.
      const check = setInterval(() => {
        const reason = watchdog.overdue();
        if (reason === null) return;
        done();
        log.error(reason);
        void worker.terminate();
        reject(new DeviceLoadError(`device ${opts.label}: ${reason}`));
      }, watchdog.period);
      const done = () => {
        clearTimeout(timer);
        clearInterval(check);
        worker.off('message', onMsg);
        worker.off('error', onErr);
        worker.off('exit', onExit);
      };
      const onMsg = (m: WorkerToMain) => {
        if (m.type === 'ready') {
          done();
          resolve(m.info);
        } else if (m.type === 'init-failed') {
          done();
          void worker.terminate();
          reject(deserializeError(m.error, WORKER_ERROR_CLASSES));
        }
      };
      const onErr = (e: Error) => {
        done();
        reject(new DeviceLoadError(`device ${opts.label} failed to load: ${errorText(e)}`, { cause: e }));
      };
      const onExit = (code: number) => {
        done();
        reject(new DeviceLoadError(`device ${opts.label} worker exited with code ${code} while loading`));
      };
      worker.on('message', onMsg);
      worker.on('error', onErr);
      worker.on('exit', onExit);
    });
    return new WorkerThread(worker, info, watchdog, opts);
  }

  /**
   * A new call deadline from now on, the call in progress included (the daemon's set-limits):
   * the watchdog reads it at every check.
   */
  setCallDeadline(ms: number): void {
    this.opts.callDeadlineMs = ms;
  }

  /** The thread's id (worker_threads.threadId inside it), for log lines. */
  get threadId(): number {
    return this.worker.threadId;
  }

  /** The worker's Linux thread id, for the CPU-share governor (0 until it has started). */
  get tid(): number {
    return this.watchdog.tid;
  }

  /** Why the worker is gone, or null while it runs. */
  get dead(): string | null {
    return this.deathReason;
  }

  /** Sends one operation of deviceWorkerOps (the installed methods come here). */
  private invoke(method: string, args: unknown[], transfer: ArrayBuffer[]): Promise<unknown> {
    if (this.deathReason !== null) {
      return Promise.reject(new DeviceStoppedError(`device ${this.opts.label} is not running (${this.deathReason}); reset the device`));
    }
    return this.calls.start(method, args, (req) => this.worker.postMessage(req satisfies MainToWorker, transfer));
  }

  async terminate(): Promise<void> {
    clearInterval(this.timer);
    if (this.deathReason === null) this.die('terminated by the host');
    await this.worker.terminate();
  }

  /** The worker thread has exited (false while it runs, or while it is stuck after terminate()). */
  get hasExited(): boolean {
    return this.exitedYet;
  }

  /**
   * Waits for the thread to exit, at most EXIT_GRACE_MS; false when it did not. A thread blocked
   * in a system call (open() of a FIFO, say) ignores terminate() until the call returns, which
   * may be never: callers then go on without it rather than wait for ever.
   */
  async exitedWithin(ms = EXIT_GRACE_MS): Promise<boolean> {
    if (this.exitedYet) return true;
    if (this.stuck) return false;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const ok = await Promise.race([this.exited.then(() => true as const), late]);
    clearTimeout(timer);
    if (!ok && !this.stuck) {
      this.stuck = true;
      this.log.error(`the worker did not exit within ${ms} ms of being terminated (blocked in a system call?); going on without it`);
    }
    return ok;
  }

  private onMessage(m: WorkerToMain): void {
    switch (m.type) {
      case 'reply':
        this.calls.settle(m);
        return;
      case 'ring-broken':
      case 'device-failed':
      case 'inband-call':
      case 'memory-fault':
        this.onEvent(m);
        return;
      default:
        return;
    }
  }

  private checkDeadline(): void {
    if (this.deathReason !== null) return;
    const reason = this.watchdog.overdue(this.info.name);
    if (reason === null) return;
    this.log.error(reason);
    this.die(reason);
    void this.worker.terminate();
    this.onEvent({ type: 'device-failed', reason });
  }

  /** The worker died on its own (crash, exit): report it once, as a failed device. */
  private failed(reason: string): void {
    if (this.deathReason !== null) return;
    this.log.error(reason);
    this.die(reason);
    this.onEvent({ type: 'device-failed', reason });
  }

  private die(reason: string): void {
    if (this.deathReason !== null) return;
    this.deathReason = reason;
    clearInterval(this.timer);
    this.calls.rejectAll(() => new DeviceStoppedError(`device ${this.opts.label}: ${reason}`));
  }
}
