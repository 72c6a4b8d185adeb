// Runs one fuzz case against a listening back-end over a real Unix socket: creates the fds each
// message names (memfds, eventfds, pipes, /dev/null, directories...), sends the raw messages,
// drives valid blk requests through a driver ring in real shared guest RAM, writes hostile ring
// contents, and reports what it observed. Oracles that need only the case (data against the
// shadow disk, the guard area, valid requests answered) are checked here; the host-wide ones
// (alive, probes, fds, log) are the runner's.

import { openSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../../host/native/index.ts';
import type { Watcher } from '../../host/native/api.ts';
import { BackendChannel } from '../../host/frontend/backend-channel.ts';
import { GuestRam } from '../../host/frontend/driver-memory.ts';
import { RangeAllocator } from '../../host/frontend/allocator.ts';
import { SplitDriverRing as DriverRing } from '../../host/frontend/rings/split.ts';
import type { DriverBuffer } from '../../host/frontend/rings/common.ts';
import { VIRTQ_DESC_F_WRITE } from '../../host/virtqueue/layout.ts';
import { HEADER_SIZE, FLAG_REPLY, VERSION } from '../../host/protocol/constants.ts';
import { Req } from '../../host/protocol/requests.ts';
import { frame } from '../../host/protocol/codec.ts';
import { BlkType, BlkStatus, SECTOR, VIRTIO_BLK_ID_BYTES } from '../../host/frontend/blk.ts';
import { Prng } from './prng.ts';
import { unhex, type BlkOp, type BlkReq, type FdSpec, type Finding, type FuzzCase, type MsgOp, type RingOp } from './case.ts';
import { DATA_END, DATA_GPA, GUARD_BYTE, GUARD_END, GUARD_GPA, RAM_BYTES, RING_GPA, SCRATCH_BYTE, SCRATCH_END, SCRATCH_GPA } from './guest-layout.ts';

export interface CaseStats {
  messages: number;
  requests: number;
  readsVerified: number;
  ringOps: number;
}

export interface CaseResult {
  finding: Finding | null;
  stats: CaseStats;
  /** Why the host closed our connection, when it did. */
  closedBy: string | null;
}

const SYNC_TIMEOUT_MS = 2000;
const MUST_TIMEOUT_MS = 10_000;
const BEST_EFFORT_TIMEOUT_MS = 300;

/** The control socket, raw: bytes and fds out, every incoming message parsed and queued. */
class RawSocket {
  private buf = new Uint8Array(0);
  private readonly incoming: { code: number; flags: number; fds: number[] }[] = [];
  private pendingFds: number[] = [];
  private watcher: Watcher | null;
  eof = false;
  private wake: (() => void) | null = null;

  constructor(readonly fd: number) {
    this.watcher = native.watch(fd, 'r', () => this.onReadable());
  }

  private onReadable(): void {
    const chunk = new Uint8Array(65536);
    for (;;) {
      let r;
      try {
        r = native.recvMsg(this.fd, chunk, 8);
      } catch {
        this.hangUp();
        return;
      }
      if (r === null) break;
      this.pendingFds.push(...r.fds);
      if (r.bytes === 0) {
        this.hangUp();
        return;
      }
      const next = new Uint8Array(this.buf.length + r.bytes);
      next.set(this.buf);
      next.set(chunk.subarray(0, r.bytes), this.buf.length);
      this.buf = next;
      this.parse();
    }
    this.wake?.();
  }

  private parse(): void {
    while (this.buf.length >= HEADER_SIZE) {
      const dv = new DataView(this.buf.buffer, this.buf.byteOffset);
      const size = dv.getUint32(8, true);
      if (this.buf.length < HEADER_SIZE + size) return;
      this.incoming.push({ code: dv.getUint32(0, true), flags: dv.getUint32(4, true), fds: this.pendingFds });
      this.pendingFds = [];
      this.buf = this.buf.slice(HEADER_SIZE + size);
    }
  }

  private hangUp(): void {
    this.eof = true;
    this.watcher?.close();
    this.watcher = null;
    this.wake?.();
  }

  /** Sends all of `bytes` (fds with the first byte); false when the peer is gone. */
  async send(bytes: Uint8Array, fds: number[]): Promise<boolean> {
    let off = 0;
    const deadline = Date.now() + SYNC_TIMEOUT_MS;
    while (off < bytes.length) {
      let n: number;
      try {
        n = native.sendMsg(this.fd, off === 0 ? bytes : bytes.subarray(off), off === 0 ? fds : []);
      } catch {
        return false;
      }
      if (n < 0) {
        // The host is not reading us (it may be waiting for a payload we lied about).
        if (Date.now() > deadline || this.eof) return false;
        await sleep(2);
        continue;
      }
      off += n;
    }
    return true;
  }

  /** The next reply to `code` (other messages are dropped); null on timeout or hang-up. */
  async reply(code: number, timeoutMs: number): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      while (this.incoming.length > 0) {
        const m = this.incoming.shift()!;
        for (const fd of m.fds) closeQuietly(fd);
        if (m.code === code && (m.flags & FLAG_REPLY) !== 0) return true;
      }
      if (this.eof || Date.now() > end) return false;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, Math.max(1, end - Date.now()));
      });
      this.wake = null;
    }
  }

  close(): void {
    this.watcher?.close();
    this.watcher = null;
    for (const m of this.incoming) for (const fd of m.fds) closeQuietly(fd);
    for (const fd of this.pendingFds) closeQuietly(fd);
    closeQuietly(this.fd);
  }
}

