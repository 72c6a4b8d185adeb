// Live plugin upgrade (the daemon's plugin-upgrade, docs/upgrade.md): a device's worker is
// replaced by one running another build of the same plugin while a front-end is connected.
// The new worker is started and checked before anything stops; then it is given what the
// session gave the old one (features, memory table, dirty log, ring settings), the old one's
// rings are paused and stopped, its state moves across (get-state -> set-state/finish-load),
// and the rings restart on the new worker at the indexes the old one stopped at, on the same
// kick/call/err fds. Until the new worker's rings run, the old instance is intact (its state
// was only read): any failure restarts its rings where they stopped and the new one is ended.
//
// Held requests: a request the device holds (answered in a later call) lives only in the old
// instance; it cannot be handed to the new one, and stopping the ring would leave the guest
// waiting for it forever. An upgrade that finds one after pausing the rings is refused and
// the rings resume on the old instance.

import { VhostWasmError } from '../errors.ts';
import type { DeviceWorker } from '../device/worker-client.ts';
import type { DeviceInfo } from '../device/device.ts';
import type { RegionMsg, RingSnapshot } from '../device/rpc.ts';
import { DEVICE_FEATURE_MASK } from '../device/features.ts';
import { DeviceStateSection, STATE_CHUNK } from '../migration/transfer.ts';
import { errorText, type Logger } from '../log/logger.ts';

/** What the session gave its worker (and keeps), for the new worker to be given the same. */
export interface SessionSetup {
  /** SET_FEATURES's acked features, or null before any. */
  features: bigint | null;
  protocolFeatures: boolean;
  logging: boolean;
  memory: RegionMsg[];
  logArea: { fd: number; size: number; offset: number } | null;
  inflightArea: { fd: number; size: number; offset: number; numQueues: number; queueSize: number } | null;
}

/** An upgrade that did not happen: the old instance serves on. `why` is for the operator. */
/** A plugin upgrade that was not done; the old instance serves on, unchanged. */
export class UpgradeRefused extends VhostWasmError {
  static override readonly code = 'ERR_UPGRADE_REFUSED';
  override readonly name = 'UpgradeRefused';
}

export interface SwitchResult {
  /** From pausing the old instance's rings to the last ring running on the new one. */
  stoppedMs: number;
  /** Device state bytes moved. */
  stateBytes: number;
  /** Rings that were running and now run on the new instance. */
  rings: number[];
  /** Where stoppedMs went: pausing (and the held check), stopping + moving the state, restarting on the new instance. */
  phases: { pauseMs: number; stopAndStateMs: number; startMs: number };
}

/** Whether the new build can take over this device as the front-end negotiated it. */
export function checkCompatible(old: DeviceInfo, fresh: DeviceInfo, acked: bigint | null): void {
  const diff: string[] = [];
  if (fresh.deviceId !== old.deviceId) diff.push(`virtio device id ${fresh.deviceId}, not ${old.deviceId}`);
  if (fresh.numQueues !== old.numQueues) diff.push(`${fresh.numQueues} queue(s), not ${old.numQueues}`);
  if (fresh.configSize !== old.configSize) diff.push(`a ${fresh.configSize}-byte config space, not ${old.configSize}`);
  if (fresh.maxQueueSize < old.maxQueueSize) diff.push(`rings of up to ${fresh.maxQueueSize}, not ${old.maxQueueSize}`);
  if (acked !== null) {
    const lost = acked & DEVICE_FEATURE_MASK & ~fresh.features;
    if (lost !== 0n) diff.push(`no longer offers feature bits 0x${lost.toString(16)} the front-end acked`);
  }
  if (diff.length > 0) throw new UpgradeRefused(`the new plugin describes another device: ${diff.join('; ')}`);
}

/**
 * The device's own bytes from one worker into another (no container: same process, and the
 * plugin name was checked). `pipelined`: both run in one thread each, so a state that comes
 * in one read goes in with its finish-load in one round trip.
 */
async function moveState(from: DeviceWorker, to: DeviceWorker, pipelined: boolean): Promise<number> {
  const src = new DeviceStateSection(from);
  const size = await src.size();
  let refusal: string | null;
  if (pipelined && size <= STATE_CHUNK) {
    const bytes = await src.read(0, size);
    try {
      [, refusal] = await Promise.all([to.stateWrite(0, bytes), to.stateFinish()]);
    } catch (e) {
      throw new UpgradeRefused(`the new plugin did not take the state: ${errorText(e)}`);
    }
  } else {
    const dst = new DeviceStateSection(to);
    await dst.beginLoad(size);
    try {
      for (let off = 0; off < size; ) {
        const chunk = await src.read(off, Math.min(STATE_CHUNK, size - off));
        // Its length first: write() moves the chunk's buffer to the new worker (detaching it here).
        const n = chunk.length;
        if (n === 0) throw new Error(`the old instance returned no state bytes at offset ${off} of ${size}`);
        await dst.write(off, chunk);
        off += n;
      }
    } catch (e) {
      await dst.abort().catch(() => {});
      throw new UpgradeRefused(`moving the device state failed: ${errorText(e)}`);
    }
    refusal = await dst.finish();
  }
  if (refusal !== null) throw new UpgradeRefused(`the new plugin refused the old instance's state: ${refusal}`);
  return size;
}

