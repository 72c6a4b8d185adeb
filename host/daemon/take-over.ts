// `vhost-wasm serve --config FILE --take-over`: the new daemon's side of a daemon handover
// (daemon-handover.ts has the old daemon's side and the exchange). It takes every device of the
// daemon on the config's management socket: listening sockets, memory disks, connected
// sessions (the single host's record and wire, takeover.ts), and their limits as they are now.
//
// All or nothing: every device of the old daemon must be in FILE (same id, same socket, a
// memory disk of the same size), every device must start here and every session must load its
// state before any session is let go: the sessions are held before their stop until all have
// their settings (so their rings stop together), and at their commit (restore's "ready") until
// all are loaded, and only then are all asked at once. Any refusal before that
// (a device missing from FILE, a plugin that does not load, a record or state refused, a
// session the old daemon cannot stop: locks held, an upgrade running) answers every device with
// the reason and the old daemon serves on. The one window left is between those "ready"s:
// should the old daemon fail some of them (it went away, or its stopped-rings deadline passed),
// the sessions it let go run here and the others stay there; both daemons then say which.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../native/index.ts';
import { createLogger, errorText } from '../log/logger.ts';
import { acceptOne, HANDOVER_DEADLINE_MS, HandoverRefused, readFramed, receiveDevice, type Received } from '../server/takeover.ts';
import { FdReader, LineChannel } from '../server/handover-wire.ts';
import { request } from '../cli/ctl.ts';
import { callDeadline, ConfigError, cpuShare, parseThrottle, type DaemonConfig, type DeviceSpec } from './config.ts';
import { DAEMON_HANDOVER_MAGIC, type DaemonHandoverMessage, type HandedDeviceInfo } from './daemon-handover.ts';
import type { Daemon } from './daemon.ts';
import { NO_THROTTLE, type ThrottleLimits } from '../limits/token-bucket.ts';

const log = createLogger('take-over');

/** Why a ready session did not start: another device was refused. */
const HELD_BACK = 'held back: another device of this take-over was refused (all or nothing)';

/** Devices a daemon handover may list: far more than a daemon serves. */
const MAX_DEVICES = 4096;

export type TakeOverMode = 'auto' | 'live' | 'socket';

export interface TakenOver {
  /** Devices taken over (running here), in the old daemon's order, with their socket paths (null: inherited sockets). */
  devices: { id: string; socket: string | null }[];
  /** Every device the old daemon had (those not taken stay there: a partial take-over). */
  oldIds: string[];
  /** Set when only part was taken (see the top of this file): why; the management socket stays with the old daemon. */
  partial: string | null;
  /** The management socket's listening fd (the caller serves it), or null. */
  controlFd: number | null;
  /** Ids whose connected session moved live. */
  live: string[];
  /** Sessions that could not move live (auto: their front-ends reconnect), with why. */
  liveRefused: { id: string; why: string }[];
  /** The old daemon's answer. */
  answer: unknown;
}

/**
 * Takes every device of the daemon on `controlPath` into `daemon` (empty), checked against
 * `config`. Resolves once the old daemon let go of them (the caller then lets them accept,
 * starts the config's other devices and serves the management socket; `partial` says when only
 * some moved); throws HandoverRefused, with the reasons, when nothing was taken (the old daemon
 * serves on).
 */
