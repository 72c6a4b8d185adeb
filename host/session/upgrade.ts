// Live plugin upgrade (the daemon's plugin-upgrade, docs/upgrade.md): a device's worker is
// replaced by one running another build of the same plugin while a front-end is connected.
// The new worker is started, checked and warmed up (its ring machinery run once on a scratch
// ring, host/device/warm-up.ts) before anything stops; then it is given what the
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
import type { UpgradeRingStart } from '../device/upgrade-steps.ts';
import { DEVICE_FEATURE_MASK } from '../device/features.ts';
import { DeviceStateSection, STATE_CHUNK } from '../migration/transfer.ts';
import { errorText, type Logger } from '../log/logger.ts';
import { describeWarmUp } from '../device/warm-up.ts';

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
  /**
   * Where stoppedMs went. A device on one thread (upgrade-steps.ts): pauseMs is the old
   * instance's one call (pause, held check, stop, first state chunk), stopAndStateMs what did not
   * fit that chunk, startMs the new instance's one call (load the state, restart the rings). On
   * several queue threads: pausing and the held check; stopping and moving the state; restarting.
   */
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
 * The device's own bytes from one worker into another, chunk by chunk (no container: same
 * process, and the plugin name was checked). For a device on several queue threads; on one
 * thread the state moves inside the two calls of the stop (stopAndStartOneThread).
 */
async function moveState(from: DeviceWorker, to: DeviceWorker): Promise<number> {
  const src = new DeviceStateSection(from);
  const size = await src.size();
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
  const refusal = await dst.finish();
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
    // From here until one of the guest's rings runs on it, a failure of the new build is its
    // own: its worker logs it so, not as the device halted (runner.ts fail).
    await fresh.upgradeCandidate(true);
    checkCompatible(old.info, fresh.info, setup.features);
    for (const [i, r] of before.entries()) {
      if (r.num > fresh.info.maxQueueSize) throw new UpgradeRefused(`ring ${i} has ${r.num} entries; the new plugin allows ${fresh.info.maxQueueSize}`);
    }
    // Everything that does not start a ring goes to the new worker while the old one serves:
    // first its ring machinery is run once (warm-up.ts), so that the restart after the stop
    // runs warm code instead of compiling it.
    const running = before.flatMap((r, i) => (r.started ? [i] : []));
    if (setup.features !== null && running.length > 0) {
      try {
        log.debug(describeWarmUp(await fresh.warmUp(setup.features, setup.protocolFeatures, running)));
      } catch (e) {
        throw new UpgradeRefused(`the new plugin failed its warm-up on a scratch ring (the old instance serves on): ${errorText(e)}`);
      }
    }
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
    const refused = e instanceof UpgradeRefused ? e : new UpgradeRefused(`the new plugin refused the device's settings: ${errorText(e)}`);
    log.warn(`upgrade refused: ${refused.message}; no ring had stopped, the old build serves on`);
    throw refused;
  }

  const paused = before.flatMap((r, i) => (r.started && r.enabled ? [i] : []));
  const started = before.flatMap((r, i) => (r.started ? [i] : []));
  // What restarts on the new instance: every ring as the old one had it, at the base it stopped at.
  const restart = (bases: Map<number, number>): UpgradeRingStart[] => before.map((r, i) => ({ index: i, base: bases.get(i) ?? r.base, enabled: r.enabled, kickFd: r.kickFd }));
  const stopped: number[] = [];
  const t0 = performance.now();
  try {
    // One thread on each side: one call to each (upgrade-steps.ts), since every round trip
    // while the rings stand still is the guest's wait. Across queue threads calls have no
    // common order, so a device on several threads takes the steps one by one.
    const r = old.threadCount === 1 && fresh.threadCount === 1
      ? await stopAndStartOneThread(old, fresh, paused, started, restart, setup.inflightArea, stopped)
      : await stopAndStartStepwise(old, fresh, paused, started, restart, setup.inflightArea, stopped);
    // The rings run (their kick fds are watched): the stop ended at t3. What the looks find is
    // the backlog of the pause, served by the new instance.
    await r.looks;
    // Committed: the old instance is about to end; what fails from now on is the device's. (A
    // worker gone by now is the device's failure, reported by its exit: not undone here.)
    await fresh.upgradeCandidate(false).catch(() => {});
    return { stoppedMs: r.t3 - t0, stateBytes: r.stateBytes, rings: paused, phases: { pauseMs: r.t1 - t0, stopAndStateMs: r.t2 - r.t1, startMs: r.t3 - r.t2 } };
  } catch (e) {
    await fresh.terminate();
    const resumed = await resumeOld(old, before, paused, stopped, log);
    const refused = e instanceof UpgradeRefused ? e : new UpgradeRefused(`the new plugin failed while taking over: ${errorText(e)}`);
    if (resumed) {
      const rings = stopped.length > 0 ? stopped : paused;
      log.warn(`upgrade abandoned: ${refused.message}; ${rings.length > 0 ? `ring(s) ${rings.join(', ')} resumed on the old build where they stopped` : 'no ring had stopped, the old build serves on'}`);
    }
    throw refused;
  }
}

/** Where a switch's stop went (SwitchResult.phases), and the looks at the paused rings still under way. */
interface StopAndStart {
  t1: number;
  t2: number;
  t3: number;
  stateBytes: number;
  looks: Promise<unknown>;
}

