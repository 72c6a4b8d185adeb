// Entry point of a device worker: one per device, running that device's rings and its device
// instance (a TypeScript module or a WebAssembly plugin). The control socket stays on the main
// thread; this thread only ever blocks inside device code (building the device included) or a
// notification write, where the main thread's watchdog can see it (the shared `watchdog` slot)
// and terminate us.

import { parentPort, workerData } from 'node:worker_threads';
import { DeviceRunner } from './runner.ts';
import type { VirtioDevice, DeviceFactory } from './device.ts';
import { WatchdogPhase, watchdogWord, type MainToWorker, type WorkerCall, type WorkerInit, type WorkerToMain } from './rpc.ts';
import { createLogger, errorText, setLogLevel } from '../log/logger.ts';

const init = workerData as WorkerInit;
const port = parentPort!;
setLogLevel(init.logLevel);
const log = createLogger(`device ${init.label}`);
const slot = new Int32Array(init.watchdog);

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
      return underLoadDeadline(() => factory(src.options ?? {}));
    }
    const { loadPluginDevice } = await import('../plugin/device-source.ts');
    return await loadPluginDevice(src.path, src.options ?? {}, init.label, underLoadDeadline);
  } finally {
    leave();
  }
}

function dispatch(runner: DeviceRunner, c: WorkerCall): unknown {
  switch (c.op) {
    case 'readConfig': return runner.readConfig(c.offset, c.size);
    case 'writeConfig': return runner.writeConfig(c.offset, c.data);
    case 'setFeatures': return runner.setFeatures(c.features, c.protocolFeatures);
    case 'setMemTable': return runner.setMemTable(c.regions);
    case 'addMemRegion': return runner.addMemRegion(c.region);
    case 'removeMemRegion': return runner.removeMemRegion(c);
    case 'ringNum': return runner.ringNum(c.index, c.num);
    case 'ringAddr': return runner.ringAddr(c.index, c.addr);
    case 'ringBase': return runner.ringBase(c.index, c.base);
    case 'ringKick': return runner.ringKick(c.index, c.fd);
    case 'ringCall': return runner.ringCall(c.index, c.fd);
    case 'ringErr': return runner.ringErr(c.index, c.fd);
    case 'ringEnable': return runner.ringEnable(c.index, c.enable);
    case 'ringInbandKick': return runner.ringInbandKick(c.index);
    case 'ringStop': return runner.ringStop(c.index);
    case 'reset': return runner.reset();
    case 'status': return runner.status();
    case 'stateBegin': return runner.stateBegin();
    case 'stateRead': return c.section === undefined ? runner.stateRead(c.offset, c.size) : runner.sectionRead(c.section, c.offset, c.size);
    case 'stateBeginLoad': return runner.sectionBeginLoad(c.section, c.size);
    case 'stateWrite': return c.section === undefined ? runner.stateWrite(c.offset, c.chunk) : runner.sectionWrite(c.section, c.offset, c.chunk);
    case 'stateFinish': return c.section === undefined ? runner.stateFinish() : runner.sectionFinish(c.section);
    case 'stateAbort': return c.section === undefined ? runner.stateAbort() : runner.sectionAbort(c.section);
    case 'setLogBase': return runner.setLogBase(c.fd, c.size, c.offset);
    case 'setLogAll': return runner.setLogAll(c.on);
    case 'logStatus': return runner.logStatus();
  }
}

async function main(): Promise<void> {
  let device: VirtioDevice;
  try {
    device = await loadDevice();
  } catch (e) {
    post({ type: 'init-failed', error: errorText(e) });
    return;
  }
  const runner = new DeviceRunner(
    device,
    {
      ringBroken: (index, reason) => post({ type: 'ring-broken', index, reason }),
      deviceFailed: (reason) => post({ type: 'device-failed', reason }),
      inbandCall: (index) => post({ type: 'inband-call', index }),
      memoryFault: (reason) => post({ type: 'memory-fault', reason }),
      enterDevice: (phase = WatchdogPhase.call) => enter(phase),
      leaveDevice: leave,
    },
    init.label,
  );
  // Messages are handled in order; only a reset after a failure awaits (see renew below).
  let queue: Promise<void> = Promise.resolve();
  port.on('message', (m: MainToWorker) => {
    queue = queue.then(() => handle(m));
  });
  /**
   * RESET_DEVICE after the device failed brings a fresh instance from the same source: the
   * failed one may be unusable (a plugin that trapped or broke the contract is never called
   * again, its memory may be half-updated), and a reset means "as just created".
   */
  const renew = async (): Promise<void> => {
    runner.replaceDevice(await loadDevice());
    // Why it failed was logged when it failed: plugin text is logged once.
    log.info('device replaced by a fresh instance on reset after its failure');
  };
  const handle = async (m: MainToWorker): Promise<void> => {
    try {
      if (m.call.op === 'reset' && runner.status().failed !== null) await renew();
      const value = dispatch(runner, m.call);
      if (m.call.op === 'stateRead') {
        // State chunks are fresh buffers (see DeviceRunner.stateRead): move, do not copy.
        const r = value as { bytes: Uint8Array };
        port.postMessage({ type: 'reply', id: m.id, ok: true, value } satisfies WorkerToMain, [r.bytes.buffer as ArrayBuffer]);
      } else {
        post({ type: 'reply', id: m.id, ok: true, value });
      }
    } catch (e) {
      post({ type: 'reply', id: m.id, ok: false, error: errorText(e) });
    }
  };
  port.on('close', () => runner.close());
  post({ type: 'ready', info: device.info });
}

main().catch((e) => {
  log.error(`worker crashed: ${errorText(e)}`);
  post({ type: 'init-failed', error: errorText(e) });
});