function closeQuietly(fd: number): void {
  try {
    native.close(fd);
  } catch {
    // already closed
  }
}

/** Bytes of a write request's data, from its fill seed (so a read can be checked without storing them). */
function fillBytes(seed: number, len: number): Uint8Array {
  return new Prng(`fill:${seed}`).bytes(len);
}

/** Cuts n into k near-equal positive pieces. */
function split(n: number, k: number): number[] {
  const parts = Math.max(1, Math.min(k, n));
  const base = Math.floor(n / parts);
  return Array.from({ length: parts }, (_, i) => (i < n % parts ? base + 1 : base));
}

const lingering: number[] = [];

/** Closes the fds kept open past their case; the runner calls it once the oracles have run. */
export function releaseLingering(): void {
  for (const fd of lingering.splice(0)) closeQuietly(fd);
}

class CaseRun {
  readonly stats: CaseStats = { messages: 0, requests: 0, readsVerified: 0, ringOps: 0 };
  private readonly ram: GuestRam;
  private readonly ring: DriverRing;
  private readonly alloc = new RangeAllocator(DATA_GPA, DATA_END - DATA_GPA);
  private readonly kick = native.eventfd(0);
  private readonly call = native.eventfd(0);
  private readonly err = native.eventfd(0);
  /** Fds that must outlive their message until the case ends (pipe peers, our socket ends). */
  private readonly keep: number[] = [];
  private readonly backends: BackendChannel[] = [];
  private readonly sock: RawSocket;
  /** sector -> the 512 bytes a valid write put there during this case. */
  private readonly shadow = new Map<number, Uint8Array>();
  /** Hostile ring contents were written: the driver ring's own bookkeeping no longer holds. */
  private poisoned = false;
  /** Guest ranges some hostile writable descriptor names: the device may write there. */
  private readonly writableRanges: [bigint, bigint][] = [];
  private tmp: string | null = null;
  /** Our call eventfd is the ring's call fd (the last SET_VRING_CALL sent it): notifications are owed to it. */
  private callOurs = false;
  /** Write ends of pipes whose read end went to the host (as a kick fd, say): a kick writes them too. */
  private readonly pipePeers: number[] = [];

