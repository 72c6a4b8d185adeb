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
//   2. old: stops accepting (live: stops the session, live-handover.ts), connects to `to` (its
//      listener must be the process that asked: SO_PEERCRED pid) and sends the message: format
//      1, one header line with the fds attached (asked without `live`), or format 2, framed
//      (handover-wire.ts) with the session record and its fds;
//   3. new: checks everything, starts its device on the fds (live: rebuilds the session but
//      starts no ring) and, live, writes "ready\n"; the old host answers "go\n" and from then on
//      never runs the rings again; the new host starts them; then it writes "serving\n";
//   4. old: on "serving", closes its copies (the socket paths stay: they are the new host's
//      now; without a session it closes its front-end's connection), answers the RPC and
//      exits. On anything else before "go" (the new process failed and said why, died, or said
//      nothing in time) it restarts its rings, accepts again and serves on.

import { Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../native/index.ts';
import { VhostWasmError } from '../errors.ts';
import { errorText } from '../log/logger.ts';
import { checkLiveRecord, LiveRecordError, type LiveSessionRecord } from '../session/handover-record.ts';
import { FdReader, FRAME_MAGIC, MAX_FDS_TOTAL, MAX_RECORD_BYTES, PREFIX_BYTES, sendFramed } from './handover-wire.ts';

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
  /** Version 2: the connected front-end's session (its fds follow the device's), or null: it is let go and reconnects. */
  session?: unknown;
  /** Version 2: how many fds the session record names (after the device's). */
  sessionFds?: number;
  /** Version 2, no session: why it did not move live (for the log). */
  liveRefused?: string | null;
}
export type HandoverFd = 'listen' | 'control' | 'memory-disk';

export const HANDOVER_MAGIC = 'vhost-wasm-handover';
/** The header is small; more is refused. */
const MAX_HEADER = 4096;
const MAX_FDS = 3;
/** How long the old host waits for the new one to start its device on the fds. */
export const HANDOVER_DEADLINE_MS = 60_000;
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
  header: Omit<HandoverHeader, 'magic' | 'version' | 'fds' | 'session' | 'sessionFds'>;
  fds: { kind: HandoverFd; fd: number }[];
  /** Format 2 (the new host asked with `live`): the session moves when `session` is set. */
  format: 1 | 2;
  session?: { record: LiveSessionRecord; fds: number[] } | null;
}

/**
 * Old host, step 2 and 4: sends `src` to the process listening at `to`, which must be `peerPid`,
 * and waits for its verdict. Resolves when it serves; throws HandoverRefused when it did not
 * take the device (nothing of it runs there), HandoverLost when it went away after this host
 * let go of a live session.
 */
export async function sendHandover(to: string, peerPid: number, src: HandoverSource, deadlineMs = HANDOVER_DEADLINE_MS): Promise<void> {
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
  if (src.format === 1) {
    const header: HandoverHeader = { magic: HANDOVER_MAGIC, version: 1, ...src.header, fds: kinds };
    const bytes = Buffer.from(JSON.stringify(header) + '\n');
    // One small message on a fresh, empty socket: sendmsg takes it whole.
    const sent = native.sendMsg(fd, bytes, src.fds.map((f) => f.fd));
    if (sent !== bytes.length) {
      native.close(fd);
      throw new HandoverRefused(`the handover message did not go out whole (${sent} of ${bytes.length} bytes)`);
    }
  } else {
    const session = src.session ?? null;
    const header: HandoverHeader = {
      magic: HANDOVER_MAGIC,
      version: 2,
      ...src.header,
      fds: kinds,
      session: session?.record ?? null,
      sessionFds: session?.fds.length ?? 0,
    };
    try {
      await sendFramed(fd, header, [...src.fds.map((f) => f.fd), ...(session?.fds ?? [])]);
    } catch (e) {
      native.close(fd);
      throw new HandoverRefused(`sending the handover message: ${errorText(e)}`);
    }
  }
  const lines = new LineReader(new Socket({ fd, readable: true, writable: true }));
  try {
    const first = await lines.next(deadlineMs);
    if (src.format === 2 && src.session) {
      if (first !== 'ready') throw new HandoverRefused(verdictText(first));
      // From here the new host may start the rings: this host never runs them again unless it says it failed.
      lines.write('go\n');
      const last = await lines.next(START_DEADLINE_MS);
      if (last === 'serving') return;
      throw new HandoverLost(last === null ? 'the new host went away after this host let go of the session, before it said it serves' : `the new host did not start the session: ${last}`);
    }
    if (first === 'serving') return;
    throw new HandoverRefused(verdictText(first));
  } finally {
    lines.close();
  }
}