const heldRefusal = (held: number) =>
  new UpgradeRefused(`the device holds ${held} request(s) it has not answered; they cannot move to another instance: retry when the device is idle`);

/**
 * A request the driver made available while a ring was paused may have come without a kick
 * (event index: it saw the old instance's avail_event): the new instance looks at each once.
 */
function lookAt(fresh: DeviceWorker, paused: number[]): Promise<unknown> {
  const looks = Promise.all(paused.map((i) => fresh.ringInbandKick(i)));
  looks.catch(() => {}); // awaited after the start succeeded; after a failure fresh is ended anyway
  return looks;
}

/**
 * Both instances on one thread: the old one pauses, is checked, stops and saves in one call
 * (t1); a state larger than one chunk moves in chunks meanwhile (t2); the new one loads the
 * last chunk, finishes the load and restarts the rings in one call (t3).
 */
async function stopAndStartOneThread(
  old: DeviceWorker,
  fresh: DeviceWorker,
  paused: number[],
  started: number[],
  restart: (bases: Map<number, number>) => UpgradeRingStart[],
  area: SessionSetup['inflightArea'],
  stopped: number[],
): Promise<StopAndStart> {
  // Until the answer says otherwise, the rings may have stopped (a failure undoes that).
  stopped.push(...started);
  const s = await old.upgradeStop(paused, started, STATE_CHUNK);
  const t1 = performance.now();
  if (s.state === null) {
    stopped.length = 0;
    throw s.bound !== null ? new UpgradeRefused(s.bound) : heldRefusal(s.held);
  }
  const size = s.state.bytes.length + s.state.remaining;
  let last = { offset: 0, bytes: s.state.bytes };
  try {
    for (let off = last.bytes.length; off < size; ) {
      const next = await old.stateRead(off, Math.min(STATE_CHUNK, size - off));
      if (next.bytes.length === 0) throw new Error(`the old instance returned no state bytes at offset ${off} of ${size}`);
      if (off + next.bytes.length + next.remaining !== size) throw new Error(`the device's state changed size during the save: ${size} bytes, now ${off + next.bytes.length + next.remaining}`);
      await fresh.stateWrite(last.offset, last.bytes);
      last = { offset: off, bytes: next.bytes };
      off += next.bytes.length;
    }
  } catch (e) {
    throw new UpgradeRefused(`moving the device state failed: ${errorText(e)}`);
  }
  const t2 = performance.now();
  const bases = new Map(started.map((i, k) => [i, s.bases[k]]));
  const start = fresh.upgradeStart(last.offset, last.bytes, restart(bases), area, s.carried);
  const looks = lookAt(fresh, paused);
  const refusal = await start;
  if (refusal !== null) throw new UpgradeRefused(`the new plugin refused the old instance's state: ${refusal}`);
  return { t1, t2, t3: performance.now(), stateBytes: size, looks };
}

/** A device on several queue threads: each step waits for every thread before the next. */
async function stopAndStartStepwise(
  old: DeviceWorker,
  fresh: DeviceWorker,
  paused: number[],
  started: number[],
  restart: (bases: Map<number, number>) => UpgradeRingStart[],
  area: SessionSetup['inflightArea'],
  stopped: number[],
): Promise<StopAndStart> {
  // No new pops from here; what is popped completes (ringStop settles it) or is held.
  const [, snap] = await Promise.all([Promise.all(paused.map((i) => old.ringEnable(i, false))), old.ringSnapshot()]);
  const t1 = performance.now();
  const held = snap.reduce((n, r) => n + r.held, 0);
  if (held > 0) throw heldRefusal(held);
  const bound = (await old.status()).processBound;
  if (bound !== null) throw new UpgradeRefused(bound);
  stopped.push(...started);
  const bases = await Promise.all(started.map((i) => old.ringStop(i)));
  const stateBytes = await moveState(old, fresh);
  const t2 = performance.now();
  if (area !== null) await fresh.setInflight(area.fd, area.size, area.offset, area.numQueues, area.queueSize);
  const calls: Promise<unknown>[] = [];
  for (const r of restart(new Map(started.map((i, k) => [i, bases[k]])))) {
    if (r.base !== null) calls.push(fresh.ringBase(r.index, r.base));
    if (r.enabled) calls.push(fresh.ringEnable(r.index, true));
    if (r.kickFd !== -1) calls.push(fresh.ringKick(r.index, r.kickFd));
  }
  await Promise.all(calls);
  return { t1, t2, t3: performance.now(), stateBytes, looks: lookAt(fresh, paused) };
}

/**
 * The old instance serves again: stopped rings restart where they stopped, paused ones are
 * re-enabled. False when it could not (logged, and the device fails).
 */
export async function resumeOld(old: DeviceWorker, before: RingSnapshot[], paused: number[], stopped: number[], log: Logger): Promise<boolean> {
  try {
    for (const i of paused) await old.ringEnable(i, true);
    for (const i of stopped) {
      const k = before[i].kickFd;
      // ringStop kept the base; the kick fd starts the ring again from it.
      if (k !== -1) await old.ringKick(i, k);
      if (paused.includes(i)) await old.ringInbandKick(i);
    }
    return true;
  } catch (e) {
    // The old instance cannot take its rings back: the device needs a reset (the worker fails it).
    log.error(`upgrade abandoned, and the old instance could not restart its rings: ${errorText(e)}`);
    await old.halt(`rings could not restart after an abandoned upgrade: ${errorText(e)}`).catch(() => {});
    return false;
  }
}
