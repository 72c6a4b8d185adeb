// The daemon's plugin-upgrade for one device (docs/upgrade.md): loads the new build in fresh
// worker thread(s), checks it is the same plugin and the same device, and has the connected
// session switch to it (host/session/upgrade.ts) or, with no front-end, simply swaps workers.
// Every failure before the switch leaves the old instance serving and says why.
//
// A device with no running instance (never started and its build does not start, or its worker
// failed to start and waits to retry, or died) has no state to carry and nothing to compare
// with: the upgrade is what repairs it. The new build gets device-add's checks (precheck.ts,
// in the loader's words), then is started once, so a build that traps as it starts is refused
// here rather than at the next connection; a device that served before must stay the same
// device (its front-end reconnects to it). Then the device runs from it: at once for a device
// that starts eagerly, at its next connection for one that starts on connect; a wait after
// failed starts ends either way. Refused, nothing changes.

import type { DeviceSlot } from './device-slot.ts';
import type { BackendSession } from '../session/dispatch.ts';
import { checkCompatible, UpgradeRefused, type SwitchResult } from '../session/upgrade.ts';
import { createLogger, errorText, type Logger } from '../log/logger.ts';
import type { DeviceWorker } from '../device/worker-client.ts';
import type { DeviceSource } from '../device/rpc.ts';
import { precheckSource } from './source-precheck.ts';

export interface UpgradeOutcome {
  name: string;
  /** The build it ran; null when no instance of it ran to say (a device repaired: see above). */
  fromVersion: string | null;
  toVersion: string;
  /** A front-end was connected: its rings moved to the new instance. */
  frontEnd: boolean;
  /** Rings running when the upgrade began, now running on the new instance. */
  rings: number[];
  /** Device state bytes moved (0 without a front-end: an idle device is in its reset state). */
  stateBytes: number;
  /** How long the rings were stopped (0 without a front-end). */
  stoppedMs: number;
  /** Where stoppedMs went (host/session/upgrade.ts SwitchResult), null without a front-end. */
  phases: SwitchResult['phases'] | null;
}

/**
 * `startNow`: a device with no running instance starts from the new build at once (a device that
 * starts eagerly), not at its next connection.
 */
export async function upgradePlugin(slot: DeviceSlot, session: () => BackendSession | null, idle: boolean, pluginPath: string, startNow: boolean): Promise<UpgradeOutcome> {
  const log = createLogger(`device ${slot.opts.label}`);
  return slot.upgrade(idle, async () => {
    const source = slot.source;
    if (source.kind !== 'plugin') throw new UpgradeRefused('the device does not run a plugin (it runs a built-in module); only plugins can be upgraded');
    let old = slot.current;
    if (old === null && idle) {
      // A device that starts on its first connection and has not had one: the checks below need
      // both builds' identities, so the current build is started for them, and both end after
      // (the device stays without a worker and starts from the new build when a front-end comes).
      if (slot.neverStarted && slot.stats().failure === null) {
        try {
          old = await slot.startWorker(source);
        } catch (e) {
          log.info(`upgrade: the current build does not start (${errorText(e)}): nothing to compare the new one with`);
        }
        if (old !== null) {
          try {
            return await switchTo(slot, old, true, session, idle, pluginPath, log);
          } finally {
            void old.terminate();
          }
        }
      }
      return await repair(slot, pluginPath, startNow, log);
    }
    if (old === null) throw new UpgradeRefused(`the device's worker is not running (${slot.stats().failure ?? 'not started'}) and a front-end is connecting; retry in a moment`);
    return await switchTo(slot, old, false, session, idle, pluginPath, log);
  });
}

