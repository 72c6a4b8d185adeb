// The main thread's handle on a device: the worker thread(s) it runs in (worker-thread.ts is
// one thread). One thread by default. With --queue-threads N and a device whose queues are
// independent (DeviceInfo.queuesIndependent: blk), N threads, each with its own instance of
// the device, ring i served by thread i mod N; for any other device the flag is ignored, said
// once in the log (an fs plugin keeps one inode table for all its queues: splitting it would
// be wrong, and refusing to start would make one flag unusable for a host serving both kinds).
//
// The session sees one device either way. A call about a ring goes to that ring's thread; a
// call about the device (features, config writes, memory table, dirty log, inflight area,
// reset, a state load) goes to every thread, thread 0 first, so that a refusal (the same input
// is refused by every thread alike) leaves all of them as they were; a thread that refuses
// what thread 0 accepted fails the device. Reads (config, state, sections) come from thread 0:
// every instance saw the same config writes and features, and the plugin state saved is
// instance 0's (docs/architecture.md, "Queue threads"). A failure in one thread fails the
// device as a whole: the others are halted (or terminated, when a thread died), and the
// front-end sees one NEEDS_RESET.

import type { LockCarryWire } from '../fs/lock-carry-wire.ts';
import type { DeviceInfo } from './device.ts';
import type { CarriedSection, DeviceSource, DeviceWorkerApi, LogStatus, RegionMsg, RingSnapshot, StateBeginInfo, StateReadResult, VringAddrMsg, WorkerStatus } from './rpc.ts';
import { ownCopy, type Remote } from './typed-rpc.ts';
import type { WarmUpResult } from './warm-up.ts';
import type { UpgradeInflight, UpgradeRingStart, UpgradeStopResult } from './upgrade-steps.ts';
import { WorkerThread, type DeviceEvent, type DeviceWorkerOptions } from './worker-thread.ts';
import { newMappedReadsStop } from '../io/mapped-reads.ts';
import { DeviceLoadError } from './errors.ts';
import { fdLedger, reclaim } from './fd-ledger.ts';
import { MAX_FDS_TOTAL } from '../server/handover-wire.ts';
import { createLogger, errorText, type Logger } from '../log/logger.ts';

export { EXIT_GRACE_MS, type DeviceEvent, type DeviceWorkerOptions } from './worker-thread.ts';

/** Everything the device's identity is checked by: every thread must load the same device. */
function shape(i: DeviceInfo): string {
  return `${i.deviceId}/${i.name}/${i.numQueues}/${i.maxQueueSize}/${i.features}/${i.configSize}/${i.prefixLen}/${i.queuesIndependent}`;
}

/** How many threads a device runs in, and the log line that explains a difference from what was asked. */
export function queueThreadCount(asked: number, info: DeviceInfo): { threads: number; note: string | null } {
  if (asked <= 1) return { threads: 1, note: null };
  if (!info.queuesIndependent) {
    return {
      threads: 1,
      note: `--queue-threads ${asked} is ignored for ${info.name}: its queues share state in one instance (device-info queues-independent is false), so it runs in one worker thread`,
    };
  }
  if (asked > info.numQueues) {
    return { threads: info.numQueues, note: `--queue-threads ${asked}: ${info.name} has ${info.numQueues} queue(s), so ${info.numQueues} thread(s) are started` };
  }
  return { threads: asked, note: null };
}

/** Fds a warm-up makes at most: a memfd, and a kick and a call eventfd for each of its (at most 4) rings; with room. */
const WARM_UP_FDS = 16;

export class DeviceWorker implements Remote<DeviceWorkerApi> {
  /** Why the device failed as a whole (reported once), until a reset. */
  private failedReason: string | null = null;
  private deathReason: string | null = null;
  private readonly log: Logger;
  /** Settles once every thread is gone: only then may borrowed fds be closed. */
  readonly exited: Promise<void>;
  onEvent: (e: DeviceEvent) => void = () => {};