  constructor(readonly c: FuzzCase, socketPath: string) {
    this.ram = GuestRam.create({ bytes: RAM_BYTES, name: 'vhost-wasm-fuzz' });
    const layout = DriverRing.layoutFor(c.queue.size, c.queue.indirect);
    this.ring = new DriverRing({
      size: c.queue.size, memory: this.ram.view(RING_GPA, layout.bytes), gpa: RING_GPA, eventIdx: c.queue.eventIdx, indirectEntries: c.queue.indirect,
    });
    this.ram.view(SCRATCH_GPA, SCRATCH_END - SCRATCH_GPA).fill(SCRATCH_BYTE);
    this.ram.view(GUARD_GPA, GUARD_END - GUARD_GPA).fill(GUARD_BYTE);
    this.sock = new RawSocket(native.connectUnix(socketPath));
  }

  get hungUp(): boolean {
    return this.sock.eof;
  }

  private makeFd(spec: FdSpec): { fd: number; ours: boolean } {
    switch (spec.kind) {
      case 'ram':
        return { fd: this.ram.regions[0].fd, ours: false };
      case 'kick':
        return { fd: this.kick, ours: false };
      case 'call':
        return { fd: this.call, ours: false };
      case 'err':
        return { fd: this.err, ours: false };
      case 'eventfd':
        return { fd: native.eventfd(0), ours: true };
      case 'memfd': {
        const fd = native.memfdCreate('vhost-wasm-fuzz-small', false);
        native.ftruncate(fd, spec.size);
        return { fd, ours: true };
      }
      case 'pipe': {
        const [r, w] = native.pipe2();
        // A full pipe's reader stays open past the case (as a front-end that never reads keeps
        // it): closing it would turn a blocked write in the host into EPIPE and hide the wedge.
        (spec.full ? lingering : this.keep).push(r);
        if (spec.full) {
          const chunk = new Uint8Array(65536);
          while (native.write(w, chunk) > 0) {
            // fill until the pipe would block
          }
          // Blocking, as a careless front-end's pipe is: a write into it never returns.
          native.setNonBlocking(w, false);
        }
        return { fd: w, ours: true };
      }
      case 'pipe-read': {
        const [r, w] = native.pipe2();
        this.keep.push(w);
        this.pipePeers.push(w);
        return { fd: r, ours: true };
      }
      case 'socket': {
        const [ours, theirs] = native.socketpair();
        // Serve our end as a front-end would: back-end requests are read and answered.
        this.backends.push(new BackendChannel(ours));
        return { fd: theirs, ours: true };
      }
      case 'devnull':
        return { fd: openSync('/dev/null', 'r+'), ours: true };
      case 'devzero':
        return { fd: openSync('/dev/zero', 'r+'), ours: true };
      case 'dir':
        return { fd: openSync(tmpdir(), 'r'), ours: true };
      case 'file': {
        this.tmp ??= mkdtempSync(join(tmpdir(), 'vhost-wasm-fuzz-'));
        const p = join(this.tmp, `f${this.keep.length}`);
        writeFileSync(p, new Uint8Array(spec.size));
        return { fd: openSync(p, 'r+'), ours: true };
      }
    }
  }

  async msg(op: MsgOp): Promise<boolean> {
    const payload = unhex(op.payload);
    const bytes = frame(op.code, op.flags, payload);
    if (op.size !== undefined) new DataView(bytes.buffer).setUint32(8, op.size >>> 0, true);
    const made = op.fds.slice(0, 8).map((s) => this.makeFd(s));
    if (op.code === Req.SET_VRING_CALL && payload.length === 8) {
      const u = new DataView(payload.buffer, payload.byteOffset).getBigUint64(0, true);
      if ((u & 0xffn) === 0n) this.callOurs = u === 0n && op.fds.length === 1 && op.fds[0].kind === 'call';
    }
    try {
      this.stats.messages++;
      return await this.sock.send(bytes, made.map((m) => m.fd));
    } finally {
      for (const m of made) if (m.ours) closeQuietly(m.fd);
    }
  }