function verdictText(line: string | null): string {
  return line === null ? 'the new host went away before it served the device (it crashed or was stopped)' : `the new host did not take the device: ${line}`;
}

/** Lines from a socket (each without its newline, at most 1000 characters); null at EOF. */
class LineReader {
  private buf = '';
  private eof = false;
  private wake: (() => void) | null = null;

  constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      this.wake?.();
    });
    sock.on('end', () => this.ended());
    sock.on('error', () => this.ended());
    sock.on('close', () => this.ended());
  }

  private ended(): void {
    this.eof = true;
    this.wake?.();
  }

  async next(deadlineMs: number): Promise<string | null> {
    const until = Date.now() + deadlineMs;
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl >= 0) {
        const line = this.buf.slice(0, nl).slice(0, 1000);
        this.buf = this.buf.slice(nl + 1);
        return line;
      }
      if (this.buf.length > MAX_HEADER) return 'an answer line longer than 4 KiB';
      if (this.eof) return null;
      if (Date.now() >= until) return `no answer within ${Math.round(deadlineMs / 1000)} s`;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, until - Date.now());
        this.wake = () => {
          clearTimeout(timer);
          this.wake = null;
          resolve();
        };
      });
    }
  }

  write(s: string): void {
    if (!this.eof) this.sock.write(s);
  }

  /** Ends our side once what was written went out. */
  close(): void {
    this.sock.end();
    this.sock.on('finish', () => this.sock.destroy());
  }
}

/** New host: what it received. Fds it does not use must be closed by whoever took them. */
export interface Received {
  header: HandoverHeader;
  fds: Map<HandoverFd, number>;
  /** The front-end's session, checked for shape (its fds are the new host's to close if unused). */
  session: { record: LiveSessionRecord; fds: number[] } | null;
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
    let answered = false;
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
    const cred = native.peerCred(conn);
    if (cred.uid !== process.getuid!() && cred.uid !== 0) {
      native.close(conn);
      throw new HandoverRefused(`the handover came from uid ${cred.uid}, not this uid or root`);
    }
    const { header, fds, session } = await receiveMessage(conn, Date.now() + deadlineMs);
    const all = [...fds.values(), ...(session?.fds ?? [])];
    if (header.pid !== cred.pid) {
      for (const fd of all) native.close(fd);
      native.close(conn);
      throw new HandoverRefused(`the handover came from pid ${cred.pid}, but its header says pid ${header.pid}`);
    }
    const lines = new LineReader(createConnectionFromFd(conn));
    const received: Received = {
      header,
      fds,
      session,
      async ready() {
        if (answered) return false;
        lines.write('ready\n');
        return (await lines.next(deadlineMs)) === 'go';
      },
      answer(failure) {
        if (answered) return;
        answered = true;
        lines.write(`${failure === null ? 'serving' : failure.replace(/\n/g, ' ')}\n`);
        lines.close();
      },
    };
    return { received, outcome };
  } finally {
    native.close(lfd);
    rmSync(dir, { recursive: true, force: true });
  }
}

function createConnectionFromFd(fd: number): Socket {
  const s = new Socket({ fd, readable: true, writable: true });
  s.on('error', () => {});
  return s;
}

/** The first connection on `lfd` (rejected after `deadlineMs`); `cancel` stops waiting. */
function acceptOne(lfd: number, deadlineMs: number): { conn: Promise<number>; cancel(): void } {
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
  session: { record: LiveSessionRecord; fds: number[] } | null;
}

