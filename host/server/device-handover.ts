// The old host's side of handing ONE device over to a new host process (takeover.ts): what it
// sends (its sockets, a memory disk, the connected session when asked for live) and what it
// does after, whichever way the handover ends. The single-device host's host-handover
// (host-control.ts) and the daemon's daemon-handover (host/daemon/daemon-handover.ts, one of
// these per device) both run it, so a device moves the same way from either.

import type { HostDevice } from './index.ts';
import { HandoverLost, type HandoverFd, type HandoverOutcome, type HandoverSource, type SessionOffer } from './takeover.ts';
import { LiveHandoverBusy, LiveHandoverOverBound, LiveHandoverRefused, type LiveCapture } from '../session/live-handover.ts';
import { HOST_VERSION } from '../version.ts';
import { errorText, type Logger } from '../log/logger.ts';

/** A session that is busy (requests held by the device, a migration) is tried this often, this far apart, before the handover is refused. */
const BUSY_ATTEMPTS = 20;
const BUSY_RETRY_MS = 25;

/** Why this device cannot be handed over at all now (null: it can). Asked before anything is held. */
export function handoverRefusal(d: HostDevice): string | null {
  // The new host could not know the disk's bytes are not to be served: it would serve them.
  const handover = d.slot.diskHandoverUnderWay;
  if (handover !== null) return `${handover}; hand the host over once it has ended`;
  const unusable = d.slot.memoryDiskUnusable;
  return unusable === null ? null : `the memory disk is not handed over: ${unusable}; LOAD a state that checks out first`;
}

export interface DeviceHandover {
  src: HandoverSource;
  /** The handover of this device failed: if this host had not let go of its session, the rings run again here; accepting resumes. */
  failed(e: unknown): Promise<void>;
  /** The new host serves it: this host's copies close (the socket file stays). The rings' stopped time (live), or null. */
  succeeded(outcome: HandoverOutcome, reason: string): Promise<number | null>;
}

/**
 * Holds `d` for a handover (no connection is accepted meanwhile: they wait in the backlog for
 * whichever host serves) and describes what goes: `extra` fds beside its listening socket (the
 * control socket), the session when `live` (format 2) and a front-end is connected. The session
 * is stopped only when the new host asks for it, its device running.
 */
export function prepareDeviceHandover(
  d: HostDevice,
  o: { live: boolean | undefined; extra: { kind: HandoverFd; fd: number }[]; log: Logger; label?: string; logPrefix?: string },
): DeviceHandover {
  const prefix = o.logPrefix ?? `${d.config.label}:`;
  const disk = d.slot.memoryDiskFd;
  d.listener.holdAccepting(true);
  let capture: LiveCapture | null = null;
  /**
   * Stops the held session's rings; requests the device holds are answered soon (an rng waiting
   * for entropy): tried again. Locks over what a handover carries are not: the guest would only
   * pause again for the same refusal.
   */
  const stopRings = async (c: LiveCapture) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await c.stop();
      } catch (e) {
        if (!(e instanceof LiveHandoverBusy) || e instanceof LiveHandoverOverBound || attempt >= BUSY_ATTEMPTS) throw e;
        if (attempt === 1) o.log.info(`${prefix} the session's rings cannot stop yet (${e.message}): trying again every ${BUSY_RETRY_MS} ms, ${BUSY_ATTEMPTS} times at most`);
        await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
      }
    }
  };
  const takeSession = async (): Promise<SessionOffer | { refused: string }> => {
    for (let attempt = 1; ; attempt++) {
      // Looked up each time: a front-end that disconnected meanwhile has nothing to move.
      const session = d.listener.currentSession;
      if (session === null) return { refused: 'the front-end disconnected' };
      try {
        const c = await session.captureForHandover();
        capture = c;
        return { record: c.record, fds: c.fds, stop: () => stopRings(c) };
      } catch (e) {
        if (e instanceof LiveHandoverBusy && attempt < BUSY_ATTEMPTS) {
          await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
          continue;
        }
        if (e instanceof LiveHandoverRefused) {
          // The fallback: the sockets move, the front-end reconnects (its inflight area resubmits).
          o.log.warn(`${prefix} the session cannot move live (${e.message}); handing over the sockets only: the front-end must reconnect`);
          return { refused: e.message };
        }
        throw new Error(`the connected session cannot be handed over now: ${errorText(e)}`);
      }
    }
  };
  const src: HandoverSource = {
    format: o.live === undefined ? 1 : 2,
    header: { pid: process.pid, hostVersion: HOST_VERSION, label: o.label ?? d.config.label, ...(disk ? { memoryDiskBytes: disk.size } : {}) },
    fds: [{ kind: 'listen', fd: d.listener.fd }, ...o.extra, ...(disk ? [{ kind: 'memory-disk' as const, fd: disk.fd }] : [])],
    ...(o.live === true && d.listener.currentSession !== null ? { session: takeSession } : {}),
  };
  return {
    src,
    async failed(e) {
      const taken = capture as LiveCapture | null;
      if (e instanceof HandoverLost) {
        // This host let go of the session ("go"): the new host may have run its rings, so this
        // one must not run them again from where it stopped. Its copies go; if the new host is
        // gone, the front-end's connection ends with it, and a front-end that reconnects is
        // served here again (its inflight area says what was in flight).
        taken?.letGo();
        d.listener.holdAccepting(false);
        o.log.error(`${prefix} the handover failed after this host let go of the session: ${e.message}; this host accepts connections again`);
        return;
      }
      await taken?.resume();
      d.listener.holdAccepting(false);
    },
    async succeeded(outcome, reason) {
      const taken = capture as LiveCapture | null;
      const pauseMs = outcome.live && taken?.stoppedAt != null ? performance.now() - taken.stoppedAt : null;
      if (outcome.live) taken?.letGo();
      // The new host accepts on the socket; without a live session our front-end reconnects to it.
      await d.listener.handOff(reason);
      return pauseMs;
    },
  };
}
