// Entry point of a device worker: one per device, running that device's rings and its device
// instance (a TypeScript module or a WebAssembly plugin). The control socket stays on the main
// thread; this thread only ever blocks inside device code (building the device included) or a
// notification write, where the main thread's watchdog can see it (the shared `watchdog` slot)
// and terminate us.

import { parentPort, workerData } from 'node:worker_threads';
import { DeviceRunner, type RunnerHooks } from './runner.ts';
import type { VirtioDevice, DeviceFactory } from './device.ts';
import { WATCHDOG_TID, WatchdogPhase, deviceWorkerOps, watchdogWord, type CarriedSection, type DeviceWorkerApi, type MainToWorker, type PrepareRequest, type RegionMsg, type VringAddrMsg, type WorkerInit, type WorkerToMain } from './rpc.ts';
import { serve, type Implementation } from './typed-rpc.ts';
import { serializeError } from '../errors.ts';
import { createLogger, errorText, setLogLevel, useLogLevelCell } from '../log/logger.ts';
import { RequestMeter } from '../metrics/request-meter.ts';
import { TokenBucket } from '../limits/token-bucket.ts';
import { ownThreadId } from './thread-state.ts';
import { DeviceNet } from '../net/device-net.ts';
import { warmUp } from './warm-up.ts';
import { upgradeStart, upgradeStop, type UpgradeInflight, type UpgradeRingStart } from './upgrade-steps.ts';
import { REQUEST_METER_BYTES } from '../metrics/request-meter.ts';
import { native } from '../native/index.ts';
import { LOCK_HANDOFF_SECTION_ID } from '../fs/lock-handoff.ts';
import { lockCarryWire } from '../fs/lock-carry-wire.ts';
import { closeNoted, nextCell, type FdCells } from './fd-ledger.ts';

// A worker started for a device gets its init as workerData; a spare one (spare-workers.ts),
// booted before any device asked for it, gets it as its first message.
const first = (workerData as WorkerInit | PrepareRequest | null) ?? (await new Promise<WorkerInit>((resolve) => parentPort!.once('message', resolve)));
if ('prepareOnly' in first) {
  // Transpile only (rpc.ts PrepareRequest); no device is built, and the main thread ends the worker.
  try {
    const { preparePlugin } = await import('../plugin/prepare.ts');
    const { readFileSync } = await import('node:fs');
    await preparePlugin(readFileSync(first.prepareOnly.path), first.prepareOnly.cacheDir);
    parentPort!.postMessage({ type: 'prepared' } satisfies WorkerToMain);
  } catch (e) {
    parentPort!.postMessage({ type: 'init-failed', error: serializeError(e) } satisfies WorkerToMain);
  }
  await new Promise<never>(() => {});
}
const init = first as WorkerInit;
const port = parentPort!;
setLogLevel(init.logLevel);
if (init.logLevelCell) useLogLevelCell(init.logLevelCell);
const log = createLogger(`device ${init.label}`);
const slot = new Int32Array(init.watchdog);
const tid = ownThreadId();
// The watchdog looks this thread up in /proc when a notification write overruns (worker-thread.ts).
Atomics.store(slot, WATCHDOG_TID, tid);
/** This thread's CPU clock: the meter tells a call that ran long from one that waited for a CPU. */
const ownCpuNs = () => native.threadCpuNs(tid);
// Replaced by a scratch one while an upgrade's warm-up runs (its requests are not the guest's).
let meter = init.meter ? new RequestMeter(init.meter, ownCpuNs) : undefined;
const throttle = init.throttle ? new TokenBucket(init.throttle) : undefined;
const converge = init.converge ? new TokenBucket(init.converge) : undefined;
const net = init.net ? new DeviceNet(init.net) : undefined;
/** What the device is told about its networks (the plugin's network.count/mtu; a module's options). */
const networks = net ? net.grants.map((g) => ({ name: g.name, mtu: g.mtu })) : undefined;

function post(msg: WorkerToMain): void {
  port.postMessage(msg);
}

/** Marks the start of something the main thread's watchdog times (see WatchdogPhase). */
function enter(phase: WatchdogPhase): void {
  Atomics.store(slot, 0, watchdogWord(phase, Date.now() - init.epoch));
}

function leave(): void {
  Atomics.store(slot, 0, 0);
}

/** Runs device code that builds the device under the load deadline, then goes back to `prepare`. */
function underLoadDeadline<T>(fn: () => T): T {
  enter(WatchdogPhase.load);
  try {
    return fn();
  } finally {
    enter(WatchdogPhase.prepare);
  }
}

/**
 * Builds the device, at start and again on a reset after it failed. Every step is timed by the
 * watchdog: a plugin that loops in its start function, identity() or info() (on a fresh
 * instance as much as on the first) gets the worker killed like one that loops in process().
 */
