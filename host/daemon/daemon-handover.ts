// Host upgrade of the daemon (docs/upgrade.md, "Upgrading the daemon"): `vhost-wasm serve
// --config FILE --take-over` (take-over.ts) asks this daemon, over its management socket, for
// `daemon-handover`; this is the old daemon's side.
//
// Why the management socket for the ask and a private socket for the rest: the management
// socket is the one endpoint a new daemon finds from the config file, and it admits only this
// uid (mode 0600 and SO_PEERCRED, control-server.ts); but its connections are JSON lines on
// node sockets, which carry no fds. So, as the single-device host does (takeover.ts), the new
// daemon listens on a private socket (`to`) and this daemon connects to it (its listener must
// be the pid that asked):
//   1. one connection for the daemon: a framed message (handover-wire.ts) listing every device
//      (id, socket, memory disk, connected or not, its limits now) with the management socket's
//      fd; the new daemon checks the list against its config and answers "devices" or why not;
//   2. one connection per device, the single host's exchange unchanged (takeover.ts
//      sendHandover with device-handover.ts: its sockets, memory disk, and live session record).
// The new daemon decides all-or-nothing (see take-over.ts): it lets any session start only once
// every device is ready, and says "serving" for all of them at the end; anything it refuses, or
// its death or silence (the bounded waits of takeover.ts), gives every device back to this
// daemon, which then serves on. It exits once every device is served by the new daemon.

import { isAbsolute } from 'node:path';
import { native } from '../native/index.ts';
import { HOST_VERSION } from '../version.ts';
import { createLogger, errorText } from '../log/logger.ts';
import { HandoverRefused, sendHandover } from '../server/takeover.ts';
import { LineChannel, sendFramed } from '../server/handover-wire.ts';
import { handoverRefusal, prepareDeviceHandover } from '../server/device-handover.ts';
import { HANDOVER_DEADLINE_MS } from '../server/takeover.ts';
import type { ControlServer } from './control-server.ts';
import type { Daemon } from './daemon.ts';
import type { ThrottleLimits } from '../limits/token-bucket.ts';

const log = createLogger('daemon-handover');

export const DAEMON_HANDOVER_MAGIC = 'vhost-wasm-daemon-handover';

/** The daemon message (step 1). */
export interface DaemonHandoverMessage {
  magic: typeof DAEMON_HANDOVER_MAGIC;
  version: 1;
  pid: number;
  hostVersion: string;
  /** The management socket's listening fd comes with the message. */
  control: boolean;
  devices: HandedDeviceInfo[];
}

export interface HandedDeviceInfo {
  id: string;
  /** Its socket path (null: an inherited socket, fd or systemd). */
  socket: string | null;
  /** A memory disk's size (its memfd comes on the device's connection), or null. */
  memoryDiskBytes: number | null;
  /** A front-end is connected (its session is offered when asked live). */
  connected: boolean;
  limits: { callDeadlineMs: number; cpuShare: number; throttle: ThrottleLimits | null };
}

/** daemon-handover's answer. */
export interface DaemonHandoverResult {
  fromPid: number;
  toPid: number;
  fromVersion: string;
  devices: { id: string; live: boolean; liveRefused?: string; stoppedMs?: number }[];
}

export interface DaemonHandoverHooks {
  control(): ControlServer | null;
  /**
   * Every device is the new daemon's (pid `toPid`), the management socket with them: from now on
   * this daemon takes no management connection and answers the open ones with that.
   */
  committed(toPid: number): void;
}

/** Checks daemon-handover's params: `to` (the new daemon's private socket) and `live`. */
export function handoverParams(params: Record<string, unknown>): { to: string; live: boolean } | string {
  const to = params.to;
  if (typeof to !== 'string' || !isAbsolute(to)) return 'params.to: missing or not an absolute path (the new daemon\'s handover socket)';
  if (params.live !== undefined && typeof params.live !== 'boolean') return 'params.live: not true or false';
  return { to, live: params.live === true };
}

/**
 * Hands every device to the daemon listening at `to` (pid `peerPid`). Resolves when it serves
 * all of them (this daemon then exits: the caller's afterAnswer); throws, saying why for each
 * device, when it did not take them, and this daemon serves on.
 */
