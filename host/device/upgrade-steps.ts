// The two calls a live plugin upgrade makes while the rings stand still (host/session/upgrade.ts),
// each run inside one worker thread as one call: the old instance pauses, is checked for held
// requests, stops and saves; the new one loads and restarts. One call each instead of one per
// step, because on a busy machine every round trip to a thread pays its wake-up latency, and
// the guest waits for all of them. The order inside each is the order the steps had as
// separate calls; a step that must not run after a refusal does not.

import type { DeviceRunner } from './runner.ts';
import type { CarriedSection, StateReadResult } from './rpc.ts';
import { errorText } from '../log/logger.ts';

/** What the old instance answers: the requests it holds (then nothing was stopped), or where its rings stopped and its state's first bytes. */
export type UpgradeStopResult =
  | { held: number; bound: string | null; bases: null; state: null; carried: null }
  | { held: 0; bound: null; bases: number[]; state: StateReadResult; carried: CarriedSection[] };

/** One ring to restart on the new instance, as the old one left it. */
export interface UpgradeRingStart {
  index: number;
  /** SET_VRING_BASE's value (where the old instance stopped), or null when it never had one. */
  base: number | null;
  enabled: boolean;
  /** -1: no kick fd yet (the ring is not started); null: in-band kicks. */
  kickFd: number | null;
}

/** The inflight area the session keeps (SET_INFLIGHT_FD), mapped again by the new instance. */
export interface UpgradeInflight {
  fd: number;
  size: number;
  offset: number;
  numQueues: number;
  queueSize: number;
}

/**
 * Old instance: no new pops on `pause`; if it holds requests, stop there (they cannot move,
 * and the rings stay as they are for the caller to re-enable); else stop `stop` (GET_VRING_BASE)
 * and read the first `stateBytes` of its state.
 */
export function upgradeStop(runner: DeviceRunner, pause: number[], stop: number[], stateBytes: number): UpgradeStopResult {
  for (const i of pause) runner.ringEnable(i, false);
  const held = runner.ringSnapshot().reduce((n, r) => n + r.held, 0);
  if (held > 0) return { held, bound: null, bases: null, state: null, carried: null };
  // What this instance holds for the guest and cannot hand to the new one (a share's locks it
  // could not match up: host/fs/lock-handoff.ts): not stopped either.
  const bound = runner.instanceBound();
  if (bound !== null) return { held: 0, bound, bases: null, state: null, carried: null };
  const bases = stop.map((i) => runner.ringStop(i));
  // Host-held state that moves only this way (the share's locks), read after the stop.
  return { held: 0, bound: null, bases, state: runner.stateRead(0, stateBytes), carried: runner.upgradeCarry() };
}

/**
 * New instance: the last (or only) chunk of the old instance's state at `offset`, then
 * finish-load; answers the plugin's refusal without starting anything. Accepted: the inflight
 * area and the rings, each at its base, enabled and watched (which drains what waits on it).
 */
export function upgradeStart(runner: DeviceRunner, offset: number, chunk: Uint8Array, rings: UpgradeRingStart[], inflight: UpgradeInflight | null, carried: CarriedSection[]): string | null {
  let refusal: string | null;
  try {
    refusal = runner.asNewBuild(() => {
      runner.stateWrite(offset, chunk);
      // After the finish-load (the share's locks match the files it reopened), before the rings run.
      return runner.stateFinish() ?? runner.upgradeTake(carried);
    });
  } catch (e) {
    throw new Error(`it did not take the state: ${errorText(e)}`);
  }
  if (refusal !== null) return refusal;
  if (inflight !== null) runner.setInflight(inflight.fd, inflight.size, inflight.offset, inflight.numQueues, inflight.queueSize);
  for (const r of rings) {
    if (r.base !== null) runner.ringBase(r.index, r.base);
    if (r.enabled) runner.ringEnable(r.index, true);
    if (r.kickFd !== -1) runner.ringKick(r.index, r.kickFd);
  }
  return null;
}