async function loadDevice(): Promise<VirtioDevice> {
  const src = init.source;
  enter(WatchdogPhase.prepare);
  try {
    if (src.kind === 'module') {
      const mod = (await import(src.url)) as { default?: DeviceFactory };
      if (typeof mod.default !== 'function') {
        throw new Error(`device module ${src.url} has no default export building a device`);
      }
      const factory = mod.default;
      return underLoadDeadline(() => factory({ ...(src.options ?? {}), ...(networks ? { networks } : {}) }));
    }
    const { loadPluginDevice } = await import('../plugin/device-source.ts');
    return await loadPluginDevice(src.path, { ...(src.options ?? {}), ...(networks ? { networks } : {}) }, init.label, underLoadDeadline);
  } finally {
    leave();
  }
}

/**
 * The worker's side of deviceWorkerOps: each operation on the runner. A reset after the device
 * failed first brings a fresh instance from the same source: the failed one may be unusable (a
 * plugin that trapped or broke the contract is never called again, its memory may be
 * half-updated), and a reset means "as just created".
 */
class WorkerOperations implements Implementation<DeviceWorkerApi> {
  constructor(
    private readonly runner: DeviceRunner,
    private readonly hooks: RunnerHooks,
  ) {}

  readConfig(offset: number, size: number) { return this.runner.readConfig(offset, size); }
  writeConfig(offset: number, data: Uint8Array) { this.runner.writeConfig(offset, data); }
  setFeatures(features: bigint, protocolFeatures: boolean) { this.runner.setFeatures(features, protocolFeatures); }
  setMemTable(regions: RegionMsg[], windowsNow?: boolean) { this.runner.setMemTable(regions, windowsNow); }
  addMemRegion(region: RegionMsg) { this.runner.addMemRegion(region); }
  removeMemRegion(guestPhysAddr: number, size: number, userspaceAddr: number) { this.runner.removeMemRegion({ guestPhysAddr, size, userspaceAddr }); }
  ringNum(index: number, num: number) { this.runner.ringNum(index, num); }
  ringAddr(index: number, addr: VringAddrMsg) { this.runner.ringAddr(index, addr); }
  ringBase(index: number, base: number) { this.runner.ringBase(index, base); }
  ringKick(index: number, fd: number | null) { this.runner.ringKick(index, fd); }
  ringCall(index: number, fd: number | null) { this.runner.ringCall(index, fd); }
  ringErr(index: number, fd: number | null) { this.runner.ringErr(index, fd); }
  ringEnable(index: number, enable: boolean) { this.runner.ringEnable(index, enable); }
  ringInbandKick(index: number) { this.runner.ringInbandKick(index); }
  ringStop(index: number) { return this.runner.ringStop(index); }
  async reset() {
    if (this.runner.status().failed !== null) {
      this.runner.replaceDevice(await loadDevice());
      // Why it failed was logged when it failed: plugin text is logged once.
      log.info('device replaced by a fresh instance on reset after its failure');
    }
    this.runner.reset();
  }
  halt(reason: string) { return this.runner.halt(reason); }
  status() { return this.runner.status(); }
  ringSnapshot() { return this.runner.ringSnapshot(); }
  instanceBound() { return this.runner.instanceBound(); }
  carrySections() { return this.runner.upgradeCarry(); }
  lockCarry(ledger: FdCells) {
    const s = this.runner.upgradeCarry().find((c) => c.id === LOCK_HANDOFF_SECTION_ID);
    if (!s) return null;
    // Each duplicate is written down in the same expression that makes it (fd-ledger.ts).
    const dup = (fd: number) => {
      const at = nextCell(ledger, 'the lock handoff');
      return (ledger[at] = native.dup(fd));
    };
    return lockCarryWire(s.bytes, dup, (fds) => { for (const fd of fds) closeNoted(ledger, fd); });
  }
  lockCarrySize() {
    // Rings paused, not stopped (sectionRead wants them stopped): the share's description read
    // directly. Only counted: the authority is lockCarry's, after the stop.
    const s = this.runner.device.upgradeSections?.().find((x) => x.id === LOCK_HANDOFF_SECTION_ID);
    const size = s ? s.size() : 0;
    const w = s && size > 0 ? lockCarryWire(s.read(0, size)) : null;
    return w ? { fds: w.fds.length, bytes: w.handoff.length } : { fds: 0, bytes: 0 };
  }
  upgradeCandidate(on: boolean) { this.runner.markUpgradeCandidate(on); }
  upgradeStop(pause: number[], stop: number[], stateBytes: number) { return upgradeStop(this.runner, pause, stop, stateBytes); }
  upgradeStart(offset: number, chunk: Uint8Array, rings: UpgradeRingStart[], inflight: UpgradeInflight | null, carried: CarriedSection[]) { return upgradeStart(this.runner, offset, chunk, rings, inflight, carried); }
  async warmUp(features: bigint, protocolFeatures: boolean, rings: number[], ledger: FdCells) {
    // Counted nowhere and throttled by nothing: scratch cells stand in for the device's own.
    const own = { meter, throttle: this.hooks.throttle };
    meter = this.hooks.meter = own.meter ? new RequestMeter(new SharedArrayBuffer(REQUEST_METER_BYTES), ownCpuNs) : undefined;
    this.hooks.throttle = undefined;
    try {
      return await this.runner.asNewBuild(() => warmUp(this.runner, this.runner.device.info, features, protocolFeatures, rings, ledger));
    } finally {
      meter = this.hooks.meter = own.meter;
      this.hooks.throttle = own.throttle;
    }
  }
  stateBegin() { return this.runner.stateBegin(); }
  stateRead(offset: number, size: number, section?: number) {
    return section === undefined ? this.runner.stateRead(offset, size) : this.runner.sectionRead(section, offset, size);
  }
  stateBeginLoad(section: number, size: number) { this.runner.sectionBeginLoad(section, size); }
  stateWrite(offset: number, chunk: Uint8Array, section?: number) {
    if (section === undefined) this.runner.stateWrite(offset, chunk);
    else this.runner.sectionWrite(section, offset, chunk);
  }
  stateSectionToFile(section: number, fd: number, fileOffset: number, len: number, crc: number) { return this.runner.sectionToFile(section, fd, fileOffset, len, crc); }
  stateSectionFromFile(section: number, fd: number, fileOffset: number, len: number, crc: number) { return this.runner.sectionFromFile(section, fd, fileOffset, len, crc); }
  stateFinish(section?: number) { return section === undefined ? this.runner.stateFinish() : this.runner.sectionFinish(section); }
  stateAbort(section?: number) {
    if (section === undefined) this.runner.stateAbort();
    else this.runner.sectionAbort(section);
  }
  setLogBase(fd: number, size: number, offset: number) { this.runner.setLogBase(fd, size, offset); }
  setLogAll(on: boolean) { this.runner.setLogAll(on); }
  logStatus() { return this.runner.logStatus(); }
  setInflight(fd: number, size: number, offset: number, numQueues: number, queueSize: number) { this.runner.setInflight(fd, size, offset, numQueues, queueSize); }
}