export async function takeOverDaemon(daemon: Daemon, config: DaemonConfig, controlPath: string, mode: TakeOverMode, deadlineMs = HANDOVER_DEADLINE_MS): Promise<TakenOver> {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-daemon-handover-'));
  const path = join(dir, 'handover.sock');
  // A backlog for every device's connection at once (the old daemon connects without blocking).
  const lfd = native.listenUnix(path, 128);
  const loose = new Set<number>();
  const received: Received[] = [];
  let daemonConn: LineChannel | null = null;
  let committed = false;
  /** Each refused device's own reason (a session held back by another's refusal is not one). */
  const refusals = new Map<string, string>();
  const refuse = (id: string, why: string): HandoverRefused => {
    if (!why.includes(HELD_BACK)) refusals.set(id, why);
    return new HandoverRefused(`${id}: ${why}`);
  };
  try {
    const outcome = request(controlPath, 'daemon-handover', { to: path, live: mode !== 'socket' }, deadlineMs * 2 + 10_000, 'the old daemon').then((r) => {
      if ('error' in r) throw new HandoverRefused(`the daemon on ${controlPath} refused the handover: ${r.error.message}`);
      return r.result;
    });
    outcome.catch(() => {});
    const first = await accepted(lfd, deadlineMs, outcome);
    daemonConn = new LineChannel(first);
    const msg = await readDaemonMessage(first, deadlineMs);
    if (msg.controlFd !== null) loose.add(msg.controlFd);
    const specs = matchDevices(msg.message.devices, config);
    daemonConn.write('devices\n');
    // One connection per device, in any order: matched by the label its header carries.
    const byId = new Map<string, Received>();
    while (byId.size < specs.length) {
      const r = await receiveDevice(await accepted(lfd, deadlineMs, outcome), deadlineMs);
      received.push(r);
      for (const fd of r.fds.values()) loose.add(fd);
      const id = r.header.label;
      const expected = specs.find((s) => s.info.id === id);
      if (!expected || byId.has(id)) throw new HandoverRefused(`the old daemon sent device "${id.slice(0, 80)}" ${expected ? 'twice' : 'which its list did not name'}`);
      if ((r.header.memoryDiskBytes ?? null) !== expected.info.memoryDiskBytes) throw refuse(id, 'the memory disk sent is not the size its list said');
      if (r.header.fds.includes('control')) throw refuse(id, 'a management socket came with a device');
      byId.set(id, r);
    }
    // Every device starts here on its handed socket, accepting nothing yet; then its limits as
    // they are now there. Each start is waited for, so that none goes on after a refusal.
    const starts = await Promise.allSettled(
      specs.map(async ({ spec, info }) => {
        const r = byId.get(info.id)!;
        const listenFd = r.fds.get('listen')!;
        const memoryDiskFd = r.fds.get('memory-disk');
        try {
          await daemon.add(spec, info.socket !== null ? { path: info.socket } : { fd: listenFd }, { listenFd, ...(memoryDiskFd !== undefined ? { memoryDiskFd } : {}) });
        } catch (e) {
          throw refuse(info.id, errorText(e));
        } finally {
          // Owned by the device from its start (closed with it even when it failed to start).
          loose.delete(listenFd);
          if (memoryDiskFd !== undefined) loose.delete(memoryDiskFd);
        }
        daemon.setLimits(info.id, info.limits);
      }),
    );
    const notStarted = starts.flatMap((x) => (x.status === 'rejected' ? [errorText(x.reason)] : []));
    if (notStarted.length > 0) throw new HandoverRefused(notStarted.join('; '));
    // The sessions: every one is applied, stopped there and loaded here, then all are let go together.
    const sessions = specs.filter(({ info }) => byId.get(info.id)!.header.sessionOffered === true);
    // Two meeting points: every session's settings are applied (while the old daemon runs them)
    // before any is asked to stop, so the rings stop together and none waits stopped for
    // another's settings (the old daemon holds stopped rings for at most 5 s); and every session
    // is loaded before any is let go.
    const stopping = new Barrier(sessions.length);
    const barrier = new Barrier(sessions.length);
    const failAll = () => {
      stopping.fail();
      barrier.fail();
    };
    const live: string[] = [];
    const liveRefused: { id: string; why: string }[] = [];
    const results = await Promise.allSettled(
      sessions.map(async ({ info }) => {
        const r = byId.get(info.id)!;
        let got;
        try {
          got = await r.takeSession();
        } catch (e) {
          failAll();
          throw refuse(info.id, errorText(e));
        }
        if ('refused' in got) {
          if (mode === 'live') {
            failAll();
            throw refuse(info.id, `--take-over-mode live: its session cannot move live: ${got.refused}`);
          }
          liveRefused.push({ id: info.id, why: got.refused });
          stopping.leave();
          barrier.leave();
          return;
        }
        try {
          await daemon.deviceOf(info.id).listener.adoptLive(got.record, got.fds, {
            stop: async () => {
              if (!(await stopping.arrive())) throw new HandoverRefused(HELD_BACK);
              return r.takeStop(got.record.rings.length);
            },
            commit: async () => {
              if (!(await barrier.arrive())) throw new HandoverRefused(HELD_BACK);
              return r.ready();
            },
          });
        } catch (e) {
          failAll();
          throw refuse(info.id, errorText(e));
        }
        live.push(info.id);
      }),
    );
    const failures = results.flatMap((x) => (x.status === 'rejected' ? [errorText(x.reason)] : []));
    if (failures.length > 0 && live.length === 0) throw new HandoverRefused(failures.join('; '));
    committed = true;
    // Every device answered: "serving" for what runs here, the reason for what does not.
    const failedIds = new Set(results.flatMap((x, i) => (x.status === 'rejected' ? [sessions[i].info.id] : [])));
    for (const { info } of specs) byId.get(info.id)!.answer(failedIds.has(info.id) ? (refusals.get(info.id) ?? `not taken: ${failures.join('; ')}`) : null);
    let answer: unknown = null;
    try {
      answer = await outcome;
    } catch (e) {
      if (failures.length === 0) log.warn(`the old daemon's answer to the handover: ${errorText(e)}`);
      else answer = errorText(e);
    }
    const oldIds = specs.map((x) => x.info.id);
    if (failures.length > 0) {
      for (const id of failedIds) await daemon.remove(id);
      const partial = `only part of the old daemon's devices were taken over (${live.join(', ')} run here; the old daemon serves the rest and its management socket): ${failures.join('; ')}`;
      const devices = specs.filter(({ info }) => !failedIds.has(info.id)).map(({ info }) => ({ id: info.id, socket: info.socket }));
      return { devices, oldIds, partial, controlFd: null, live, liveRefused, answer };
    }
    const controlFd = msg.controlFd;
    if (controlFd !== null) loose.delete(controlFd);
    return { devices: specs.map(({ info }) => ({ id: info.id, socket: info.socket })), oldIds, partial: null, controlFd, live, liveRefused, answer };
  } catch (e) {
    const why = errorText(e);
    if (!committed) {
      // Each device hears its own reason, the others which were refused (all or nothing).
      const ids = [...refusals.keys()];
      for (const r of received) {
        r.answer(refusals.get(r.header.label) ?? (ids.length > 0 ? `not taken: all or nothing, and ${ids.join(', ')} ${ids.length > 1 ? 'were' : 'was'} refused` : why));
      }
      daemonConn?.write(`${why.replace(/\n/g, ' ').slice(0, 1000)}\n`);
    }
    throw e;
  } finally {
    daemonConn?.close();
    for (const fd of loose) native.close(fd);
    native.close(lfd);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Holds sessions at their commit until all `n` have arrived (true) or one failed (false). */
class Barrier {
  private arrived = 0;
  private failed = false;
  private readonly waiting: ((go: boolean) => void)[] = [];

  constructor(private n: number) {}

  arrive(): Promise<boolean> {
    if (this.failed) return Promise.resolve(false);
    this.arrived++;
    const p = new Promise<boolean>((resolve) => this.waiting.push(resolve));
    this.check();
    return p;
  }

  /** A session that will not arrive but does not fail the rest (it moves as a socket only). */
  leave(): void {
    this.n--;
    this.check();
  }

  fail(): void {
    this.failed = true;
    for (const w of this.waiting.splice(0)) w(false);
  }

  private check(): void {
    if (!this.failed && this.arrived >= this.n) for (const w of this.waiting.splice(0)) w(true);
  }
}

/** The first connection on `lfd`, unless the old daemon answers (a refusal) first. */
async function accepted(lfd: number, deadlineMs: number, outcome: Promise<unknown>): Promise<number> {
  const a = acceptOne(lfd, deadlineMs);
  try {
    return await Promise.race([
      a.conn,
      outcome.then(() => {
        throw new HandoverRefused('the old daemon answered before it handed everything over');
      }),
    ]);
  } finally {
    a.cancel();
  }
}

/** The old daemon's device list (step 1), checked: it is hostile input like any record. */
async function readDaemonMessage(conn: number, deadlineMs: number): Promise<{ message: DaemonHandoverMessage; controlFd: number | null }> {
  const cred = native.peerCred(conn);
  if (cred.uid !== process.getuid!() && cred.uid !== 0) throw new HandoverRefused(`the handover came from uid ${cred.uid}, not this uid or root`);
  const reader = new FdReader(conn, Date.now() + deadlineMs);
  let fds: number[] = [];
  try {
    const got = await readFramed(
      reader,
      (raw) => {
        const o = raw as Partial<DaemonHandoverMessage> | null;
        if (typeof o !== 'object' || o === null || o.magic !== DAEMON_HANDOVER_MAGIC) throw new HandoverRefused('the first message is not a vhost-wasm daemon handover (is the process on the management socket a single-device host? use its --take-over)');
        if (o.version !== 1) throw new HandoverRefused(`daemon handover version ${String(o.version)}: this daemon reads version 1`);
        return o.control === true ? 1 : 0;
      },
      'device list',
    );
    fds = got.fds;
    const message = checkDaemonMessage(got.raw, cred.pid);
    if (fds.length === 1 && !native.isListeningUnixSocket(fds[0])) throw new HandoverRefused('the management socket handed over is not a listening Unix stream socket');
    return { message, controlFd: fds[0] ?? null };
  } catch (e) {
    reader.close();
    for (const f of fds) native.close(f);
    throw e instanceof HandoverRefused ? e : new HandoverRefused(errorText(e));
  }
}

function checkDaemonMessage(raw: unknown, pid: number): DaemonHandoverMessage {
  const o = raw as DaemonHandoverMessage;
  if (o.pid !== pid) throw new HandoverRefused(`the handover came from pid ${pid}, but its message says pid ${String(o.pid)}`);
  if (typeof o.hostVersion !== 'string' || typeof o.control !== 'boolean') throw new HandoverRefused('the device list lacks hostVersion or control');
  if (!Array.isArray(o.devices) || o.devices.length > MAX_DEVICES) throw new HandoverRefused(`the device list is not a list of at most ${MAX_DEVICES} devices`);
  const seen = new Set<string>();
  for (const [i, d] of (o.devices as unknown[]).entries()) {
    const x = d as Partial<HandedDeviceInfo> | null;
    const bad = (what: string) => new HandoverRefused(`the device list's devices[${i}]: ${what}`);
    if (typeof x !== 'object' || x === null) throw bad('not an object');
    if (typeof x.id !== 'string' || x.id.length === 0 || x.id.length > 64 || seen.has(x.id)) throw bad('its id is missing, too long or named twice');
    seen.add(x.id);
    if (x.socket !== null && typeof x.socket !== 'string') throw bad('socket is not a path or null');
    if (x.memoryDiskBytes !== null && !(typeof x.memoryDiskBytes === 'number' && Number.isSafeInteger(x.memoryDiskBytes) && x.memoryDiskBytes >= 0)) throw bad('memoryDiskBytes is not a byte count or null');
    if (typeof x.connected !== 'boolean') throw bad('connected is not true or false');
    // The same checks as set-limits' (config.ts): a value set-limits would refuse is refused here.
    const l = x.limits as Partial<HandedDeviceInfo['limits']> | undefined;
    try {
      if (typeof l !== 'object' || l === null) throw new ConfigError('limits', 'is not an object');
      callDeadline(l.callDeadlineMs, 'limits.callDeadlineMs');
      cpuShare(l.cpuShare, 'limits.cpuShare');
      if (l.throttle !== null) {
        if (typeof l.throttle !== 'object') throw new ConfigError('limits.throttle', 'is not an object or null');
        parseThrottle(l.throttle as unknown as Record<string, unknown>, (k) => `limits.throttle.${k}`);
      }
    } catch (e) {
      throw bad(e instanceof ConfigError ? `${e.field} ${e.message}` : errorText(e));
    }
  }
  return o;
}

/**
 * Each old device against FILE: the same id, socket and memory disk size. Every mismatch is
 * named (the operator fixes them all at once); nothing is taken when there is one.
 */
function matchDevices(devices: HandedDeviceInfo[], config: DaemonConfig): { spec: DeviceSpec; info: HandedDeviceInfo & { limits: { callDeadlineMs: number; cpuShare: number; throttle: ThrottleLimits } } }[] {
  const why: string[] = [];
  const out = [];
  for (const d of devices) {
    const spec = config.devices.find((s) => s.id === d.id);
    if (!spec) {
      why.push(`${d.id}: not in the config file (added with device-add?): add it to the file, or device-del it from the old daemon first`);
      continue;
    }
    const mine = 'path' in spec.listen ? spec.listen.path : null;
    if (d.socket !== null && mine !== null && d.socket !== mine) why.push(`${d.id}: it listens on ${d.socket} there, the config file says ${mine}`);
    const st = spec.grants.storage;
    // A memory disk of size 0 has no memfd (device-slot.ts): as no memory disk.
    const mem = st !== null && st.kind === 'memory' && st.size > 0 ? st.size : null;
    if (mem !== d.memoryDiskBytes) {
      why.push(
        d.memoryDiskBytes === null
          ? `${d.id}: the config file asks for a memory disk, the old daemon's is not one`
          : `${d.id}: its disk is a ${d.memoryDiskBytes}-byte memory disk there: give "storage": "memory:${d.memoryDiskBytes}" (a memory disk's bytes move with it)`,
      );
    }
    out.push({ spec, info: { ...d, limits: { ...d.limits, throttle: d.limits.throttle ?? NO_THROTTLE } } });
  }
  if (why.length > 0) throw new HandoverRefused(`the config file does not describe the old daemon's devices: ${why.join('; ')}`);
  return out;
}