/** A device with no running instance runs from `pluginPath` from now on, once it passed device-add's checks and started (see the head). */
async function repair(slot: DeviceSlot, pluginPath: string, startNow: boolean, log: Logger): Promise<UpgradeOutcome> {
  const next = { ...(slot.source as Extract<DeviceSource, { kind: 'plugin' }>), path: pluginPath };
  try {
    await precheckSource(next);
  } catch (e) {
    throw new UpgradeRefused(`the new plugin would not load: ${errorText(e)}`);
  }
  let fresh;
  try {
    fresh = await slot.startWorker(next);
  } catch (e) {
    throw new UpgradeRefused(`the new plugin did not start: ${errorText(e)}`);
  }
  let to;
  try {
    to = await fresh.stateBegin();
    const served = slot.lastInfo;
    if (served !== null) checkCompatible(served, fresh.info, null);
  } catch (e) {
    await fresh.terminate();
    throw e instanceof UpgradeRefused ? e : new UpgradeRefused(`the new plugin could not be checked: ${errorText(e)}`);
  }
  const was = slot.stats().failure;
  if (startNow) {
    slot.replaceWorker(fresh, next);
  } else {
    slot.replaceSource(next);
    void fresh.terminate();
  }
  log.info(
    `plugin replaced (no instance was running${was ? `: ${was}` : ''}): ${to.name} ${to.version} from ${pluginPath}; ` +
      (startNow ? 'serving from it now' : 'it starts from it when a front-end connects'),
  );
  return { name: to.name, fromVersion: null, toVersion: to.version, frontEnd: false, rings: [], stateBytes: 0, stoppedMs: 0, phases: null };
}

/** Loads `pluginPath` beside `old`, checks it is the same plugin and device, and makes it the device's (unstarted: its source only). */
async function switchTo(
  slot: DeviceSlot,
  old: DeviceWorker,
  unstarted: boolean,
  session: () => BackendSession | null,
  idle: boolean,
  pluginPath: string,
  log: Logger,
): Promise<UpgradeOutcome> {
  const source = slot.source as Extract<DeviceSource, { kind: 'plugin' }>;
  const next = { ...source, path: pluginPath };
  let fresh;
  log.debug(`upgrade: starting ${pluginPath}`);
  try {
    fresh = await slot.startWorker(next);
  } catch (e) {
    throw new UpgradeRefused(`the new plugin did not load: ${errorText(e)}`);
  }
  let from, to;
  try {
    [from, to] = await Promise.all([old.stateBegin(), fresh.stateBegin()]);
    if (to.name !== from.name) throw new UpgradeRefused(`the new plugin is "${to.name}", not "${from.name}": an upgrade keeps the plugin and changes its version`);
    checkCompatible(old.info, fresh.info, null);
  } catch (e) {
    await fresh.terminate();
    throw e instanceof UpgradeRefused ? e : new UpgradeRefused(`the new plugin could not be checked: ${errorText(e)}`);
  }
  log.debug('upgrade: new instance loaded and checked');
  const s = session();
  const base = { name: to.name, fromVersion: from.version, toVersion: to.version };
  if (!idle && s === null) {
    // A front-end was being connected when the upgrade began and is gone again, or not yet there.
    await fresh.terminate();
    throw new UpgradeRefused('a front-end is connecting or disconnecting; retry in a moment');
  }
  if (unstarted) {
    slot.replaceSource(next);
    void fresh.terminate();
    log.info(`plugin upgraded (device not started yet: it starts from the new build when a front-end connects): ${to.name} ${from.version} -> ${to.version} from ${pluginPath}`);
    return { ...base, frontEnd: false, rings: [], stateBytes: 0, stoppedMs: 0, phases: null };
  }
  if (idle || s === null) {
    slot.replaceWorker(fresh, next);
    void old.terminate();
    log.info(`plugin upgraded (no front-end connected): ${to.name} ${from.version} -> ${to.version} from ${pluginPath}`);
    return { ...base, frontEnd: false, rings: [], stateBytes: 0, stoppedMs: 0, phases: null };
  }
  const r = await s.upgrade(fresh, (w) => slot.replaceWorker(w, next));
  log.info(`plugin upgraded: ${to.name} ${from.version} -> ${to.version} from ${pluginPath}`);
  return { ...base, frontEnd: true, ...r };
}
