// Host upgrade (docs/upgrade.md, "Host upgrade"): a new host process takes a running device over
// from the old one. What moves between the processes, over a Unix socket with SCM_RIGHTS, is
// what outlives a vhost-user connection: the listening device socket, the control socket and a
// memory:SIZE disk's memfd. The front-end's connection does not move: the old host closes it
// once the new one accepts on the same listening socket, and the front-end reconnects
// (QEMU: `-chardev socket,...,reconnect=1` / `reconnect-ms=`) and hands the new host its
// inflight area, from which requests the old host had in flight are resubmitted.
//
// The exchange, driven by the new process (`vhost-wasm --socket-path S ... --take-over`):
//   1. new: listens on a private socket (a fresh 0700 directory) and asks the old host, over its
//      control socket, for `host-handover` with `to` = that socket;
//   2. old: stops accepting, connects to `to` (its listener must be the process that asked:
//      SO_PEERCRED pid), sends one header line with the fds attached;
//   3. new: checks the fds, starts its device on them and accepts; then writes "serving\n";
//   4. old: on "serving", closes its copies (the socket paths stay: they are the new host's
//      now) and its front-end's connection, answers the RPC and exits. On anything else (the
//      new process failed and said why, died, or said nothing in time) it accepts again and
//      serves on: its front-end was never stopped.

import { Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../native/index.ts';
import { VhostWasmError } from '../errors.ts';
import { errorText } from '../log/logger.ts';

/** First line of the old host's message: names the fds that come with it, in order. */
export interface HandoverHeader {
  magic: 'vhost-wasm-handover';
  version: 1;
  /** The old host's pid and version, for the log. */
  pid: number;
  hostVersion: string;
  /** Device label (its socket path). */
  label: string;
  /** What each attached fd is. */
  fds: HandoverFd[];
  /** A memory disk's size in bytes, when one of the fds is it. */
  memoryDiskBytes?: number;
}
export type HandoverFd = 'listen' | 'control' | 'memory-disk';

export const HANDOVER_MAGIC = 'vhost-wasm-handover';
/** The header is small; more is refused. */
const MAX_HEADER = 4096;
const MAX_FDS = 3;
/** How long the old host waits for the new one to start its device on the fds. */
export const HANDOVER_DEADLINE_MS = 60_000;

export class HandoverRefused extends VhostWasmError {
  static override readonly code = 'ERR_HANDOVER_REFUSED';
  override readonly name = 'HandoverRefused';
}

/** What the old host hands over. */
export interface HandoverSource {
  header: Omit<HandoverHeader, 'magic' | 'version' | 'fds'>;
  fds: { kind: HandoverFd; fd: number }[];
}

/**
 * Old host, step 2 and 4: sends `src` to the process listening at `to`, which must be `peerPid`,
 * and waits for its verdict. Resolves when it serves; throws HandoverRefused otherwise.
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
  const header: HandoverHeader = { magic: HANDOVER_MAGIC, version: 1, ...src.header, fds: src.fds.map((f) => f.kind) };
  const bytes = Buffer.from(JSON.stringify(header) + '\n');
  // One small message on a fresh, empty socket: sendmsg takes it whole.
  const sent = native.sendMsg(fd, bytes, src.fds.map((f) => f.fd));
  if (sent !== bytes.length) {
    native.close(fd);
    throw new HandoverRefused(`the handover message did not go out whole (${sent} of ${bytes.length} bytes)`);
  }
  const verdict = await readLine(new Socket({ fd, readable: true, writable: true }), deadlineMs);
  if (verdict === 'serving') return;
  throw new HandoverRefused(verdict === null ? 'the new host went away before it served the device (it crashed or was stopped)' : `the new host did not take the device: ${verdict}`);
}

/** The first line from `sock` (without its newline), or null at EOF; the socket is closed after. */
function readLine(sock: Socket, deadlineMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    let buf = '';
    const done = (v: string | null) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(`no answer within ${deadlineMs / 1000} s`), deadlineMs);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) done(buf.slice(0, nl).slice(0, 1000));
      else if (buf.length > MAX_HEADER) done('an answer line longer than 4 KiB');
    });
    sock.on('end', () => done(null));
    sock.on('error', () => done(null));
  });
}