/**
 * Reads the old host's message, either format: version 1 is one JSON line with the device's
 * fds on its first byte (an old host of the release before live handover), version 2 is framed
 * (handover-wire.ts). Every fd is checked to be what the header says; on any failure every fd
 * received is closed, and so is `conn`.
 */
async function receiveMessage(conn: number, deadline: number): Promise<Message> {
  const reader = new FdReader(conn, deadline);
  let got: number[] = [];
  try {
    const prefix = await reader.read(PREFIX_BYTES, MAX_FDS, 'handover message');
    let header: HandoverHeader;
    let session: Message['session'] = null;
    if (prefix[0] === 0x7b /* '{': version 1 */) {
      let line = prefix;
      while (line.indexOf(10) < 0) {
        if (line.length >= MAX_HEADER) throw new HandoverRefused('the handover header is longer than 4 KiB');
        line = Buffer.concat([line, await reader.read(1, 0, 'handover header')]);
      }
      got = reader.take();
      header = checkHeader(parseJson(line.subarray(0, line.indexOf(10))), got.length, 1);
      checkDeviceFds(header, got);
    } else {
      if (!prefix.subarray(0, 4).equals(FRAME_MAGIC)) throw new HandoverRefused('the handover message is not a vhost-wasm handover');
      if (reader.fdCount > 0) throw new HandoverRefused('fds came with the handover message\'s prefix (they belong after the record)');
      const len = prefix.readUInt32LE(4);
      if (len > MAX_RECORD_BYTES) throw new HandoverRefused(`the handover record is ${len} bytes; at most ${MAX_RECORD_BYTES} are read`);
      const raw = parseJson(await reader.read(len, 0, 'handover record'));
      const o = raw as Partial<HandoverHeader>;
      const sessionFds = o?.sessionFds;
      if (typeof sessionFds !== 'number' || !Number.isSafeInteger(sessionFds) || sessionFds < 0 || sessionFds > MAX_FDS_TOTAL) {
        throw new HandoverRefused('the handover record\'s sessionFds is not a count of fds');
      }
      const deviceFds = Array.isArray(o.fds) ? o.fds.length : 0;
      if (deviceFds > MAX_FDS) throw new HandoverRefused(`the handover record names ${deviceFds} device fds; there are at most ${MAX_FDS}`);
      const total = deviceFds + sessionFds;
      while (reader.fdCount < total) {
        const before = reader.fdCount;
        await reader.read(1, Math.min(253, total - before), 'handover fds');
        if (reader.fdCount === before) throw new HandoverRefused(`an fd batch of the handover came without fds (${before} of ${total} received)`);
      }
      got = reader.take();
      header = checkHeader(raw, deviceFds, 2);
      checkDeviceFds(header, got.slice(0, deviceFds));
      if (header.session !== null && header.session !== undefined) {
        let record: LiveSessionRecord;
        try {
          record = checkLiveRecord(header.session, sessionFds);
        } catch (e) {
          throw e instanceof LiveRecordError ? new HandoverRefused(`the session record is not valid: ${e.message}`) : e;
        }
        session = { record, fds: got.slice(deviceFds) };
      } else if (sessionFds !== 0) {
        throw new HandoverRefused(`${sessionFds} session fds came without a session record`);
      }
    }
    return { header, fds: new Map(header.fds.map((k, i) => [k, got[i]])), session };
  } catch (e) {
    reader.close();
    for (const f of got) native.close(f);
    const refusal = e instanceof HandoverRefused ? e : new HandoverRefused(errorText(e));
    // The old host is told why (it serves on either way); a full socket just misses the reason.
    try {
      native.sendMsg(conn, Buffer.from(`${refusal.message.replace(/\n/g, ' ').slice(0, 1000)}\n`), []);
    } catch {
      // it went away
    }
    native.close(conn);
    throw refusal;
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
  if (o.liveRefused !== undefined && o.liveRefused !== null && typeof o.liveRefused !== 'string') throw new HandoverRefused('the header\'s liveRefused is not a string');
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
