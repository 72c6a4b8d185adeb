// The device side of a live host handover (docs/upgrade.md, "Host upgrade"): stopping a
// session's rings and saving its device state in the old host process, loading the state in
// the new one. The session (dispatch.ts) drives it and builds the record (handover-record.ts);
// the wire is host/server/takeover.ts.
//
// In-flight requests never move between processes: the old host pauses its rings (no new
// pops), lets everything popped complete in its own process (ringStop settles it, as for
// GET_VRING_BASE), and only then stops them, so the indexes it hands over cover exactly what was
// answered, and the new host starts each ring where the old one stopped: nothing runs twice,
// nothing is lost. A request the device holds (an rng waiting for entropy, answered in a later
// call) lives only in the old instance: the handover is refused (busy, retry) and the rings
// resume here, as for a plugin upgrade.

import { VhostWasmError } from '../errors.ts';
import type { DeviceWorker } from '../device/worker-client.ts';
import type { RingSnapshot } from '../device/rpc.ts';
import { native } from '../native/index.ts';
import { StateTransfer } from '../migration/transfer.ts';
import { errorText, type Logger } from '../log/logger.ts';
import type { StateIdentity } from '../migration/container.ts';
import type { LiveSessionRecord, LiveStop } from './handover-record.ts';
import { resumeOld } from './upgrade.ts';

/** The session cannot move live now (requests held by the device, a migration running): retry later. */
export class LiveHandoverBusy extends VhostWasmError {
  static override readonly code = 'ERR_HANDOVER_BUSY';
  override readonly name = 'LiveHandoverBusy';
}

/**
 * Busy for a reason that passes only when the guest does something (it holds more locks than a
 * handover carries): refused at once, not tried again within the same handover, whose retries
 * would only pause the guest's rings again and again for the same answer.
 */
export class LiveHandoverOverBound extends LiveHandoverBusy {}

/** This session cannot move live at all (its state cannot be saved, the device needs a reset): the socket take-over is left. */
export class LiveHandoverRefused extends VhostWasmError {
  static override readonly code = 'ERR_LIVE_HANDOVER_REFUSED';
  override readonly name = 'LiveHandoverRefused';
}

/** A held session, described for the new host; stop() and then exactly one of resume() and letGo() follow. */
export interface LiveCapture {
  record: LiveSessionRecord;
  /** The fds the record names, in order (the session's own: not to be closed by the caller). */
  fds: number[];
  /**
   * Stops the rings (what was popped completes here) and saves the device's state; the state fd
   * stays the capture's. Throws LiveHandoverBusy (requests held: the rings run again, stop() may
   * be tried again) or another error (the rings run again).
   */
  /** lockFds: a virtio-fs guest's lock-holding descriptions (duplicates the capture owns and closes on resume or letGo: not to be closed by the caller), sent after the state memfd. */
  stop(): Promise<{ stop: LiveStop; stateFd: number; lockFds?: number[] }>;
  /** performance.now() when the rings began to stop (null before stop()). */
  stoppedAt: number | null;
  /** The new host did not take it: the rings restart where they stopped and the front-end is read again. */
  resume(): Promise<void>;
  /** The new host runs it: this process's copies are closed, nothing is said to the front-end. */
  letGo(): void;
}

export interface StoppedRings {
  /** Every ring as it was before the stop (its fds and whether it ran). */
  before: RingSnapshot[];
  /** Rings that ran and were paused. */
  paused: number[];
  /** Where each started ring stopped. */
  bases: Map<number, number>;
  resume(): Promise<void>;
}

/**
 * Pauses the rings, refuses if the device holds requests, stops them (see the top of this file).
 * `check` runs with the rings paused, before they stop: what it throws refuses the handover with
 * the rings running again, so a guest never pauses for a stop that is refused afterwards.
 */
export async function stopForHandover(worker: DeviceWorker, log: Logger, check?: () => Promise<void>): Promise<StoppedRings> {
  const before = await worker.ringSnapshot();
  const paused = before.flatMap((r, i) => (r.started && r.enabled ? [i] : []));
  const started = before.flatMap((r, i) => (r.started ? [i] : []));
  const stopped: number[] = [];
  const resume = async () => {
    // Said when rings had stopped: the guest paused for a handover that did not go ahead.
    if (stopped.length > 0) log.info(`rings ${stopped.join(', ')} restart where they stopped: the host handover did not go ahead`);
    await resumeOld(worker, before, paused, stopped, log);
  };
  try {
    const [, snap] = await Promise.all([Promise.all(paused.map((i) => worker.ringEnable(i, false))), worker.ringSnapshot()]);
    const held = snap.reduce((n, r) => n + r.held, 0);
    if (held > 0) throw new LiveHandoverBusy(`the device holds ${held} request(s) it has not answered; they cannot move to another process: retry when the device is idle`);
    // Checked with the rings paused: nothing can take a lock between this and the stop. A share's
    // locks move (host/session/lock-carry.ts) unless the new instance could not match them up.
    const bound = await worker.instanceBound();
    if (bound !== null) throw new LiveHandoverBusy(bound);
    await check?.();
    stopped.push(...started);
    const bases = await Promise.all(started.map((i) => worker.ringStop(i)));
    return { before, paused, bases: new Map(started.map((i, k) => [i, bases[k]])), resume };
  } catch (e) {
    await resume();
    throw e;
  }
}

/**
 * The device's state (rings stopped) as a state container (host/migration) in a sealed memfd of
 * its own. A memory disk's bytes are not in it: its memfd moves whole.
 */
export async function saveStateToMemfd(worker: DeviceWorker, identity: StateIdentity, log: Logger): Promise<{ fd: number; bytes: number }> {
  const fd = native.memfdCreate('vhost-wasm-handover-state', true);
  try {
    const t = StateTransfer.save(native.dup(fd), { worker, identity, log });
    const why = await t.done;
    if (why !== null) throw new LiveHandoverRefused(`the device's state could not be saved: ${why}`);
    return { fd, bytes: native.fstat(fd).size };
  } catch (e) {
    native.close(fd);
    throw e instanceof LiveHandoverRefused ? e : new LiveHandoverRefused(`the device's state could not be saved: ${errorText(e)}`);
  }
}

/** The device's identity as a state container names it (plugin name and version): asked before the rings stop, so the stop does not wait for it. */
export async function stateIdentity(worker: DeviceWorker): Promise<StateIdentity> {
  const begin = await worker.stateBegin();
  return { deviceId: worker.info.deviceId, name: begin.name, version: begin.version };
}

/** The new host: loads the old host's state container from its memfd (taken and closed here); throws the device's refusal. */
export async function loadStateFromMemfd(worker: DeviceWorker, identity: StateIdentity, fd: number, bytes: number, log: Logger): Promise<void> {
  try {
    if (native.fdKind(fd) !== 'memfd') throw new Error('the device state handed over is not a memfd');
    const size = native.fstat(fd).size;
    if (size !== bytes) throw new Error(`the device state handed over is ${size} bytes, the record says ${bytes}`);
  } catch (e) {
    native.close(fd);
    throw e;
  }
  const t = StateTransfer.load(fd, { worker, identity, log });
  const why = await t.done;
  if (why !== null) throw new Error(`the device did not take the old host's state: ${why}`);
}
