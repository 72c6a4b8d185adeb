// Host upgrade (docs/upgrade.md, "Host upgrade"): a new host process takes a running device over
// from the old one, over a Unix socket with SCM_RIGHTS: the listening device socket, the
// control socket, a memory:SIZE disk's memfd and, in a live handover, the connected front-end's
// session (host/session/handover-record.ts: the front-end socket, its memory table, rings and
// their fds, the inflight and log areas, the device's state), so that the front-end carries on
// without reconnecting. Without a session (`--take-over-mode socket`, a session that cannot move,
// or an old host of the release before live handover) the old host closes its front-end's
// connection once the new one serves, and the front-end reconnects (QEMU: `reconnect=`).
//
// The exchange, driven by the new process (`vhost-wasm --socket-path S ... --take-over`):
//   1. new: listens on a private socket (a fresh 0700 directory) and asks the old host, over its
//      control socket, for `host-handover` with `to` = that socket (and `live`);
//   2. old: stops accepting, connects to `to` (its listener must be the process that asked:
//      SO_PEERCRED pid) and sends the device's fds: format 1, one header line with the fds
//      attached (asked without `live`), or format 2, framed (handover-wire.ts), saying whether a
//      session is connected;
//   3. new: checks them and starts its device on them (its plugin loads while the old host still
//      serves). Format 2 with a session: it writes "session\n"; the old host stops the session
//      (live-handover.ts) and sends its record and fds (framed), or says why it cannot (then the
//      front-end reconnects); the new host rebuilds the session without starting a ring, writes
//      "ready\n", the old host answers "go\n" (from then on it never runs the rings again), and
//      the new host starts the rings. Then it writes "serving\n";
//   4. old: on "serving", closes its copies (the socket paths stay: they are the new host's
//      now; without a session it closes its front-end's connection), answers the RPC and
//      exits. On anything else before "go" (the new process failed and said why, died, or said
//      nothing in time: HANDOVER_DEADLINE_MS, but only STOPPED_DEADLINE_MS for "ready" while
//      the rings are stopped) it restarts its rings (if it had stopped them), accepts again and
//      serves on.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../native/index.ts';
import { VhostWasmError } from '../errors.ts';
import { errorText } from '../log/logger.ts';
import { checkLiveRecord, checkLiveStop, LiveRecordError, type LiveSessionRecord, type LiveStop } from '../session/handover-record.ts';
import { MAX_CARRIED_LOCK_FDS } from '../session/lock-carry.ts';
import { FdReader, FRAME_MAGIC, LineChannel, MAX_FDS_TOTAL, MAX_RECORD_BYTES, PREFIX_BYTES, sendFramed } from './handover-wire.ts';

/** First line of the old host's message: names the fds that come with it, in order. */
export interface HandoverHeader {
  magic: 'vhost-wasm-handover';
  /** 1: one line with the device's fds (the release before live handover); 2: framed (handover-wire.ts), with a session. */
  version: 1 | 2;
  /** The old host's pid and version, for the log. */
  pid: number;
  hostVersion: string;
  /** Device label (its socket path). */
  label: string;
  /** What each attached fd is. */
  fds: HandoverFd[];
  /** A memory disk's size in bytes, when one of the fds is it. */
  memoryDiskBytes?: number;
  /** Version 2: a front-end is connected, and its session can be asked for ("session"). */
  sessionOffered?: boolean;
}

/** Version 2, the old host's second message (after "session"): the session or why not. */
export interface SessionMessage {
  magic: 'vhost-wasm-session';
  /** The record (handover-record.ts), or null: the session cannot move live. */
  session: unknown;
  /** Fds that follow, all the record's. */
  sessionFds: number;
  /** Why not, when session is null. */
  liveRefused: string | null;
}

const SESSION_MAGIC = 'vhost-wasm-session';
/** Version 2, the old host's third message (after "stop"): where the rings stopped; the state memfd comes with it. */
const STOP_MAGIC = 'vhost-wasm-session-stop';