  async sync(): Promise<boolean> {
    this.stats.messages++;
    if (!(await this.sock.send(frame(Req.GET_FEATURES, VERSION), []))) return false;
    return this.sock.reply(Req.GET_FEATURES, SYNC_TIMEOUT_MS);
  }

  kickRing(): void {
    native.eventfdWrite(this.kick, 1);
    for (const w of this.pipePeers) {
      try {
        native.write(w, new Uint8Array(8).fill(1));
      } catch {
        // The host closed its end (EPIPE): nothing left to kick.
      }
    }
  }

  /** Valid blk requests; returns a finding when a must-answer request was not answered right. */
  async blk(op: BlkOp): Promise<Finding | null> {
    if (this.poisoned || this.sock.eof) return null;
    interface Sub { req: BlkReq; block: number; dataGpa: number; dataLen: number; statusGpa: number; head: number }
    const subs: Sub[] = [];
    // Only what these requests cause counts; cleared before the first is published, since a
    // device still busy may take it without a kick and notify at once.
    native.eventfdRead(this.call);
    for (const req of op.reqs) {
      const dataLen = req.type === 'read' || req.type === 'write' ? req.sectors * SECTOR : req.type === 'get-id' ? VIRTIO_BLK_ID_BYTES : 0;
      const block = this.alloc.alloc(16 + dataLen + 16, 16);
      if (block < 0) break;
      const hdr = this.ram.view(block, 16);
      const dv = new DataView(hdr.buffer, hdr.byteOffset, 16);
      dv.setUint32(0, { read: BlkType.IN, write: BlkType.OUT, flush: BlkType.FLUSH, 'get-id': BlkType.GET_ID }[req.type], true);
      dv.setUint32(4, 0, true);
      dv.setBigUint64(8, BigInt(req.sector), true);
      const dataGpa = block + 16;
      const statusGpa = dataGpa + dataLen;
      this.ram.view(statusGpa, 1)[0] = 0xff;
      const readable: DriverBuffer[] = [{ gpa: block, len: 16 }];
      const writable: DriverBuffer[] = [];
      let g = dataGpa;
      for (const n of dataLen > 0 ? split(dataLen, req.segments) : []) {
        (req.type === 'write' ? readable : writable).push({ gpa: g, len: n });
        g += n;
      }
      if (req.type === 'write') this.ram.view(dataGpa, dataLen).set(fillBytes(req.fill, dataLen));
      else if (dataLen > 0) this.ram.view(dataGpa, dataLen).fill(0xee);
      writable.push({ gpa: statusGpa, len: 1 });
      const head = this.ring.add(readable, writable, { indirect: req.indirect && this.c.queue.indirect >= readable.length + writable.length });
      if (head === null) {
        this.alloc.free(block);
        break;
      }
      subs.push({ req, block, dataGpa, dataLen, statusGpa, head });
    }
    if (subs.length === 0) return null;
    this.stats.requests += subs.length;
    if (this.ring.kickNeeded()) native.eventfdWrite(this.kick, 1);
    const pending = new Map(subs.map((s) => [s.head, s]));
    const end = Date.now() + (op.must ? MUST_TIMEOUT_MS : BEST_EFFORT_TIMEOUT_MS);
    const usedIdx = () => {
      const v = this.ram.view(RING_GPA + this.ring.layout.usedOffset, 4);
      return new DataView(v.buffer, v.byteOffset, 4).getUint16(2, true);
    };
    // With our call eventfd in place, reap only after a notification: reaping first would move
    // used_event past what the device just published, and EVENT_IDX would then rightly let it
    // skip the notification this oracle waits for.
    const waitCall = op.must && this.callOurs;
    let seenIdx = usedIdx();
    /** Entries arrived while notifications were being re-armed: reap them without waiting. */
    let more = false;
    while (pending.size > 0) {
      if (waitCall && !more && native.eventfdRead(this.call) <= 0) {
        if (Date.now() > end || this.sock.eof) {
          this.poisoned = true;
          if (usedIdx() !== seenIdx) return { oracle: 'missing-notification', detail: `the device published used entries (used idx ${seenIdx} -> ${usedIdx()}) but never signalled the call eventfd` };
          const what = [...pending.values()].map((s) => `${s.req.type}@${s.req.sector}+${s.req.sectors}`).join(', ');
          return { oracle: 'valid-unanswered', detail: `${pending.size} valid request(s) of a valid session never completed (${what})${this.sock.eof ? '; the host closed the connection' : ''}` };
        }
        await sleep(1);
        continue;
      }
      let used;
      try {
        used = this.ring.getUsed();
      } catch (e) {
        this.poisoned = true;
        return op.must ? { oracle: 'used-ring-garbage', detail: `valid requests got a bad used ring: ${(e as Error).message}` } : null;
      }
      seenIdx = (seenIdx + used.length) & 0xffff;
      // As a driver must (virtqueue_enable_cb): re-arm, then look again, or an entry published
      // between our read of used idx and the used_event store is never notified, rightly.
      more = this.ring.enableInterrupts();
      for (const u of used) {
        const s = pending.get(u.head);
        if (s === undefined) continue;
        pending.delete(u.head);
        const f = this.complete(s, op.must);
        if (f !== null) return f;
      }
      if (pending.size === 0) break;
      if (Date.now() > end || this.sock.eof) {
        this.poisoned = true;
        if (!op.must) return null;
        const what = [...pending.values()].map((s) => `${s.req.type}@${s.req.sector}+${s.req.sectors}`).join(', ');
        return { oracle: 'valid-unanswered', detail: `${pending.size} valid request(s) of a valid session never completed (${what})${this.sock.eof ? '; the host closed the connection' : ''}` };
      }
      await sleep(1);
    }
    return null;
  }

