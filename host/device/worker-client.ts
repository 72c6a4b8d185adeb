// The main thread's handle on a device worker: starts it, calls into it, and watches it.
// A device call that runs past its deadline gets the worker terminated; the session then
// reports the device as needing a reset and every other device keeps running, because each
// lives in its own worker.

import { Worker } from 'node:worker_threads';
import type { DeviceInfo } from './device.ts';
import type { DeviceSource, MainToWorker, WorkerCall, WorkerInit, WorkerToMain, WorkerStatus, RegionMsg, VringAddrMsg, StateBeginInfo, StateReadResult, LogStatus } from './rpc.ts';
import { createLogger, errorText, getLogLevel, type Logger } from '../log/logger.ts';

export interface DeviceWorkerOptions {
  label: string;
  /** Longest a single device call may run before the worker is killed (ms). */
  callDeadlineMs: number;
  /** Longest the device may take to load (transpile + instantiate) (ms). */
  startTimeoutMs?: number;
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

export class DeviceWorker {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private deathReason: string | null = null;
  private readonly slot: Int32Array;
  private readonly epoch: number;
  private readonly timer: NodeJS.Timeout;
  private readonly log: Logger;
  /** Settles once the worker thread is gone (its watchers closed): only then may borrowed fds be closed. */
  readonly exited: Promise<void>;
  onEvent: (e: DeviceEvent) => void = () => {};

  private constructor(
    private readonly worker: Worker,
    readonly info: DeviceInfo,
    slot: Int32Array,
    epoch: number,
    private readonly opts: DeviceWorkerOptions,
  ) {
    this.slot = slot;
    this.epoch = epoch;
    this.log = createLogger(`device ${opts.label}`);
    worker.on('message', (m: WorkerToMain) => this.onMessage(m));
    worker.on('error', (e) => this.die(`worker error: ${errorText(e)}`));
    this.exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.on('exit', (code) => {
      if (this.deathReason !== null) return;
      const reason = `worker exited unexpectedly with code ${code}`;
      this.log.error(reason);
      this.die(reason);
      this.onEvent({ type: 'device-failed', reason });
    });
    const period = Math.max(5, Math.min(50, Math.floor(opts.callDeadlineMs / 4)));
    this.timer = setInterval(() => this.checkDeadline(), period);
    this.timer.unref();
  }