/** A session the old host offers: its record now, its rings stopped and state saved when stop() is called. */
export interface SessionOffer {
  record: LiveSessionRecord;
  fds: number[];
  /** lockFds: a virtio-fs guest's lock-holding descriptions, sent after the state memfd (host/session/lock-carry.ts). */
  stop(): Promise<{ stop: LiveStop; stateFd: number; lockFds?: number[] }>;
}
export type HandoverFd = 'listen' | 'control' | 'memory-disk';

export const HANDOVER_MAGIC = 'vhost-wasm-handover';
/** The header is small; more is refused. */
const MAX_HEADER = 4096;
const MAX_FDS = 3;
/** How long the old host waits for the new one to start its device on the fds. */
export const HANDOVER_DEADLINE_MS = 60_000;
/**
 * With the rings stopped (the stop message sent, "ready" not yet come): how long the old host
 * holds the guest for the new host to load the state and say "ready". The guest's requests wait
 * all this time, so it is short: loading a state container (the plugin's chunks; a memory
 * disk's bytes do not travel in it) takes tens of milliseconds; a new host that takes seconds
 * is stuck, and the old host then runs its rings again and serves on (the handover fails)
 * rather than stall the guest for HANDOVER_DEADLINE_MS.
 */
export const STOPPED_DEADLINE_MS = 5_000;
/** After the old host let go of a live session ("go"): how long the new one may take to start its rings. */
const START_DEADLINE_MS = 10_000;

export class HandoverRefused extends VhostWasmError {
  static override readonly code = 'ERR_HANDOVER_REFUSED';
  override readonly name = 'HandoverRefused';
}

/** The old host let go of a live session ("go") and the new one did not say it serves: nobody may be serving it. */
export class HandoverLost extends VhostWasmError {
  static override readonly code = 'ERR_HANDOVER_LOST';
  override readonly name = 'HandoverLost';
}

/** What the old host hands over. */
export interface HandoverSource {
  header: Omit<HandoverHeader, 'magic' | 'version' | 'fds' | 'sessionOffered'>;
  fds: { kind: HandoverFd; fd: number }[];
  /** Format 2 (the new host asked with `live`). */
  format: 1 | 2;
  /**
   * Format 2, a front-end connected: stops its session and describes it when the new host asks
   * (its device is started by then), or says why it cannot move live.
   */
  session?: () => Promise<SessionOffer | { refused: string }>;
}

/** How far a handover got (for the old host's log and answer). */
export interface HandoverOutcome {
  /** The session moved live. */
  live: boolean;
  /** Why it did not, when asked for and refused (the front-end reconnects). */
  liveRefused: string | null;
}

/**
 * Old host, step 2 and 4: sends `src` to the process listening at `to`, which must be `peerPid`,
 * and waits for its verdict. Resolves when it serves; throws HandoverRefused when it did not
 * take the device (nothing of it runs there), HandoverLost when it went away after this host
 * let go of a live session.
 */