export async function handOverDaemon(daemon: Daemon, hooks: DaemonHandoverHooks, to: string, peerPid: number, live: boolean): Promise<DaemonHandoverResult> {
  const devices = daemon.beginHandover(`a daemon handover to pid ${peerPid} runs`);
  try {
    const refused = devices.flatMap((d) => {
      const why = handoverRefusal(d.device);
      return why === null ? [] : [`${d.id}: ${why}`];
    });
    if (refused.length > 0) throw new HandoverRefused(`cannot hand the devices over: ${refused.join('; ')}`);
    const control = hooks.control();
    let fd: number;
    try {
      fd = native.connectUnix(to, true);
    } catch (e) {
      throw new HandoverRefused(`cannot connect to the new daemon at ${to}: ${errorText(e)}`);
    }
    const lines = new LineChannel(fd);
    try {
      if (native.peerCred(fd).pid !== peerPid) throw new HandoverRefused(`${to} is served by another process than pid ${peerPid} that asked: nothing was handed over`);
      const msg: DaemonHandoverMessage = {
        magic: DAEMON_HANDOVER_MAGIC,
        version: 1,
        pid: process.pid,
        hostVersion: HOST_VERSION,
        control: control !== null,
        devices: devices.map((d) => ({
          id: d.id,
          socket: d.socket,
          memoryDiskBytes: d.device.slot.memoryDiskFd?.size ?? null,
          connected: d.device.listener.currentSession !== null,
          limits: d.limits,
        })),
      };
      try {
        await sendFramed(fd, msg, control ? [control.fd] : []);
      } catch (e) {
        throw new HandoverRefused(`sending the device list: ${errorText(e)}`);
      }
      const go = await lines.next(HANDOVER_DEADLINE_MS);
      if (go !== 'devices') throw new HandoverRefused(go === null ? 'the new daemon went away before it took the devices' : `the new daemon did not take the devices: ${go}`);
      log.info(`handing ${devices.length} device(s) to pid ${peerPid}${live ? ' with their connected sessions' : ''}`);
      // Every device at once, each on its own connection: the new daemon holds back every
      // session's start until all are ready, so they stop together.
      const moves = devices.map((d) => ({ d, h: prepareDeviceHandover(d.device, { live, extra: [], log, label: d.id }) }));
      const results = await Promise.allSettled(moves.map(({ h }) => sendHandover(to, peerPid, h.src, undefined, (why) => log.warn(why))));
      // The new daemon serves every device now (it answered "serving" for each, after its
      // commit): it is the one to manage them, before this daemon lets go of them below.
      if (results.every((r) => r.status === 'fulfilled')) hooks.committed(peerPid);
      const out: DaemonHandoverResult['devices'] = [];
      const failures: string[] = [];
      for (const [i, r] of results.entries()) {
        const { d, h } = moves[i];
        if (r.status === 'rejected') {
          await h.failed(r.reason);
          failures.push(`${d.id}: ${errorText(r.reason)}`);
          continue;
        }
        const pauseMs = await h.succeeded(r.value, `handed over to the new daemon (pid ${peerPid})`);
        await daemon.forget(d.id);
        out.push({
          id: d.id,
          live: r.value.live,
          ...(r.value.liveRefused !== null ? { liveRefused: r.value.liveRefused } : {}),
          ...(pauseMs !== null ? { stoppedMs: Math.round(pauseMs * 10) / 10 } : {}),
        });
      }
      if (failures.length > 0) {
        // Only if the new daemon failed after it let some sessions start (take-over.ts): those
        // it serves; this daemon serves the rest and keeps its management socket.
        const what =
          out.length > 0
            ? `the new daemon took only part of the devices (${out.map((o) => o.id).join(', ')} moved to pid ${peerPid} and are served there; this daemon serves the rest)`
            : 'the new daemon took none of the devices; this daemon serves every one on';
        throw new HandoverRefused(`${what}: ${failures.join('; ')}`);
      }
      log.info(`pid ${peerPid} serves every device now (${out.map((o) => `${o.id}${o.live ? ` live, rings stopped ${o.stoppedMs ?? '?'} ms` : ''}`).join(', ')}); this daemon exits`);
      return { fromPid: process.pid, toPid: peerPid, fromVersion: HOST_VERSION, devices: out };
    } finally {
      lines.close();
    }
  } finally {
    daemon.endHandover();
  }
}