  static async start(source: DeviceSource, opts: DeviceWorkerOptions): Promise<DeviceWorker> {
    const sab = new SharedArrayBuffer(4);
    const epoch = Date.now();
    const init: WorkerInit = { source, logLevel: getLogLevel(), label: opts.label, watchdog: sab, epoch };
    const url = workerUrl();
    let worker: Worker;
    if (url.pathname.endsWith('.ts')) {
      // Running from TypeScript sources (tests): Node 20 loads a worker's entry before any
      // --import hook applies, so a tiny JS entry registers tsx and then loads the real one.
      const tsxApi = import.meta.resolve('tsx/esm/api');
      const boot = `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(url.href)}); })`;
      worker = new Worker(boot, { eval: true, workerData: init, stdout: false, stderr: false });
    } else {
      worker = new Worker(url, { workerData: init, stdout: false, stderr: false });
    }
    const timeoutMs = opts.startTimeoutMs ?? 30_000;
    const info = await new Promise<DeviceInfo>((resolve, reject) => {
      const timer = setTimeout(() => {
        void worker.terminate();
        reject(new Error(`device ${opts.label} did not load within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
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
          reject(new Error(m.error));
        }
      };
      const onErr = (e: Error) => {
        done();
        reject(new Error(`device ${opts.label} failed to load: ${errorText(e)}`));
      };
      const onExit = (code: number) => {
        done();
        reject(new Error(`device ${opts.label} worker exited with code ${code} while loading`));
      };
      worker.on('message', onMsg);
      worker.on('error', onErr);
      worker.on('exit', onExit);
    });
    return new DeviceWorker(worker, info, new Int32Array(sab), epoch, opts);
  }

  /** Why the worker is gone, or null while it runs. */
  get dead(): string | null {
    return this.deathReason;
  }

  call<T = unknown>(call: WorkerCall, transfer?: ArrayBuffer[]): Promise<T> {
    if (this.deathReason !== null) {
      return Promise.reject(new Error(`device ${this.opts.label} is not running (${this.deathReason}); reset the device`));
    }
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ id, call } satisfies MainToWorker, transfer);
    });
  }

  // Typed wrappers for the calls the session makes.
  readConfig(offset: number, size: number) { return this.call<Uint8Array>({ op: 'readConfig', offset, size }); }
  writeConfig(offset: number, data: Uint8Array) { return this.call<void>({ op: 'writeConfig', offset, data }); }
  setFeatures(features: bigint, protocolFeatures: boolean) { return this.call<void>({ op: 'setFeatures', features, protocolFeatures }); }
  setMemTable(regions: RegionMsg[]) { return this.call<void>({ op: 'setMemTable', regions }); }
  addMemRegion(region: RegionMsg) { return this.call<void>({ op: 'addMemRegion', region }); }
  removeMemRegion(guestPhysAddr: number, size: number, userspaceAddr: number) {
    return this.call<void>({ op: 'removeMemRegion', guestPhysAddr, size, userspaceAddr });
  }
  ringNum(index: number, num: number) { return this.call<void>({ op: 'ringNum', index, num }); }
  ringAddr(index: number, addr: VringAddrMsg) { return this.call<void>({ op: 'ringAddr', index, addr }); }
  ringBase(index: number, base: number) { return this.call<void>({ op: 'ringBase', index, base }); }
  ringKick(index: number, fd: number | null) { return this.call<void>({ op: 'ringKick', index, fd }); }
  ringCall(index: number, fd: number | null) { return this.call<void>({ op: 'ringCall', index, fd }); }
  ringErr(index: number, fd: number | null) { return this.call<void>({ op: 'ringErr', index, fd }); }
  ringEnable(index: number, enable: boolean) { return this.call<void>({ op: 'ringEnable', index, enable }); }
  ringInbandKick(index: number) { return this.call<void>({ op: 'ringInbandKick', index }); }
  ringStop(index: number) { return this.call<number>({ op: 'ringStop', index }); }
  reset() { return this.call<void>({ op: 'reset' }); }
  status() { return this.call<WorkerStatus>({ op: 'status' }); }
  // Device-state transfer and dirty logging.
  stateBegin() { return this.call<StateBeginInfo>({ op: 'stateBegin' }); }
  stateRead(offset: number, size: number, section?: number) { return this.call<StateReadResult>({ op: 'stateRead', offset, size, section }); }
  stateBeginLoad(section: number, size: number) { return this.call<void>({ op: 'stateBeginLoad', section, size }); }
  /** Moves chunk's buffer to the worker when chunk owns all of it, else copies. */
  stateWrite(offset: number, chunk: Uint8Array, section?: number) {
    const own = chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength && chunk.buffer instanceof ArrayBuffer;
    return this.call<void>({ op: 'stateWrite', offset, chunk, section }, own ? [chunk.buffer as ArrayBuffer] : undefined);
  }
  stateFinish(section?: number) { return this.call<string | null>({ op: 'stateFinish', section }); }
  stateAbort(section?: number) { return this.call<void>({ op: 'stateAbort', section }); }
  setLogBase(fd: number, size: number, offset: number) { return this.call<void>({ op: 'setLogBase', fd, size, offset }); }
  setLogAll(on: boolean) { return this.call<void>({ op: 'setLogAll', on }); }
  logStatus() { return this.call<LogStatus>({ op: 'logStatus' }); }

  async terminate(): Promise<void> {
    clearInterval(this.timer);
    if (this.deathReason === null) this.die('terminated by the host');
    await this.worker.terminate();
  }

  private onMessage(m: WorkerToMain): void {
    switch (m.type) {
      case 'reply': {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.ok) p.resolve(m.value);
        else p.reject(new Error(m.error));
        return;
      }
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
    const started = Atomics.load(this.slot, 0);
    if (started === 0 || this.deathReason !== null) return;
    const ran = Date.now() - this.epoch - started;
    if (ran <= this.opts.callDeadlineMs) return;
    const reason = `${this.info.name}: a device call ran ${ran} ms, past its ${this.opts.callDeadlineMs} ms deadline; worker terminated`;
    this.log.error(reason);
    this.die(reason);
    void this.worker.terminate();
    this.onEvent({ type: 'device-failed', reason });
  }

  private die(reason: string): void {
    if (this.deathReason !== null) return;
    this.deathReason = reason;
    clearInterval(this.timer);
    for (const p of this.pending.values()) p.reject(new Error(`device ${this.opts.label}: ${reason}`));
    this.pending.clear();
  }
}