/** Whether `pid` is a live process (one we may not signal still counts). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function sendHandover(
  to: string,
  peerPid: number,
  src: HandoverSource,
  deadlineMs = HANDOVER_DEADLINE_MS,
  onSlowStart?: (why: string) => void,
): Promise<HandoverOutcome> {
  let fd: number;
  try {
    // Never a blocking connect: whoever asked names `to`, and a listener that does not accept
    // (its backlog full) would stall this host's main thread, and with it every front-end's
    // messages, for as long as it likes.
    fd = native.connectUnix(to, true);
  } catch (e) {
    throw new HandoverRefused(`cannot connect to the new host at ${to}: ${errorText(e)}${/EAGAIN/.test(errorText(e)) ? ' (it is not accepting: its backlog is full)' : ''}`);
  }
  const cred = native.peerCred(fd);
  if (cred.pid !== peerPid) {
    native.close(fd);
    throw new HandoverRefused(`${to} is served by pid ${cred.pid}, not by pid ${peerPid} that asked for the device: nothing was handed over`);
  }
  const kinds = src.fds.map((f) => f.kind);
  const lines = new LineChannel(fd);
  try {
    if (src.format === 1) {
      const header: HandoverHeader = { magic: HANDOVER_MAGIC, version: 1, ...src.header, fds: kinds };
      const bytes = Buffer.from(JSON.stringify(header) + '\n');
      // One small message on a fresh, empty socket: sendmsg takes it whole.
      const sent = native.sendMsg(fd, bytes, src.fds.map((f) => f.fd));
      if (sent !== bytes.length) throw new HandoverRefused(`the handover message did not go out whole (${sent} of ${bytes.length} bytes)`);
    } else {
      const header: HandoverHeader = { magic: HANDOVER_MAGIC, version: 2, ...src.header, fds: kinds, sessionOffered: src.session !== undefined };
      try {
        await sendFramed(fd, header, src.fds.map((f) => f.fd));
      } catch (e) {
        throw new HandoverRefused(`sending the handover message: ${errorText(e)}`);
      }
    }
    let line = await lines.next(deadlineMs);
    let outcome: HandoverOutcome = { live: false, liveRefused: null };
    if (line === 'session' && src.session) {
      // The new host's device runs: the session stops now (a refusal here throws: nothing moved).
      const s = await src.session();
      const msg: SessionMessage =
        'refused' in s
          ? { magic: SESSION_MAGIC, session: null, sessionFds: 0, liveRefused: s.refused }
          : { magic: SESSION_MAGIC, session: s.record, sessionFds: s.fds.length, liveRefused: null };
      try {
        await sendFramed(fd, msg, 'refused' in s ? [] : s.fds);
      } catch (e) {
        throw new HandoverRefused(`sending the session: ${errorText(e)}`);
      }
      if ('refused' in s) {
        outcome = { live: false, liveRefused: s.refused };
        line = await lines.next(deadlineMs);
      } else {
        // The new host applies the record while this host's rings run, then asks them stopped.
        line = await lines.next(deadlineMs);
        if (line !== 'stop') throw new HandoverRefused(verdictText(line));
        const { stop, stateFd, lockFds } = await s.stop();
        try {
          await sendFramed(fd, { magic: STOP_MAGIC, ...stop }, [stateFd, ...(lockFds ?? [])]);
        } catch (e) {
          throw new HandoverRefused(`sending where the rings stopped: ${errorText(e)}`);
        }
        line = await lines.next(Math.min(deadlineMs, STOPPED_DEADLINE_MS));
        if (lines.timedOut) {
          throw new HandoverRefused(
            `the new host (pid ${peerPid}) did not say it is ready within ${STOPPED_DEADLINE_MS / 1000} s of this host stopping its rings (it is stuck loading the state?): ` +
              'this host runs the rings again and serves on rather than hold the guest longer; the handover failed',
          );
        }
        if (line !== 'ready') throw new HandoverRefused(verdictText(line));
        // From here the new host may start the rings: this host never runs them again unless it says it failed.
        lines.write('go\n');
        // A new host that is slow to say "serving" may be running the rings already: this host
        // must not serve the device again while that process lives (two hosts on one device).
        // Only its end (EOF on this socket, or the process gone) gives the device back here.
        for (;;) {
          line = await lines.next(START_DEADLINE_MS);
          if (!lines.timedOut || !processAlive(peerPid)) break;
          onSlowStart?.(`the new host (pid ${peerPid}) has not said it serves ${START_DEADLINE_MS / 1000} s after this host let go of the session; waiting for it (this host serves again only if that process ends)`);
        }
        if (line === 'serving') return { live: true, liveRefused: null };
        throw new HandoverLost(line === null ? 'the new host went away after this host let go of the session, before it said it serves' : `the new host did not start the session: ${line}`);
      }
    }
    if (line === 'serving') return outcome;
    throw new HandoverRefused(verdictText(line));
  } finally {
    lines.close();
  }
}

function verdictText(line: string | null): string {
  return line === null ? 'the new host went away before it served the device (it crashed or was stopped)' : `the new host did not take the device: ${line}`;
}

/** New host: what it received. Fds it does not use must be closed by whoever took them. */
export interface Received {
  header: HandoverHeader;
  fds: Map<HandoverFd, number>;
  /**
   * Format 2 with a session offered: asks for it (the old host stops it now). The record is
   * checked for shape; its fds are the caller's to close if unused. `refused`: it cannot move
   * live (the old host says why; the front-end will reconnect).
   */
  takeSession(): Promise<{ record: LiveSessionRecord; fds: number[] } | { refused: string }>;
  /** After takeSession and the record applied: asks the old host to stop its rings ("stop"); where they stopped and the state memfd (the caller's). */
  takeStop(rings: number): Promise<{ stop: LiveStop; stateFd: number; lockFds?: number[] }>;
  /**
   * A live session: everything is in place but the rings: asks the old host to let go ("ready",
   * then "go"). True: it has, and the rings may start; false: it did not (it went away).
   */
  ready(): Promise<boolean>;
  /** Step 3: tell the old host it may let go (`null`) or why not. Closes the connection. */
  answer(failure: string | null): void;
}