/**
 * Replaces `old` by `fresh` under a connected front-end (see the top of this file). The caller
 * holds the session's message loop (no front-end request runs meanwhile). On success the
 * caller adopts `fresh` and ends `old`; on failure `fresh` is ended here and `old` serves.
 */
export async function switchWorker(old: DeviceWorker, fresh: DeviceWorker, setup: SessionSetup, log: Logger): Promise<SwitchResult> {
  const before = await old.ringSnapshot();
  try {
    checkCompatible(old.info, fresh.info, setup.features);
    for (const [i, r] of before.entries()) {
      if (r.num > fresh.info.maxQueueSize) throw new UpgradeRefused(`ring ${i} has ${r.num} entries; the new plugin allows ${fresh.info.maxQueueSize}`);
    }
    // Everything that does not start a ring goes to the new worker while the old one serves.
    if (setup.features !== null) await fresh.setFeatures(setup.features, setup.protocolFeatures);
    if (setup.memory.length > 0) await fresh.setMemTable(setup.memory);
    if (setup.logArea !== null) await fresh.setLogBase(setup.logArea.fd, setup.logArea.size, setup.logArea.offset);
    await fresh.setLogAll(setup.logging);
    for (const [i, r] of before.entries()) {
      if (r.num > 0) await fresh.ringNum(i, r.num);
      if (r.addr !== null) await fresh.ringAddr(i, r.addr);
      if (r.callFd !== null) await fresh.ringCall(i, r.callFd);
      if (r.errFd !== null) await fresh.ringErr(i, r.errFd);
    }
  } catch (e) {
    await fresh.terminate();
    throw e instanceof UpgradeRefused ? e : new UpgradeRefused(`the new plugin refused the device's settings: ${errorText(e)}`);
  }

  const t0 = performance.now();
  const paused = before.flatMap((r, i) => (r.started && r.enabled ? [i] : []));
  const started = before.flatMap((r, i) => (r.started ? [i] : []));
  // Calls to one worker thread run in the order sent: while the rings are stopped, calls that
  // need no answer in between are sent together (one round trip, not one each). Across queue
  // threads there is no such order, so a device on several threads waits at each step.
  const oneThread = old.threadCount === 1 && fresh.threadCount === 1;
  const stopped: number[] = [];
  try {
    // No new pops from here; what is popped completes (ringStop settles it) or is held.
    const [, snap] = await Promise.all([Promise.all(paused.map((i) => old.ringEnable(i, false))), old.ringSnapshot()]);
    const t1 = performance.now();
    const held = snap.reduce((n, r) => n + r.held, 0);
    if (held > 0) throw new UpgradeRefused(`the device holds ${held} request(s) it has not answered; they cannot move to another instance: retry when the device is idle`);
    stopped.push(...started);
    const stops = Promise.all(started.map((i) => old.ringStop(i)));
    if (!oneThread) await stops;
    const [bases, stateBytes] = await Promise.all([stops, moveState(old, fresh, oneThread)]);
    const t2 = performance.now();
    const base = new Map(started.map((i, k) => [i, bases[k]]));
    const area = setup.inflightArea;
    const calls: Promise<unknown>[] = [];
    const looks: Promise<unknown>[] = [];
    if (area !== null) {
      const p = fresh.setInflight(area.fd, area.size, area.offset, area.numQueues, area.queueSize);
      if (oneThread) calls.push(p);
      else await p;
    }
    for (const [i, r] of before.entries()) {
      const b = base.get(i) ?? r.base;
      if (b !== null) calls.push(fresh.ringBase(i, b));
      if (r.enabled) calls.push(fresh.ringEnable(i, true));
      if (r.kickFd !== -1) calls.push(fresh.ringKick(i, r.kickFd));
      // A request the driver made available while the ring was paused may have come without a
      // kick (event index: it saw the old instance's avail_event): look at the ring once.
      if (paused.includes(i)) looks.push(fresh.ringInbandKick(i));
    }
    await Promise.all(calls);
    // The rings run (their kick fds are watched): the stop ends here. What the looks find is
    // the backlog of the pause, served by the new instance.
    const t3 = performance.now();
    await Promise.all(looks);
    return { stoppedMs: t3 - t0, stateBytes, rings: paused, phases: { pauseMs: t1 - t0, stopAndStateMs: t2 - t1, startMs: t3 - t2 } };
  } catch (e) {
    await fresh.terminate();
    await resumeOld(old, before, paused, stopped, log);
    throw e instanceof UpgradeRefused ? e : new UpgradeRefused(`the new plugin failed while taking over: ${errorText(e)}`);
  }
}

/** The old instance serves again: stopped rings restart where they stopped, paused ones are re-enabled. */
export async function resumeOld(old: DeviceWorker, before: RingSnapshot[], paused: number[], stopped: number[], log: Logger): Promise<void> {
  try {
    for (const i of paused) await old.ringEnable(i, true);
    for (const i of stopped) {
      const k = before[i].kickFd;
      // ringStop kept the base; the kick fd starts the ring again from it.
      if (k !== -1) await old.ringKick(i, k);
      if (paused.includes(i)) await old.ringInbandKick(i);
    }
  } catch (e) {
    // The old instance cannot take its rings back: the device needs a reset (the worker fails it).
    log.error(`upgrade abandoned, and the old instance could not restart its rings: ${errorText(e)}`);
    await old.halt(`rings could not restart after an abandoned upgrade: ${errorText(e)}`).catch(() => {});
  }
}