  private complete(s: { req: BlkReq; block: number; dataGpa: number; dataLen: number; statusGpa: number }, must: boolean): Finding | null {
    const status = this.ram.view(s.statusGpa, 1)[0];
    const { req } = s;
    const sectors = Array.from({ length: req.sectors }, (_, i) => req.sector + i);
    if (req.type === 'write') {
      if (status === BlkStatus.OK) {
        const data = fillBytes(req.fill, s.dataLen);
        sectors.forEach((sec, i) => this.shadow.set(sec, data.slice(i * SECTOR, (i + 1) * SECTOR)));
      } else {
        for (const sec of sectors) this.shadow.delete(sec);
      }
    } else if (req.type === 'read' && status === BlkStatus.OK && must) {
      const got = this.ram.view(s.dataGpa, s.dataLen);
      for (let i = 0; i < sectors.length; i++) {
        const want = this.shadow.get(sectors[i]);
        if (want === undefined) continue;
        this.stats.readsVerified++;
        const have = got.subarray(i * SECTOR, (i + 1) * SECTOR);
        if (Buffer.compare(Buffer.from(want), Buffer.from(have)) !== 0) {
          return { oracle: 'data-mismatch', detail: `read of sector ${sectors[i]} returned bytes other than the last write put there` };
        }
      }
    }
    if (must && status !== BlkStatus.OK && status !== BlkStatus.IOERR && status !== BlkStatus.UNSUPP) {
      return { oracle: 'bad-status', detail: `${req.type} at sector ${req.sector} completed with status byte ${status}` };
    }
    this.alloc.free(s.block);
    return null;
  }