  private constructor(
    private readonly threads: readonly WorkerThread[],
    readonly info: DeviceInfo,
    label: string,
  ) {
    this.log = createLogger(`device ${label}`);
    this.exited = Promise.all(threads.map((t) => t.exited)).then(() => {});
    threads.forEach((t, k) => (t.onEvent = (e) => this.threadEvent(k, e)));
  }

  /** Starts the device's thread 0, and with --queue-threads (and a device that allows it) the others. */
  static async start(source: DeviceSource, given: DeviceWorkerOptions): Promise<DeviceWorker> {
    // One stop cell for the device's mapped reads, whatever thread punches a hole.
    const opts: DeviceWorkerOptions = { ...given, mappedReadsStop: given.mappedReadsStop ?? newMappedReadsStop() };
    const first = await WorkerThread.start(source, opts);
    const log = createLogger(`device ${opts.label}`);
    // A device on a network has one port per network, served by one instance: its forwarding
    // table and the frames of a call cannot be split over threads.
    if (opts.net && (opts.queueThreads ?? 1) > 1) log.warn(`--queue-threads ${opts.queueThreads} is ignored: a device granted a network runs in one thread`);
    const { threads: n, note } = queueThreadCount(opts.net ? 1 : (opts.queueThreads ?? 1), first.info);
    if (note !== null) log.warn(note);
    if (n === 1) return new DeviceWorker([first], first.info, opts.label);
    const rest = await Promise.allSettled(
      Array.from({ length: n - 1 }, (_, i) => WorkerThread.start(source, { ...opts, label: `${opts.label} (queue thread ${i + 1})`, queueThread: i + 1 })),
    );
    const started = [first, ...rest.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
    const failed = rest.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const odd = started.find((t) => shape(t.info) !== shape(first.info));
    if (failed !== undefined || odd !== undefined) {
      await Promise.all(started.map((t) => t.terminate()));
      if (failed !== undefined) throw failed.reason;
      throw new DeviceLoadError(`device ${opts.label}: a second instance describes itself as ${shape(odd!.info)}, not ${shape(first.info)}; it cannot run on several queue threads`);
    }
    log.info(`${first.info.name} runs in ${n} queue threads (ring i on thread i mod ${n}; thread ids ${started.map((t) => t.threadId).join(', ')})`);
    return new DeviceWorker(started, first.info, opts.label);
  }

  /** A new call deadline for every thread, the call in progress included (the daemon's set-limits). */
  setCallDeadline(ms: number): void {
    for (const t of this.threads) t.setCallDeadline(ms);
  }

  /** Threads the device runs in. */
  get threadCount(): number {
    return this.threads.length;
  }

  /** The Linux thread ids of the device's threads still running (the CPU-share governor's). */
  get threadIds(): number[] {
    return this.threads.filter((t) => t.dead === null && t.tid !== 0).map((t) => t.tid);
  }

  /** Why the device's threads are gone (one died, the others were terminated with it), or null while they run. */
  get dead(): string | null {
    return this.deathReason ?? this.threads.find((t) => t.dead !== null)?.dead ?? null;
  }

  get hasExited(): boolean {
    return this.threads.every((t) => t.hasExited);
  }

  async exitedWithin(ms?: number): Promise<boolean> {
    const each = await Promise.all(this.threads.map((t) => t.exitedWithin(ms)));
    return each.every(Boolean);
  }

  async terminate(): Promise<void> {
    await Promise.all(this.threads.map((t) => t.terminate()));
  }

  // --- events from the threads ---------------------------------------------------------------

  private threadEvent(k: number, e: DeviceEvent): void {
    if (e.type !== 'device-failed' || this.threads.length === 1) {
      this.onEvent(e);
      return;
    }
    const where = `queue thread ${k}: ${e.reason}`;
    if (this.threads[k].dead !== null && this.deathReason === null) {
      // A thread died (watchdog, crash): a device is replaced as a whole, so the others go too.
      this.deathReason = where;
      for (const t of this.threads) if (t.dead === null) void t.terminate();
    }
    this.failDevice(where);
  }

  /** Reports the device failed (once until a reset) and halts every thread still running. */
  private failDevice(reason: string): void {
    if (this.failedReason !== null) return;
    this.failedReason = reason;
    for (const t of this.threads) {
      // halt() of a thread that failed itself or died answers false or rejects: nothing to do.
      if (t.dead === null) t.halt(reason).catch(() => {});
    }
    this.onEvent({ type: 'device-failed', reason });
  }

  // --- routing -------------------------------------------------------------------------------

  private ringThread(index: number): WorkerThread {
    // An index the device lacks goes to a thread anyway: its runner refuses it with the message.
    return this.threads[Number.isInteger(index) && index >= 0 ? index % this.threads.length : 0];
  }

  /**
   * One call on every thread: thread 0 first (a refusal there changes nothing anywhere), then the
   * others together. One of those refusing what thread 0 accepted leaves the instances apart:
   * the device fails (NEEDS_RESET) and the refusal is the answer.
   */
  private async every<T>(what: string, call: (t: WorkerThread, k: number) => Promise<T>): Promise<T[]> {
    const first = await call(this.threads[0], 0);
    if (this.threads.length === 1) return [first];
    const rest = await Promise.allSettled(this.threads.slice(1).map((t, i) => call(t, i + 1)));
    const bad = rest.findIndex((r) => r.status === 'rejected');
    if (bad >= 0) {
      const err = (rest[bad] as PromiseRejectedResult).reason;
      this.failDevice(`queue thread ${bad + 1} refused ${what}, which queue thread 0 accepted: ${errorText(err)}`);
      throw err;
    }
    return [first, ...rest.map((r) => (r as PromiseFulfilledResult<T>).value)];
  }

  readConfig(offset: number, size: number): Promise<Uint8Array> {
    return this.threads[0].readConfig(offset, size);
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    await this.every('a config write', (t) => t.writeConfig(offset, data));
  }

  async setFeatures(features: bigint, protocolFeatures: boolean): Promise<void> {
    await this.every('the features', (t) => t.setFeatures(features, protocolFeatures));
  }

  async setMemTable(regions: RegionMsg[], windowsNow = false): Promise<void> {
    await this.every('the memory table', (t) => t.setMemTable(regions, windowsNow));
  }

  async addMemRegion(region: RegionMsg): Promise<void> {
    await this.every('a memory region', (t) => t.addMemRegion(region));
  }

  async removeMemRegion(guestPhysAddr: number, size: number, userspaceAddr: number): Promise<void> {
    await this.every('a memory region removal', (t) => t.removeMemRegion(guestPhysAddr, size, userspaceAddr));
  }

  ringNum(index: number, num: number): Promise<void> {
    return this.ringThread(index).ringNum(index, num);
  }

  ringAddr(index: number, addr: VringAddrMsg): Promise<void> {
    return this.ringThread(index).ringAddr(index, addr);
  }

  ringBase(index: number, base: number): Promise<void> {
    return this.ringThread(index).ringBase(index, base);
  }

  ringKick(index: number, fd: number | null): Promise<void> {
    const t = this.ringThread(index);
    if (this.threads.length > 1 && this.log.enabled('debug')) {
      this.log.debug(`ring ${index} is served by queue thread ${this.threads.indexOf(t)} (thread id ${t.threadId})`);
    }
    return t.ringKick(index, fd);
  }

  ringCall(index: number, fd: number | null): Promise<void> {
    return this.ringThread(index).ringCall(index, fd);
  }

  ringErr(index: number, fd: number | null): Promise<void> {
    return this.ringThread(index).ringErr(index, fd);
  }

  ringEnable(index: number, enable: boolean): Promise<void> {
    return this.ringThread(index).ringEnable(index, enable);
  }

  ringInbandKick(index: number): Promise<void> {
    return this.ringThread(index).ringInbandKick(index);
  }

  async ringStop(index: number): Promise<number> {
    const t = this.ringThread(index);
    const base = await t.ringStop(index);
    // How far each thread got: what shows a guest's queues really ran on their threads.
    if (this.threads.length > 1 && this.log.enabled('debug')) {
      this.log.debug(`ring ${index} stopped on queue thread ${this.threads.indexOf(t)} (thread id ${t.threadId}) at avail index ${base}`);
    }
    return base;
  }

  async reset(): Promise<void> {
    await this.every('a reset', (t) => t.reset());
    this.failedReason = null;
  }

  async halt(reason: string): Promise<boolean> {
    const each = await Promise.all(this.threads.map((t) => t.halt(reason)));
    return each.some(Boolean);
  }

  async status(): Promise<WorkerStatus> {
    const each = await Promise.all(this.threads.map((t) => t.status()));
    const union = (f: (s: WorkerStatus) => number[]) => [...new Set(each.flatMap(f))].sort((a, b) => a - b);
    return {
      running: union((s) => s.running),
      failed: each.find((s) => s.failed !== null)?.failed ?? null,
      brokenQueues: union((s) => s.brokenQueues),
      processBound: each.find((s) => s.processBound !== null)?.processBound ?? null,
    };
  }

  /** Every thread warms the rings it will serve (warm-up.ts); the answers are summed up. */
  async warmUp(features: bigint, protocolFeatures: boolean, rings: number[]): Promise<WarmUpResult> {
    const n = this.threads.length;
    // The scratch memfd and eventfds each thread makes: closed here if the thread dies in the warm-up.
    const each = await Promise.all(
      this.threads.map(async (t, k) => {
        const ledger = fdLedger(WARM_UP_FDS);
        try {
          return await t.warmUp(features, protocolFeatures, rings.filter((i) => i % n === k), ledger);
        } catch (e) {
          await reclaim(t, ledger, this.log, 'the warm-up');
          throw e;
        }
      }),
    );
    return {
      rings: each.flatMap((r) => r.rings).sort((a, b) => a - b),
      requests: each.reduce((s, r) => s + r.requests, 0),
      completed: each.reduce((s, r) => s + r.completed, 0),
      stateRefusal: each.find((r) => r.stateRefusal !== null)?.stateRefusal ?? null,
      ms: Math.max(...each.map((r) => r.ms)),
    };
  }

  /** A live upgrade's new instance (on: every thread): failures are the new build's until a ring of the guest's starts on it or the switch commits (off). */
  async upgradeCandidate(on: boolean): Promise<void> {
    await Promise.all(this.threads.map((t) => t.upgradeCandidate(on)));
  }

  /** upgrade-steps.ts; a device on one thread only (on several, the session takes the steps one by one). */
  async upgradeStop(pause: number[], stop: number[], stateBytes: number): Promise<UpgradeStopResult> {
    return this.oneThread('upgradeStop').upgradeStop(pause, stop, stateBytes);
  }

  async upgradeStart(offset: number, chunk: Uint8Array, rings: UpgradeRingStart[], inflight: UpgradeInflight | null, carried: CarriedSection[]): Promise<string | null> {
    return this.oneThread('upgradeStart').upgradeStart(offset, chunk, rings, inflight, carried);
  }

  private oneThread(what: string): WorkerThread {
    if (this.threads.length !== 1) throw new Error(`${what} is for a device on one thread; this one runs on ${this.threads.length}`);
    return this.threads[0];
  }

  /** Each ring from the thread that serves it (ring i: thread i mod N). */
  /** Thread 0's: the devices with state that moves between instances (fs) run on one thread. */
  instanceBound(): Promise<string | null> {
    return this.threads[0].instanceBound();
  }

  carrySections(): Promise<CarriedSection[]> {
    return this.threads[0].carrySections();
  }

  /**
   * The share's locks with duplicates of their fds (the caller's to close). The duplicates are
   * made in the worker: one that dies before its reply (killed, crashed) leaves them in the
   * ledger, and they are closed here once its thread is gone.
   */
  async lockCarry(): Promise<LockCarryWire | null> {
    const t = this.threads[0];
    const ledger = fdLedger(MAX_FDS_TOTAL);
    try {
      return await t.lockCarry(ledger);
    } catch (e) {
      await reclaim(t, ledger, this.log, 'the lock handoff');
      throw e;
    }
  }

  lockCarrySize(): Promise<{ fds: number; bytes: number }> {
    return this.threads[0].lockCarrySize();
  }

  async ringSnapshot(): Promise<RingSnapshot[]> {
    const each = await Promise.all(this.threads.map((t) => t.ringSnapshot()));
    return each[0].map((_, i) => each[i % this.threads.length][i]);
  }

  /** Instance 0's identity and sections (the memory disk is one store: saved once), every thread's running rings. */
  async stateBegin(): Promise<StateBeginInfo> {
    const each = await Promise.all(this.threads.map((t) => t.stateBegin()));
    return { ...each[0], started: [...new Set(each.flatMap((b) => b.started))].sort((a, b) => a - b) };
  }

  stateRead(offset: number, size: number, section?: number): Promise<StateReadResult> {
    return this.threads[0].stateRead(offset, size, section);
  }

  /** A section straight to or from the state memfd (section-fd.ts): the shared store, through thread 0. */
  stateSectionToFile(section: number, fd: number, fileOffset: number, len: number, crc: number): Promise<number> {
    return this.threads[0].stateSectionToFile(section, fd, fileOffset, len, crc);
  }

  stateSectionFromFile(section: number, fd: number, fileOffset: number, len: number, crc: number): Promise<number> {
    return this.threads[0].stateSectionFromFile(section, fd, fileOffset, len, crc);
  }

  /** Sections are host-held stores every thread shares (the memory disk): loaded once, through thread 0. */
  stateBeginLoad(section: number, size: number): Promise<void> {
    return this.threads[0].stateBeginLoad(section, size);
  }

  /** The device's own state goes into every instance (each gets its own copy: a chunk's buffer is moved to its thread). */
  async stateWrite(offset: number, chunk: Uint8Array, section?: number): Promise<void> {
    if (section !== undefined || this.threads.length === 1) return this.threads[0].stateWrite(offset, chunk, section);
    const copies = this.threads.map((_, k) => (k === 0 ? chunk : ownCopy(chunk)));
    await this.every('a device state chunk', (t, k) => t.stateWrite(offset, copies[k]));
  }

  async stateFinish(section?: number): Promise<string | null> {
    if (section !== undefined) return this.threads[0].stateFinish(section);
    const each = await this.every('the loaded device state', (t) => t.stateFinish());
    const k = each.findIndex((e) => e !== null);
    return k < 0 ? null : this.threads.length === 1 ? each[k] : `queue thread ${k}: ${each[k]}`;
  }

  async stateAbort(section?: number): Promise<void> {
    if (section !== undefined) return this.threads[0].stateAbort(section);
    await this.every('a state abort', (t) => t.stateAbort());
  }

  async setLogBase(fd: number, size: number, offset: number): Promise<void> {
    await this.every('the dirty log area', (t) => t.setLogBase(fd, size, offset));
  }

  async setLogAll(on: boolean): Promise<void> {
    await this.every('dirty logging', (t) => t.setLogAll(on));
  }

  async logStatus(): Promise<LogStatus> {
    const each = await Promise.all(this.threads.map((t) => t.logStatus()));
    return { ...each[0], outOfRange: each.reduce((n, s) => n + s.outOfRange, 0) };
  }

  async setInflight(fd: number, size: number, offset: number, numQueues: number, queueSize: number): Promise<void> {
    await this.every('the inflight area', (t) => t.setInflight(fd, size, offset, numQueues, queueSize));
  }
}