/** A plugin's linear memory in bytes (0 for a TypeScript device), for the metrics. */
function memoryOf(device: VirtioDevice): number {
  return (device as { memoryBytes?: () => number }).memoryBytes?.() ?? 0;
}

/** When this thread's own code began (ms after the main thread asked for it): the start-up's first part. */
const bootedAfterMs = Date.now() - init.epoch;

async function main(): Promise<void> {
  let device: VirtioDevice;
  const loadStart = Date.now();
  try {
    device = await loadDevice();
  } catch (e) {
    post({ type: 'init-failed', error: serializeError(e) });
    return;
  }
  const hooks: RunnerHooks = {
    ringBroken: (index, reason) => post({ type: 'ring-broken', index, reason }),
    deviceFailed: (reason) => post({ type: 'device-failed', reason }),
    inbandCall: (index) => post({ type: 'inband-call', index }),
    memoryFault: (reason) => post({ type: 'memory-fault', reason }),
    enterDevice: (phase = WatchdogPhase.call) => {
      enter(phase);
      // A notification write is the front-end's time, not the device's; the completions it
      // announces are timed now.
      if (phase === WatchdogPhase.call) meter?.callStart();
      else if (phase === WatchdogPhase.notify) meter?.flush();
    },
    leaveDevice: () => {
      leave();
      // Only a device call's end reads the device's memory (a notification's bracket has none).
      if (meter?.inCall) meter.callEnd(memoryOf(runner.device));
    },
    meter,
    throttle,
    converge,
    net,
    pollMaxNs: init.pollMaxNs,
    mappedReadsStop: init.mappedReadsStop,
  };
  const runner = new DeviceRunner(device, hooks, init.label);
  meter?.memory(memoryOf(device));
  const ops = new WorkerOperations(runner, hooks);
  // Calls are handled one at a time, in order, even those that await (a reset after a failure).
  let queue: Promise<void> = Promise.resolve();
  port.on('message', (req: MainToWorker) => {
    queue = queue.then(async () => {
      const { reply, transfer } = await serve(deviceWorkerOps, ops, req);
      try {
        port.postMessage(reply satisfies WorkerToMain, transfer);
      } catch (e) {
        // A result that cannot be cloned is a bug here, but the caller must still hear back.
        post({ type: 'reply', id: req.id, ok: false, error: serializeError(e) });
      }
    });
  });
  port.on('close', () => runner.close());
  // Where a device's start goes (bench/tenancy.ts start): the thread and its isolate, then the
  // device. The Linux thread id lets an operator find the device's thread (top -H, renice, perf).
  log.debug(`worker ready (Linux thread ${Atomics.load(slot, WATCHDOG_TID)}) ${Date.now() - init.epoch} ms after it was asked for: thread and bundle ${bootedAfterMs} ms, device built in ${Date.now() - loadStart} ms`);
  post({ type: 'ready', info: device.info });
}

main().catch((e) => {
  log.error(`worker crashed: ${errorText(e)}`);
  post({ type: 'init-failed', error: serializeError(e) });
});