  ringOp(op: RingOp): void {
    this.poisoned = true;
    this.stats.ringOps++;
    const size = this.c.queue.size;
    const layout = this.ring.layout;
    for (const p of op.poke ?? []) this.ram.view(p.gpa, p.hex.length / 2).set(unhex(p.hex));
    const writeDescs = (gpa: number, descs: [number, { addr: string; len: number; flags: number; next: number }][]) => {
      for (const [slot, d] of descs) {
        const addr = BigInt.asUintN(64, BigInt(`0x${d.addr}`));
        if ((d.flags & VIRTQ_DESC_F_WRITE) !== 0) this.writableRanges.push([addr, addr + BigInt(d.len >>> 0)]);
        const v = this.ram.view(gpa + slot * 16, 16);
        const dv = new DataView(v.buffer, v.byteOffset, 16);
        dv.setBigUint64(0, BigInt.asUintN(64, BigInt(`0x${d.addr}`)), true);
        dv.setUint32(8, d.len >>> 0, true);
        dv.setUint16(12, d.flags & 0xffff, true);
        dv.setUint16(14, d.next & 0xffff, true);
      }
    };
    if (op.table) writeDescs(op.table.gpa, op.table.descs.map((d, i) => [i, d]));
    writeDescs(RING_GPA + layout.descOffset, op.descs);
    const avail = this.ram.view(RING_GPA + layout.availOffset, 4 + 2 * size);
    const av = new DataView(avail.buffer, avail.byteOffset, avail.byteLength);
    let idx = av.getUint16(2, true);
    for (const h of op.heads) {
      av.setUint16(4 + 2 * (idx % size), h & 0xffff, true);
      idx = (idx + 1) & 0xffff;
    }
    av.setUint16(2, (idx + op.jump) & 0xffff, true);
  }

  /** The guard area is named by no writable descriptor (bar the ranges recorded): any other change is a write the device must not make. */
  guardIntact(): Finding | null {
    const g = this.ram.view(GUARD_GPA, GUARD_END - GUARD_GPA);
    for (let i = 0; i < g.length; i++) {
      if (g[i] !== GUARD_BYTE) {
        const gpa = BigInt(GUARD_GPA + i);
        if (this.writableRanges.some(([a, e]) => gpa >= a && gpa < e)) continue;
        return { oracle: 'guard-written', detail: `guest byte at GPA 0x${(GUARD_GPA + i).toString(16)} changed to 0x${g[i].toString(16)}; only readable descriptors name it` };
      }
    }
    return null;
  }

  close(): void {
    this.sock.close();
    for (const b of this.backends) b.close();
    for (const fd of this.keep) closeQuietly(fd);
    closeQuietly(this.kick);
    closeQuietly(this.call);
    closeQuietly(this.err);
    this.ram.close();
    if (this.tmp) rmSync(this.tmp, { recursive: true, force: true });
  }
}

/**
 * Runs `c` against the back-end at `socketPath` and closes the connection. The guard is checked
 * only when the case did not alias guest RAM (mem-layout, short-memfd offsets map the RAM file
 * at other guest addresses, where writable buffers may legitimately land in the guard's bytes).
 */
export async function executeCase(c: FuzzCase, socketPath: string): Promise<CaseResult> {
  const run = new CaseRun(c, socketPath);
  let finding: Finding | null = null;
  try {
    for (const op of c.ops) {
      if (run.hungUp) break;
      if (op.t === 'msg') {
        if (!(await run.msg(op))) break;
      } else if (op.t === 'sync') {
        if (!(await run.sync())) break;
      } else if (op.t === 'kick') {
        run.kickRing();
      } else if (op.t === 'ring') {
        run.ringOp(op);
      } else if (op.t === 'blk') {
        finding = await run.blk(op);
        if (finding) break;
      }
    }
    const aliases = c.classes.includes('mem-layout') || c.classes.includes('short-memfd');
    if (finding === null && !aliases) finding = run.guardIntact();
    return { finding, stats: run.stats, closedBy: run.hungUp ? 'host' : null };
  } finally {
    run.close();
  }
}