/** New host: what it received. Fds it does not use must be closed by whoever took them. */
export interface Received {
  header: HandoverHeader;
  fds: Map<HandoverFd, number>;
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
    const { header, fds } = await receiveHeader(conn, deadlineMs);
    if (header.pid !== cred.pid) {
      for (const fd of fds.values()) native.close(fd);
      native.close(conn);
      throw new HandoverRefused(`the handover came from pid ${cred.pid}, but its header says pid ${header.pid}`);
    }
    const sock = createConnectionFromFd(conn);
    const received: Received = {
      header,
      fds,
      answer(failure) {
        if (answered) return;
        answered = true;
        sock.end(`${failure === null ? 'serving' : failure.replace(/\n/g, ' ')}\n`);
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

/** Reads the header line and its fds; every fd is checked to be what the header says. */
function receiveHeader(conn: number, deadlineMs: number): Promise<{ header: HandoverHeader; fds: Map<HandoverFd, number> }> {
  return new Promise((resolve, reject) => {
    const got: number[] = [];
    let buf = Buffer.alloc(0);
    const fail = (why: string) => {
      w.close();
      clearTimeout(timer);
      for (const f of got) native.close(f);
      native.close(conn);
      reject(new HandoverRefused(why));
    };
    const timer = setTimeout(() => fail(`no handover message within ${deadlineMs / 1000} s`), deadlineMs);
    const w = native.watch(conn, 'r', () => {
      const chunk = Buffer.alloc(MAX_HEADER);
      let r;
      try {
        r = native.recvMsg(conn, chunk, MAX_FDS);
      } catch (e) {
        return fail(`reading the handover message: ${errorText(e)}`);
      }
      if (r === null) return;
      got.push(...r.fds);
      if (r.fdsTruncated) return fail(`the old host sent more than ${MAX_FDS} fds`);
      if (r.bytes === 0) return fail('the old host closed the connection before its message was complete');
      buf = Buffer.concat([buf, chunk.subarray(0, r.bytes)]);
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length >= MAX_HEADER) fail('the handover header is longer than 4 KiB');
        return;
      }
      w.close();
      clearTimeout(timer);
      let header: HandoverHeader;
      try {
        header = checkHeader(JSON.parse(buf.subarray(0, nl).toString('utf8')), got);
      } catch (e) {
        for (const f of got) native.close(f);
        native.close(conn);
        return reject(e instanceof HandoverRefused ? e : new HandoverRefused(`the handover header is not JSON: ${errorText(e)}`));
      }
      resolve({ header, fds: new Map(header.fds.map((k, i) => [k, got[i]])) });
    });
  });
}

function checkHeader(h: unknown, fds: number[]): HandoverHeader {
  const o = h as Partial<HandoverHeader>;
  if (typeof o !== 'object' || o === null || o.magic !== HANDOVER_MAGIC) throw new HandoverRefused('the handover header is not a vhost-wasm handover');
  if (o.version !== 1) throw new HandoverRefused(`handover format version ${String(o.version)}: this host reads version 1 (the old and the new host are too far apart)`);
  if (!Array.isArray(o.fds) || o.fds.length !== fds.length) throw new HandoverRefused(`the header names ${Array.isArray(o.fds) ? o.fds.length : 'no'} fds, ${fds.length} came`);
  const seen = new Set<string>();
  for (const [i, k] of o.fds.entries()) {
    if (k !== 'listen' && k !== 'control' && k !== 'memory-disk') throw new HandoverRefused(`unknown handover fd "${String(k)}"`);
    if (seen.has(k)) throw new HandoverRefused(`handover fd "${k}" twice`);
    seen.add(k);
    const fd = fds[i];
    if (k === 'memory-disk') {
      if (native.fdKind(fd) !== 'memfd') throw new HandoverRefused('the memory disk handed over is not a memfd');
      if (typeof o.memoryDiskBytes !== 'number' || native.fstat(fd).size !== o.memoryDiskBytes) throw new HandoverRefused('the memory disk handed over has another size than the header says');
    } else if (!native.isListeningUnixSocket(fd)) {
      throw new HandoverRefused(`the ${k} socket handed over is not a listening Unix stream socket`);
    }
  }
  if (!seen.has('listen')) throw new HandoverRefused('no device socket was handed over');
  if (typeof o.pid !== 'number' || typeof o.label !== 'string' || typeof o.hostVersion !== 'string') throw new HandoverRefused('the handover header lacks pid, label or hostVersion');
  return o as HandoverHeader;
}