/**
 * New host, step 1 and 3: asks the host behind `controlPath` for its device and receives it.
 * `ask` sends the host-handover request with the private socket's path and resolves with the
 * RPC's outcome (the old host answers it only after step 4).
 */
export async function receiveHandover(ask: (to: string) => Promise<unknown>, deadlineMs = HANDOVER_DEADLINE_MS): Promise<{ received: Received; outcome: Promise<unknown> }> {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-handover-'));
  const path = join(dir, 'handover.sock');
  const lfd = native.listenUnix(path, 1);
  try {
    const outcome = ask(path);
    // Awaited by the caller once something was received; a refusal before that is thrown below.
    outcome.catch(() => {});
    const accepting = acceptOne(lfd, deadlineMs);
    let conn: number;
    try {
      conn = await Promise.race([
        accepting.conn,
        // The old host refused before connecting (no device, an upgrade runs, ...): its reason.
        outcome.then(() => {
          throw new HandoverRefused('the old host answered before it handed anything over');
        }),
      ]);
    } finally {
      accepting.cancel();
    }
    const received = await receiveDevice(conn, deadlineMs);
    return { received, outcome };
  } finally {
    native.close(lfd);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * New host, step 3, on a connection the old host made (`conn`, taken): checks who it is, reads
 * its device message and returns the exchange that follows. The daemon's take-over
 * (host/daemon/take-over.ts) runs one per device; receiveHandover one for its device.
 */
export async function receiveDevice(conn: number, deadlineMs = HANDOVER_DEADLINE_MS): Promise<Received> {
  let answered = false;
  const cred = native.peerCred(conn);
  if (cred.uid !== process.getuid!() && cred.uid !== 0) {
    native.close(conn);
    throw new HandoverRefused(`the handover came from uid ${cred.uid}, not this uid or root`);
  }
  const { header, fds } = await receiveMessage(conn, Date.now() + deadlineMs);
  if (header.pid !== cred.pid) {
    for (const fd of fds.values()) native.close(fd);
    native.close(conn);
    throw new HandoverRefused(`the handover came from pid ${cred.pid}, but its header says pid ${header.pid}`);
  }
  const lines = new LineChannel(conn);
  const received: Received = {
    header,
    fds,
    async takeSession() {
      if (header.version !== 2 || header.sessionOffered !== true) throw new HandoverRefused('the old host offered no session');
      lines.write('session\n');
      return receiveSession(conn, Date.now() + deadlineMs);
    },
    async takeStop(rings: number) {
      lines.write('stop\n');
      const reader = new FdReader(conn, Date.now() + deadlineMs);
      let got: number[] = [];
      try {
        const { raw, fds: f } = await readFramed(
          reader,
          (r) => {
            if (typeof r !== 'object' || r === null || (r as { magic?: unknown }).magic !== STOP_MAGIC) throw new HandoverRefused('the stop message is not a vhost-wasm session stop');
            // The state memfd, then a virtio-fs guest's lock-holding fds (checked with the rest by checkLiveStop).
            const n = (r as { locks?: { fds?: unknown } }).locks?.fds;
            return 1 + (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 && n <= MAX_CARRIED_LOCK_FDS ? n : 0);
          },
          'stop message',
        );
        got = f;
        const stop = checkLiveStop(raw, rings);
        if (got.length !== 1 + (stop.locks?.fds ?? 0)) throw new HandoverRefused(`the stop message came with ${got.length} fds, it names ${1 + (stop.locks?.fds ?? 0)}`);
        if (native.fdKind(got[0]) !== 'memfd') throw new HandoverRefused('the device state handed over is not a memfd');
        return { stop, stateFd: got[0], lockFds: got.slice(1) };
      } catch (e) {
        reader.close();
        for (const x of got) native.close(x);
        throw e instanceof HandoverRefused ? e : new HandoverRefused(e instanceof LiveRecordError ? `the stop message is not valid: ${e.message}` : errorText(e));
      }
    },
    async ready() {
      if (answered) return false;
      lines.write('ready\n');
      return (await lines.next(deadlineMs)) === 'go';
    },
    answer(failure) {
      if (answered) return;
      answered = true;
      lines.write(`${failure === null ? 'serving' : failure.replace(/\n/g, ' ').slice(0, 1000)}\n`);
      lines.close();
    },
  };
  return received;
}

/** The first connection on `lfd` (rejected after `deadlineMs`); `cancel` stops waiting. */
export function acceptOne(lfd: number, deadlineMs: number): { conn: Promise<number>; cancel(): void } {
  let w: { close(): void } | null = null;
  let timer: NodeJS.Timeout | undefined;
  const conn = new Promise<number>((resolve, reject) => {
    timer = setTimeout(() => {
      w?.close();
      reject(new HandoverRefused(`the old host did not connect within ${deadlineMs / 1000} s`));
    }, deadlineMs);
    w = native.watch(lfd, 'r', () => {
      const c = native.accept(lfd);
      if (c < 0) return;
      clearTimeout(timer);
      w?.close();
      resolve(c);
    });
  });
  return {
    conn,
    cancel() {
      clearTimeout(timer);
      w?.close();
    },
  };
}

interface Message {
  header: HandoverHeader;
  fds: Map<HandoverFd, number>;
}

/** Reads one framed record (handover-wire.ts) and the `fdsOf(record)` fds after it. */
export async function readFramed(reader: FdReader, fdsOf: (raw: unknown) => number, what: string): Promise<{ raw: unknown; fds: number[] }> {
  const prefix = await reader.read(PREFIX_BYTES, 0, what);
  if (!prefix.subarray(0, 4).equals(FRAME_MAGIC)) throw new HandoverRefused(`the ${what} is not a vhost-wasm handover frame`);
  const len = prefix.readUInt32LE(4);
  if (len > MAX_RECORD_BYTES) throw new HandoverRefused(`the ${what} is ${len} bytes; at most ${MAX_RECORD_BYTES} are read`);
  const raw = parseJson(await reader.read(len, 0, what));
  const total = fdsOf(raw);
  while (reader.fdCount < total) {
    const before = reader.fdCount;
    await reader.read(1, Math.min(253, total - before), `fds of the ${what}`);
    if (reader.fdCount === before) throw new HandoverRefused(`an fd batch of the ${what} came without fds (${before} of ${total} received)`);
  }
  return { raw, fds: reader.take() };
}

/**
 * Reads the old host's first message, either format: version 1 is one JSON line with the
 * device's fds on its first byte (an old host of the release before live handover), version 2
 * is framed (handover-wire.ts). Every fd is checked to be what the header says; on any failure
 * every fd received is closed, the old host is told why, and `conn` is closed.
 */
async function receiveMessage(conn: number, deadline: number): Promise<Message> {
  const reader = new FdReader(conn, deadline);
  let got: number[] = [];
  try {
    let header: HandoverHeader;
    const first = await reader.read(1, MAX_FDS, 'handover message');
    if (first[0] === 0x7b /* '{': version 1 */) {
      let line = first;
      while (line.indexOf(10) < 0) {
        if (line.length >= MAX_HEADER) throw new HandoverRefused('the handover header is longer than 4 KiB');
        line = Buffer.concat([line, await reader.read(1, 0, 'handover header')]);
      }
      got = reader.take();
      header = checkHeader(parseJson(line.subarray(0, line.indexOf(10))), got.length, 1);
    } else {
      if (reader.fdCount > 0) throw new HandoverRefused('fds came with the handover message\'s prefix (they belong after the record)');
      const rest = await reader.read(PREFIX_BYTES - 1, 0, 'handover message');
      const prefix = Buffer.concat([first, rest]);
      if (!prefix.subarray(0, 4).equals(FRAME_MAGIC)) throw new HandoverRefused('the handover message is not a vhost-wasm handover');
      const len = prefix.readUInt32LE(4);
      if (len > MAX_RECORD_BYTES) throw new HandoverRefused(`the handover header is ${len} bytes; at most ${MAX_RECORD_BYTES} are read`);
      const raw = parseJson(await reader.read(len, 0, 'handover header'));
      const o = raw as Partial<HandoverHeader> | null;
      const deviceFds = Array.isArray(o?.fds) ? o.fds.length : 0;
      if (deviceFds > MAX_FDS) throw new HandoverRefused(`the handover header names ${deviceFds} device fds; there are at most ${MAX_FDS}`);
      while (reader.fdCount < deviceFds) {
        const before = reader.fdCount;
        await reader.read(1, deviceFds - before, 'handover fds');
        if (reader.fdCount === before) throw new HandoverRefused('an fd batch of the handover came without fds');
      }
      got = reader.take();
      header = checkHeader(raw, deviceFds, 2);
    }
    checkDeviceFds(header, got);
    return { header, fds: new Map(header.fds.map((k, i) => [k, got[i]])) };
  } catch (e) {
    reader.close();
    for (const f of got) native.close(f);
    throw refuseTo(conn, e);
  }
}

/** The old host is told why (it serves on either way; a full socket just misses the reason), and the connection closes. */
function refuseTo(conn: number, e: unknown): HandoverRefused {
  const refusal = e instanceof HandoverRefused ? e : new HandoverRefused(errorText(e));
  try {
    native.sendMsg(conn, Buffer.from(`${refusal.message.replace(/\n/g, ' ').slice(0, 1000)}\n`), []);
  } catch {
    // it went away
  }
  native.close(conn);
  return refusal;
}

/** The old host's session message (after "session"); a bad one throws HandoverRefused. */
async function receiveSession(conn: number, deadline: number): Promise<{ record: LiveSessionRecord; fds: number[] } | { refused: string }> {
  const reader = new FdReader(conn, deadline);
  let got: number[] = [];
  try {
    const sessionFdsOf = (raw: unknown): number => {
      const o = raw as Partial<SessionMessage> | null;
      if (typeof o !== 'object' || o === null || o.magic !== SESSION_MAGIC) throw new HandoverRefused('the session message is not a vhost-wasm session');
      const n = o.sessionFds;
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0 || n > MAX_FDS_TOTAL) throw new HandoverRefused(`the session message's sessionFds is not a count of fds up to ${MAX_FDS_TOTAL}`);
      return n;
    };
    const { raw, fds } = await readFramed(reader, sessionFdsOf, 'session message');
    got = fds;
    const o = raw as SessionMessage;
    if (o.session === null) {
      if (typeof o.liveRefused !== 'string' || got.length > 0) throw new HandoverRefused('the session message has neither a session nor the reason why not');
      return { refused: o.liveRefused.slice(0, 1000) };
    }
    try {
      return { record: checkLiveRecord(o.session, got.length), fds: got };
    } catch (e) {
      throw e instanceof LiveRecordError ? new HandoverRefused(`the session record is not valid: ${e.message}`) : e;
    }
  } catch (e) {
    // The caller answers the old host with the reason (Received.answer) and closes the connection.
    reader.close();
    for (const f of got) native.close(f);
    throw e instanceof HandoverRefused ? e : new HandoverRefused(errorText(e));
  }
}

function parseJson(b: Buffer): unknown {
  try {
    return JSON.parse(b.toString('utf8'));
  } catch (e) {
    throw new HandoverRefused(`the handover header is not JSON: ${errorText(e)}`);
  }
}

/** The header's shape; `deviceFds` fds of the device came with it. */
function checkHeader(h: unknown, deviceFds: number, version: 1 | 2): HandoverHeader {
  const o = h as Partial<HandoverHeader>;
  if (typeof o !== 'object' || o === null || o.magic !== HANDOVER_MAGIC) throw new HandoverRefused('the handover header is not a vhost-wasm handover');
  if (o.version !== version) throw new HandoverRefused(`handover format version ${String(o.version)}: this host reads versions 1 and 2 (the old and the new host are too far apart)`);
  if (!Array.isArray(o.fds) || o.fds.length !== deviceFds) throw new HandoverRefused(`the header names ${Array.isArray(o.fds) ? o.fds.length : 'no'} fds, ${deviceFds} came`);
  const seen = new Set<string>();
  for (const k of o.fds) {
    if (k !== 'listen' && k !== 'control' && k !== 'memory-disk') throw new HandoverRefused(`unknown handover fd "${String(k)}"`);
    if (seen.has(k)) throw new HandoverRefused(`handover fd "${k}" twice`);
    seen.add(k);
  }
  if (!seen.has('listen')) throw new HandoverRefused('no device socket was handed over');
  if (typeof o.pid !== 'number' || typeof o.label !== 'string' || typeof o.hostVersion !== 'string') throw new HandoverRefused('the handover header lacks pid, label or hostVersion');
  if (o.memoryDiskBytes !== undefined && (typeof o.memoryDiskBytes !== 'number' || !Number.isSafeInteger(o.memoryDiskBytes))) throw new HandoverRefused('the header\'s memoryDiskBytes is not a byte count');
  if (o.sessionOffered !== undefined && typeof o.sessionOffered !== 'boolean') throw new HandoverRefused('the header\'s sessionOffered is not true or false');
  return o as HandoverHeader;
}

/** Each device fd is what the header says it is. */
function checkDeviceFds(h: HandoverHeader, fds: number[]): void {
  for (const [i, k] of h.fds.entries()) {
    const fd = fds[i];
    if (k === 'memory-disk') {
      if (native.fdKind(fd) !== 'memfd') throw new HandoverRefused('the memory disk handed over is not a memfd');
      if (typeof h.memoryDiskBytes !== 'number' || native.fstat(fd).size !== h.memoryDiskBytes) throw new HandoverRefused('the memory disk handed over has another size than the header says');
    } else if (!native.isListeningUnixSocket(fd)) {
      throw new HandoverRefused(`the ${k} socket handed over is not a listening Unix stream socket`);
    }
  }
}
