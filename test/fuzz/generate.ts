// The structure-aware generator: a seed becomes one concrete case. It starts from what QEMU
// sends (the handshake of vhost_user_backend_init / vhost_dev_start, with real memfds and
// eventfds) and then mutates that structure: header fields, payload fields at their
// boundaries, the number and kind of fds, message order, extra requests mid-session, and
// hostile ring contents, beside valid blk requests that are checked against a shadow disk.
//
// Every mutation belongs to a named class. A run can exclude classes (KNOWN_OPEN), and a case
// records the classes it used, so a reproducer says which switch it belongs to.

import { SplitDriverRing as DriverRing } from '../../host/frontend/rings/split.ts';
import { encodeRequest } from '../../host/protocol/codec.ts';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, ProtocolFeature, VERSION, VHOST_F_LOG_ALL, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_VRING_F_LOG, featureBit,
} from '../../host/protocol/constants.ts';
import { Req } from '../../host/protocol/requests.ts';
import type { FrontendRequest } from '../../host/protocol/messages.ts';
import { VIRTQ_DESC_F_INDIRECT as INDIRECT, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE } from '../../host/virtqueue/layout.ts';
import { CASE_FORMAT, classesOf, hex, type BlkOp, type BlkReq, type FdSpec, type FuzzCase, type MsgOp, type Op, type RawDesc, type RingOp } from './case.ts';
import {
  DISK_SECTORS, GUARD_END, GUARD_GPA, RAM_BYTES, RING_GPA, SCRATCH_END, SCRATCH_GPA, UVA_BASE,
} from './guest-layout.ts';
import { Prng } from './prng.ts';

/** Every mutation class the generator knows, so switches can be checked for typos. */
export const CLASSES = [
  // message structure
  'hdr-size', 'hdr-flags', 'unknown-code', 'payload-length', 'field-boundary', 'bitflip', 'fd-count', 'fd-kind', 'order',
  'extra-request', 'mem-layout', 'need-reply-no-ack',
  // fds whose kind matters to the host
  'short-memfd', 'short-log', 'log-base', 'blocking-notify-fd', 'notify-fd-kind', 'kick-fd-kind', 'backend-req-fd-kind', 'mem-fd-kind',
  // ring contents
  'desc-loop', 'desc-next-range', 'desc-addr-range', 'desc-len-overflow', 'indirect-nested', 'indirect-len', 'indirect-addr',
  'indirect-next', 'head-range', 'avail-jump', 'write-then-read', 'guard-readonly', 'zero-len', 'duplicate-head', 'random-descs',
] as const;
export type MutationClass = (typeof CLASSES)[number];

export interface GenOptions {
  /** Classes never generated (a case that would need one picks something else). */
  exclude?: ReadonlySet<string>;
}

// Virtio feature bits (the blk plugin offers these; LOG_ALL and RING_PACKED are left to mutations).
const F = { SIZE_MAX: 1, SEG_MAX: 2, BLK_SIZE: 6, FLUSH: 9, MQ: 12, INDIRECT: 28, EVENT_IDX: 29, VERSION_1: 32 } as const;
const bit = (b: number) => 1n << BigInt(b);

const U32_EDGES = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const U64_EDGES = [0n, 1n, 0xfffn, 0x1000n, 0xffffffffn, 0x100000000n, 0x7fffffffffffffffn, 0x8000000000000000n, 0xfffffffffffff000n, 0xffffffffffffffffn];

class Builder {
  readonly classes = new Set<string>();
  constructor(readonly r: Prng, private readonly exclude: ReadonlySet<string>) {}

  allowed(c: MutationClass): boolean {
    return !this.exclude.has(c);
  }

  /** Picks one allowed class of `cs` (weights equal), or null when all are excluded. */
  pickClass(cs: readonly MutationClass[]): MutationClass | null {
    const ok = cs.filter((c) => this.allowed(c));
    return ok.length === 0 ? null : this.r.pick(ok);
  }

  /** Records that `c` made `ops` (tags each op, so a shrunk case knows its classes). */
  use(c: MutationClass, ...ops: (MsgOp | RingOp)[]): void {
    this.classes.add(c);
    for (const op of ops) op.cls = [...new Set([...(op.cls ?? []), c])];
  }
}

/** A typed request as a MsgOp; the fds in `req` are placeholders, `fds` says what to attach. */
function msg(req: FrontendRequest, fds: FdSpec[], needReply: boolean): MsgOp {
  const e = encodeRequest(req, needReply);
  const dv = new DataView(e.bytes.buffer, e.bytes.byteOffset);
  return { t: 'msg', code: req.code, flags: dv.getUint32(4, true), payload: hex(e.bytes.subarray(12)), fds };
}

interface Session {
  features: bigint;
  protocol: bigint;
  replyAck: boolean;
  queue: FuzzCase['queue'];
  addr: { desc: bigint; avail: bigint; used: bigint; usedGpa: bigint };
}

function chooseSession(b: Builder): Session {
  const r = b.r;
  let features = bit(F.VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
  for (const f of [F.SIZE_MAX, F.SEG_MAX, F.BLK_SIZE, F.FLUSH, F.MQ, F.INDIRECT, F.EVENT_IDX]) if (r.chance(0.6)) features |= bit(f);
  let protocol = featureBit(ProtocolFeature.MQ) | featureBit(ProtocolFeature.CONFIG) | featureBit(ProtocolFeature.STATUS) | featureBit(ProtocolFeature.RESET_DEVICE);
  const replyAck = r.chance(0.85);
  if (replyAck) protocol |= featureBit(ProtocolFeature.REPLY_ACK);
  if (r.chance(0.5)) protocol |= featureBit(ProtocolFeature.LOG_SHMFD);
  if (r.chance(0.4)) protocol |= featureBit(ProtocolFeature.BACKEND_REQ);
  if (r.chance(0.4)) protocol |= featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS);
  const size = r.pick([4, 16, 64, 256]);
  const indirect = (features & bit(F.INDIRECT)) !== 0n ? r.pick([4, 8, 16]) : 0;
  const l = DriverRing.layoutFor(size, indirect);
  const uva = (gpa: number) => BigInt(UVA_BASE + RING_GPA + gpa);
  return {
    features, protocol, replyAck,
    queue: { size, eventIdx: (features & bit(F.EVENT_IDX)) !== 0n, indirect },
    addr: { desc: uva(l.descOffset), avail: uva(l.availOffset), used: uva(l.usedOffset), usedGpa: BigInt(RING_GPA + l.usedOffset) },
  };
}

const ramRegion = { guestPhysAddr: 0n, memorySize: BigInt(RAM_BYTES), userspaceAddr: BigInt(UVA_BASE), mmapOffset: 0n, fd: 0 };

/** QEMU's order: backend_init, dev_init, dev_start (one queue). */
function handshake(b: Builder, s: Session): MsgOp[] {
  const ack = s.replyAck;
  const has = (p: number) => (s.protocol & featureBit(p)) !== 0n;
  const out: MsgOp[] = [
    msg({ code: Req.GET_FEATURES }, [], false),
    msg({ code: Req.GET_PROTOCOL_FEATURES }, [], false),
    msg({ code: Req.SET_PROTOCOL_FEATURES, features: s.protocol }, [], false),
    msg({ code: Req.GET_QUEUE_NUM }, [], false),
  ];
  const addMemReg = has(ProtocolFeature.CONFIGURE_MEM_SLOTS) && b.r.chance(0.4);
  if (addMemReg) out.push(msg({ code: Req.GET_MAX_MEM_SLOTS }, [], false));
  if (has(ProtocolFeature.BACKEND_REQ)) out.push(msg({ code: Req.SET_BACKEND_REQ_FD, fd: 0 }, [{ kind: 'socket' }], ack));
  out.push(msg({ code: Req.SET_OWNER }, [], ack));
  out.push(msg({ code: Req.SET_STATUS, status: 3n }, [], ack));
  out.push(msg({ code: Req.SET_FEATURES, features: s.features }, [], ack));
  out.push(msg({ code: Req.SET_STATUS, status: 11n }, [], ack));
  if (addMemReg) out.push(msg({ code: Req.ADD_MEM_REG, region: ramRegion }, [{ kind: 'ram' }], ack));
  else out.push(msg({ code: Req.SET_MEM_TABLE, regions: [ramRegion] }, [{ kind: 'ram' }], ack));
  out.push(msg({ code: Req.SET_VRING_NUM, state: { index: 0, num: s.queue.size } }, [], ack));
  out.push(msg({ code: Req.SET_VRING_BASE, state: { index: 0, num: 0 } }, [], ack));
  out.push(msg({ code: Req.SET_VRING_ADDR, addr: vringAddr(s, false) }, [], ack));
  out.push(msg({ code: Req.SET_VRING_KICK, index: 0, fd: 0 }, [{ kind: 'kick' }], ack));
  out.push(msg({ code: Req.SET_VRING_CALL, index: 0, fd: 0 }, [{ kind: 'call' }], ack));
  if (b.r.chance(0.5)) out.push(msg({ code: Req.SET_VRING_ERR, index: 0, fd: 0 }, [{ kind: 'err' }], ack));
  out.push(msg({ code: Req.SET_VRING_ENABLE, state: { index: 0, num: 1 } }, [], ack));
  out.push(msg({ code: Req.SET_STATUS, status: 15n }, [], ack));
  return out;
}

function vringAddr(s: Session, log: boolean) {
  return { index: 0, flags: log ? VHOST_VRING_F_LOG : 0, descUserAddr: s.addr.desc, availUserAddr: s.addr.avail, usedUserAddr: s.addr.used, logGuestAddr: s.addr.usedGpa };
}

// ---- valid blk traffic ---------------------------------------------------------------------

function blkOps(b: Builder, s: Session, n: number, must: boolean): BlkOp[] {
  const r = b.r;
  const ops: BlkOp[] = [];
  const written: { sector: number; sectors: number }[] = [];
  const maxSeg = s.queue.indirect > 0 ? s.queue.indirect - 2 : Math.max(1, s.queue.size - 2);
  for (let i = 0; i < n; i++) {
    const reqs: BlkReq[] = [];
    const burst = r.range(1, Math.min(4, Math.max(1, Math.floor(s.queue.size / 4))));
    for (let k = 0; k < burst; k++) {
      const segments = r.range(1, Math.min(3, maxSeg));
      const indirect = s.queue.indirect > 0 && r.chance(0.4);
      const kind = r.weighted<BlkReq['type']>([['write', 5], ['read', 5], ['flush', 1], ['get-id', 1]]);
      let sector: number;
      let sectors = r.range(1, 16);
      if (kind === 'read' && written.length > 0 && r.chance(0.7)) {
        ({ sector, sectors } = r.pick(written));
      } else if (r.chance(0.05)) {
        sector = DISK_SECTORS - r.range(0, 4); // runs past the end: must fail with IOERR, never write
      } else {
        sector = r.int(DISK_SECTORS - sectors);
      }
      if (kind === 'write') written.push({ sector, sectors });
      reqs.push({ type: kind, sector, sectors, fill: r.u32(), segments: Math.min(segments, sectors), indirect });
    }
    ops.push({ t: 'blk', reqs, must });
  }
  return ops;
}

// ---- message mutations ---------------------------------------------------------------------

function fdKindOther(b: Builder, expected: 'eventfd' | 'mem' | 'socket'): FdSpec {
  const r = b.r;
  const all: FdSpec[] = [
    { kind: 'eventfd' }, { kind: 'memfd', size: r.pick([0, 4096, 1 << 20]) }, { kind: 'pipe', full: r.chance(0.5) }, { kind: 'pipe-read' },
    { kind: 'socket' }, { kind: 'devnull' }, { kind: 'devzero' }, { kind: 'dir' }, { kind: 'file', size: 4096 },
  ];
  return r.pick(all.filter((f) => (expected === 'eventfd' ? f.kind !== 'eventfd' : expected === 'socket' ? f.kind !== 'socket' : f.kind !== 'memfd')));
}

/** The class a wrong fd kind on `code` belongs to (what the host does with it differs). */
function fdKindClass(code: number, fd: FdSpec): MutationClass {
  switch (code) {
    case Req.SET_VRING_CALL:
    case Req.SET_VRING_ERR:
      return fd.kind === 'pipe' ? 'blocking-notify-fd' : 'notify-fd-kind';
    case Req.SET_VRING_KICK:
      return 'kick-fd-kind';
    case Req.SET_BACKEND_REQ_FD:
      return 'backend-req-fd-kind';
    case Req.SET_MEM_TABLE:
    case Req.ADD_MEM_REG:
      return fd.kind === 'devzero' || fd.kind === 'memfd' || fd.kind === 'file' ? 'short-memfd' : 'mem-fd-kind';
    case Req.SET_LOG_BASE:
      return fd.kind === 'memfd' || fd.kind === 'devzero' || fd.kind === 'file' ? 'short-log' : 'fd-kind';
    default:
      return 'fd-kind';
  }
}

function setU(payload: Uint8Array, off: number, width: 4 | 8, v: bigint): void {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (width === 4) dv.setUint32(off, Number(v & 0xffffffffn), true);
  else dv.setBigUint64(off, v, true);
}

/** Mutates msgs in place with one structural mutation; false when nothing applicable was allowed. */
function mutateMessages(b: Builder, msgs: MsgOp[], s: Session): boolean {
  const r = b.r;
  const cls = b.pickClass(['hdr-size', 'hdr-flags', 'unknown-code', 'payload-length', 'field-boundary', 'bitflip', 'fd-count', 'fd-kind', 'order', 'mem-layout', 'short-memfd', 'need-reply-no-ack']);
  if (cls === null || msgs.length === 0) return false;
  // A payload mutation of a memory message can move a region or the log past its file's end:
  // that is the short-memfd (short-log) bug, so such a mutation also carries that class.
  const payloadClass = cls === 'field-boundary' || cls === 'bitflip' || cls === 'payload-length';
  const memClass = (code: number): MutationClass | null =>
    !payloadClass ? null : code === Req.SET_MEM_TABLE || code === Req.ADD_MEM_REG ? 'short-memfd' : code === Req.SET_LOG_BASE ? 'short-log' : null;
  let i = r.int(msgs.length);
  for (let tries = 0; tries < 8; tries++) {
    const mc = memClass(msgs[i].code);
    if (mc === null || b.allowed(mc)) break;
    i = r.int(msgs.length);
  }
  const also = memClass(msgs[i].code);
  if (also !== null && !b.allowed(also)) return false;
  const m = msgs[i];
  const payload = new Uint8Array(Buffer.from(m.payload, 'hex'));
  /** The op this class changed or added. */
  let touched: MsgOp | undefined = m;
  switch (cls) {
    case 'hdr-size':
      m.size = r.pick([0, 1, payload.length - 1, payload.length + 1, payload.length + 8, 4096, 4097, 0xffffffff].filter((v) => v >= 0 && v !== payload.length));
      break;
    case 'hdr-flags':
      m.flags = r.pick([0, 2, 3, VERSION | FLAG_REPLY, VERSION | 0x10, VERSION | 0x80000000, 0xffffffff, VERSION | FLAG_NEED_REPLY | FLAG_REPLY]);
      break;
    case 'unknown-code':
      touched = { t: 'msg', code: r.pick([0, 44, 45, 63, 64, 255, 1000, 1001, 1002, 0x7fffffff, 0xffffffff]), flags: VERSION | (s.replyAck ? FLAG_NEED_REPLY : 0), payload: hex(r.bytes(r.pick([0, 8, 40]))), fds: [] };
      msgs.splice(i, 0, touched);
      break;
    case 'payload-length': {
      const n = r.pick([0, Math.max(0, payload.length - 1), payload.length + 1, payload.length + 8, r.int(512)]);
      const p = new Uint8Array(n);
      p.set(payload.subarray(0, n));
      if (n > payload.length) p.set(r.bytes(n - payload.length), payload.length);
      m.payload = hex(p);
      break;
    }
    case 'field-boundary': {
      if (payload.length < 4) return mutateMessages(b, msgs, s);
      const width = payload.length >= 8 && r.chance(0.5) ? 8 : 4;
      const off = r.int(Math.floor((payload.length - width) / 4) + 1) * 4;
      setU(payload, off, width, width === 4 ? BigInt(r.pick(U32_EDGES)) : r.pick(U64_EDGES));
      m.payload = hex(payload);
      break;
    }
    case 'bitflip': {
      if (payload.length === 0) return mutateMessages(b, msgs, s);
      for (let k = r.range(1, 4); k > 0; k--) payload[r.int(payload.length)] ^= 1 << r.int(8);
      m.payload = hex(payload);
      break;
    }
    case 'fd-count':
      if (m.fds.length > 0 && r.chance(0.5)) m.fds = m.fds.slice(0, r.int(m.fds.length));
      else for (let k = r.range(1, 3); k > 0; k--) m.fds.push(r.pick<FdSpec>([{ kind: 'eventfd' }, { kind: 'memfd', size: 4096 }, { kind: 'devnull' }]));
      break;
    case 'fd-kind': {
      const withFd = msgs.map((x, j) => [x, j] as const).filter(([x]) => x.fds.length > 0);
      if (withFd.length === 0) return mutateMessages(b, msgs, s);
      const [t] = r.pick(withFd);
      const k = r.int(t.fds.length);
      const expected = t.code === Req.SET_BACKEND_REQ_FD ? 'socket' : t.code === Req.SET_MEM_TABLE || t.code === Req.ADD_MEM_REG ? 'mem' : 'eventfd';
      let fd = fdKindOther(b, expected);
      let c = fdKindClass(t.code, fd);
      // A memfd standing in for guest RAM must be smaller than the region to be wrong.
      if (c === 'short-memfd' && fd.kind === 'memfd' && fd.size >= RAM_BYTES) fd = { kind: 'memfd', size: 4096 };
      if (!b.allowed(c)) {
        fd = { kind: 'devnull' };
        c = fdKindClass(t.code, fd);
        if (!b.allowed(c)) return mutateMessages(b, msgs, s);
      }
      t.fds[k] = fd;
      b.use(c, t);
      return true;
    }
    case 'order': {
      const how = r.pick(['swap', 'dup', 'drop', 'move']);
      if (how === 'swap' && i + 1 < msgs.length) [msgs[i], msgs[i + 1]] = [msgs[i + 1], msgs[i]];
      else if (how === 'dup') msgs.splice(i, 0, { ...m, fds: [...m.fds] });
      else if (how === 'drop') {
        msgs.splice(i, 1);
        // What follows the gap carries the class (the dropped message is gone).
        touched = msgs[Math.min(i, msgs.length - 1)];
      }
      else msgs.splice(r.int(msgs.length), 0, ...msgs.splice(i, 1));
      break;
    }
    case 'mem-layout': {
      // A second region, overlapping, wrapping, huge or at the boundaries of the address space.
      const j = msgs.findIndex((x) => x.code === Req.SET_MEM_TABLE);
      if (j < 0) return mutateMessages(b, msgs, s);
      const regions = [ramRegion];
      const n = r.range(1, 7);
      for (let k = 0; k < n; k++) {
        regions.push({
          guestPhysAddr: r.chance(0.5) ? r.pick(U64_EDGES) : BigInt(r.int(4) * RAM_BYTES / 2),
          memorySize: r.chance(0.5) ? r.pick(U64_EDGES) : BigInt(r.pick([4096, RAM_BYTES / 2, RAM_BYTES])),
          userspaceAddr: r.chance(0.5) ? r.pick(U64_EDGES) : BigInt(UVA_BASE + r.int(4) * RAM_BYTES / 2),
          mmapOffset: r.chance(0.7) ? BigInt(r.pick([0, 4096, RAM_BYTES / 2])) : r.pick(U64_EDGES),
          fd: 0,
        });
      }
      // Regions still backed by the RAM memfd, but they may claim more than it has: only
      // sizes/offsets within the file stay in this class.
      for (const g of regions) if (g.mmapOffset + g.memorySize > BigInt(RAM_BYTES)) g.mmapOffset = 0n;
      const fit = regions.filter((g) => g.memorySize <= BigInt(RAM_BYTES));
      msgs[j] = touched = msg({ code: Req.SET_MEM_TABLE, regions: fit }, fit.map(() => ({ kind: 'ram' }) as FdSpec), s.replyAck);
      break;
    }
    case 'short-memfd': {
      // The region claims more than the file behind it has (or starts past its end).
      const j = msgs.findIndex((x) => x.code === Req.SET_MEM_TABLE || x.code === Req.ADD_MEM_REG);
      if (j < 0) return mutateMessages(b, msgs, s);
      const how = r.pick(['small', 'offset', 'devzero']);
      const region = { ...ramRegion };
      let fd: FdSpec = { kind: 'ram' };
      if (how === 'small') fd = { kind: 'memfd', size: r.pick([0, 4096, RAM_BYTES / 2]) };
      else if (how === 'offset') region.mmapOffset = BigInt(r.pick([RAM_BYTES / 2, RAM_BYTES, 4 * RAM_BYTES]));
      else { fd = { kind: 'devzero' }; region.mmapOffset = BigInt(r.pick([4096, RAM_BYTES])); }
      msgs[j] = touched = msgs[j].code === Req.ADD_MEM_REG ? msg({ code: Req.ADD_MEM_REG, region }, [fd], s.replyAck) : msg({ code: Req.SET_MEM_TABLE, regions: [region] }, [fd], s.replyAck);
      break;
    }
    case 'need-reply-no-ack':
      if (s.replyAck) return mutateMessages(b, msgs, s);
      m.flags |= FLAG_NEED_REPLY;
      break;
  }
  // The op this class changed or added (for mem-table mutations, the replaced message).
  b.use(cls, ...(touched ? [touched] : []));
  if (also !== null && touched === m) b.use(also, m);
  return true;
}

/** Requests a front-end may send mid-session (some valid, some not), as typed messages. */
function extraRequest(b: Builder, s: Session): MsgOp[] {
  const r = b.r;
  const ack = s.replyAck;
  const ring = () => r.chance(0.8) ? 0 : r.pick([1, 7, 8, 255]);
  const choices: (() => MsgOp[] | null)[] = [
    () => [msg({ code: Req.GET_VRING_BASE, state: { index: ring(), num: 0 } }, [], false)],
    () => [msg({ code: Req.SET_VRING_ENABLE, state: { index: ring(), num: r.pick([0, 1, 2]) } }, [], ack)],
    () => [msg({ code: Req.RESET_DEVICE }, [], ack)],
    () => [msg({ code: Req.RESET_OWNER }, [], ack)],
    () => [msg({ code: Req.GET_STATUS }, [], false)],
    () => [msg({ code: Req.SET_STATUS, status: r.pick([0n, 0x40n, 0x80n, 0xffn, 15n]) }, [], ack)],
    () => [msg({ code: Req.GET_CONFIG, config: { offset: r.pick([0, 4, 34, 60, 255, 256]), flags: 0, data: new Uint8Array(r.pick([0, 1, 8, 36, 60, 256])) } }, [], false)],
    () => [msg({ code: Req.SET_CONFIG, config: { offset: r.pick([0, 20, 60]), flags: r.pick([0, 1]), data: r.bytes(r.pick([1, 4, 8])) } }, [], ack)],
    () => [msg({ code: Req.SET_FEATURES, features: r.chance(0.5) ? s.features ^ bit(r.int(64)) : r.u64() }, [], ack)],
    () => [msg({ code: Req.SET_VRING_NUM, state: { index: ring(), num: r.pick([0, 1, 3, 256, 32768, 65535]) } }, [], ack)],
    () => [msg({ code: Req.SET_VRING_BASE, state: { index: ring(), num: r.pick([0, 1, 0x7fff, 0xffff, 0x10000]) } }, [], ack)],
    () => [msg({ code: Req.SET_VRING_ADDR, addr: { ...vringAddr(s, r.chance(0.3)), descUserAddr: r.chance(0.5) ? s.addr.desc : r.pick(U64_EDGES), usedUserAddr: r.chance(0.5) ? s.addr.used : BigInt(UVA_BASE + RAM_BYTES - 2) } }, [], ack)],
    () => [msg({ code: Req.SET_VRING_KICK, index: 0, fd: null }, [], ack)],
    () => [msg({ code: Req.SET_VRING_CALL, index: 0, fd: null }, [], ack)],
    () => [msg({ code: Req.VRING_KICK, state: { index: ring(), num: 0 } }, [], ack)],
    () => [msg({ code: Req.SET_VRING_ENDIAN, state: { index: 0, num: r.pick([0, 1, 2]) } }, [], ack)],
    () => [msg({ code: Req.GET_MAX_MEM_SLOTS }, [], false)],
    () => [msg({ code: Req.REM_MEM_REG, region: ramRegion }, [], ack)],
    () => [msg({ code: Req.SET_MEM_TABLE, regions: [ramRegion] }, [{ kind: 'ram' }], ack)],
    () => [msg({ code: Req.ADD_MEM_REG, region: { ...ramRegion, guestPhysAddr: BigInt(r.pick([0, RAM_BYTES, 2 ** 40])) } }, [{ kind: 'ram' }], ack)],
    () => [msg({ code: Req.IOTLB_MSG, iotlb: { iova: r.u64(), size: r.u64(), userAddr: r.u64(), perm: r.int(4), type: r.int(6) } }, [], ack)],
    () => [msg({ code: Req.SET_DEVICE_STATE_FD, params: { direction: r.pick([0, 1, 2]), phase: r.pick([0, 1]) }, fd: 0 }, [r.pick<FdSpec>([{ kind: 'pipe', full: false }, { kind: 'pipe-read' }, { kind: 'memfd', size: 0 }])], false)],
    () => [msg({ code: Req.CHECK_DEVICE_STATE }, [], false)],
    () => [msg({ code: Req.SET_INFLIGHT_FD, inflight: { mmapSize: 4096n, mmapOffset: 0n, numQueues: 1, queueSize: s.queue.size }, fd: 0 }, [{ kind: 'memfd', size: 4096 }], ack)],
    () => {
      // Dirty logging the way QEMU starts it; with a log memfd smaller than it claims (SIGBUS class).
      const short = r.chance(0.5);
      const c: MutationClass = short ? 'short-log' : 'log-base';
      if (!b.allowed(c) || (s.protocol & featureBit(ProtocolFeature.LOG_SHMFD)) === 0n) return null;
      const size = 4096;
      const ops = [
        msg({ code: Req.SET_LOG_BASE, log: { mmapSize: BigInt(short ? RAM_BYTES : size), mmapOffset: 0n }, fd: 0 }, [short ? { kind: 'memfd', size: 0 } : { kind: 'memfd', size }], false),
        msg({ code: Req.SET_FEATURES, features: s.features | bit(VHOST_F_LOG_ALL) }, [], ack),
        msg({ code: Req.SET_VRING_ADDR, addr: vringAddr(s, true) }, [], ack),
      ];
      b.use(c, ...ops);
      return ops;
    },
    () => {
      // Replace a notification or kick fd mid-session with something that is not an eventfd.
      const code = r.pick([Req.SET_VRING_CALL, Req.SET_VRING_ERR, Req.SET_VRING_KICK]);
      const fd = fdKindOther(b, 'eventfd');
      const c = fdKindClass(code, fd);
      if (!b.allowed(c)) return null;
      const op = msg({ code, index: 0, fd: 0 } as FrontendRequest, [fd], ack);
      b.use(c, op);
      return [op];
    },
    () => {
      const fd = fdKindOther(b, 'socket');
      if (!b.allowed('backend-req-fd-kind')) return null;
      const op = msg({ code: Req.SET_BACKEND_REQ_FD, fd: 0 }, [fd], ack);
      b.use('backend-req-fd-kind', op);
      return [op];
    },
  ];
  for (let tries = 0; tries < 8; tries++) {
    const got = r.pick(choices)();
    if (got !== null) return got;
  }
  return [];
}

// ---- hostile rings -------------------------------------------------------------------------

const d = (addr: bigint | number, len: number, flags: number, next = 0): RawDesc => ({ addr: BigInt(addr).toString(16), len: len >>> 0, flags, next });

function blkHeader(r: Prng): Uint8Array {
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, r.pick([0, 1, 4, 8, 0xffffffff]), true);
  dv.setBigUint64(8, r.chance(0.8) ? BigInt(r.int(DISK_SECTORS)) : r.pick(U64_EDGES), true);
  return h;
}

function hostileRing(b: Builder, s: Session): RingOp | null {
  const r = b.r;
  const cls = b.pickClass([
    'desc-loop', 'desc-next-range', 'desc-addr-range', 'desc-len-overflow', 'indirect-nested', 'indirect-len', 'indirect-addr',
    'indirect-next', 'head-range', 'avail-jump', 'write-then-read', 'guard-readonly', 'zero-len', 'duplicate-head', 'random-descs',
  ]);
  if (cls === null) return null;
  const size = s.queue.size;
  const hdr = SCRATCH_GPA + 16 * r.int(64);
  const buf = SCRATCH_GPA + 0x2000 + 512 * r.int(32);
  const table = SCRATCH_GPA + 0x10000;
  const slot = () => r.int(size);
  const op: RingOp = { t: 'ring', descs: [], heads: [], jump: 0, poke: [{ gpa: hdr, hex: hex(blkHeader(r)) }] };
  const h = slot();
  const h2 = (h + 1) % size;
  switch (cls) {
    case 'desc-loop':
      op.descs = size === 1 ? [[h, d(hdr, 16, NEXT, h)]] : [[h, d(hdr, 16, NEXT, h2)], [h2, d(buf, 512, NEXT | WRITE, h)]];
      break;
    case 'desc-next-range':
      op.descs = [[h, d(hdr, 16, NEXT, r.pick([size, size + 1, 0x7fff, 0xffff]))]];
      break;
    case 'desc-addr-range':
      op.descs = [[h, d(hdr, 16, NEXT, h2)], [h2, d(r.pick([RAM_BYTES, RAM_BYTES - 8, 2 ** 40, 0xffffffffffff0000n, 0xfffffffffffffff0n, 0x8000000000000000n]), r.pick([1, 16, 512]), WRITE, 0)]];
      break;
    case 'desc-len-overflow':
      op.descs = [[h, d(hdr, 16, NEXT, h2)], [h2, d(buf, r.pick([0xffffffff, 0x80000000, RAM_BYTES, SCRATCH_END - buf + 1]), WRITE, 0)]];
      break;
    case 'indirect-nested':
      op.descs = [[h, d(table, 48, INDIRECT)]];
      op.table = { gpa: table, descs: [d(hdr, 16, NEXT, 1), d(table, 32, INDIRECT | NEXT, 2), d(buf, 1, WRITE, 0)] };
      break;
    case 'indirect-len':
      op.descs = [[h, d(table, r.pick([0, 1, 15, 17, 0xfff0, 0xffffffff, 65537 * 16]), INDIRECT)]];
      op.table = { gpa: table, descs: [d(hdr, 16, NEXT, 1), d(buf, 1, WRITE, 0)] };
      break;
    case 'indirect-addr':
      op.descs = [[h, d(r.pick([RAM_BYTES - 16, RAM_BYTES, 0xfffffffffffffff0n]), 32, INDIRECT)]];
      break;
    case 'indirect-next':
      op.descs = [[h, d(table, 32, INDIRECT | (r.chance(0.5) ? NEXT : 0), h2)]];
      op.table = { gpa: table, descs: [d(hdr, 16, NEXT, r.pick([0, 1, 2, 0xffff])), d(buf, 1, WRITE | NEXT, 0)] };
      break;
    case 'head-range':
      op.heads = [r.pick([size, size + 1, 0x7fff, 0xffff])];
      break;
    case 'avail-jump':
      op.descs = [[h, d(hdr, 16, NEXT, h2)], [h2, d(buf, 1, WRITE, 0)]];
      op.jump = r.pick([size, size + 1, 0x7fff, 0x8000, 0xfffe, 0xffff]);
      break;
    case 'write-then-read':
      op.descs = [[h, d(buf, 1, WRITE | NEXT, h2)], [h2, d(hdr, 16, 0, 0)]];
      break;
    case 'guard-readonly': {
      // A read request whose data buffer is readable only and lies in the guard: the device
      // may fail the request or the ring, but must not write a byte of it.
      const g = GUARD_GPA + 512 * r.int((GUARD_END - GUARD_GPA) / 512 - 1);
      const rd = new Uint8Array(16);
      new DataView(rd.buffer).setBigUint64(8, BigInt(r.int(DISK_SECTORS)), true);
      op.poke = [{ gpa: hdr, hex: hex(rd) }];
      const h3 = (h + 2) % size;
      op.descs = size < 4 ? [[h, d(hdr, 16, NEXT, h2)], [h2, d(g, 512, 0, 0)]] : [[h, d(hdr, 16, NEXT, h2)], [h2, d(g, 512, NEXT, h3)], [h3, d(buf, 1, WRITE, 0)]];
      break;
    }
    case 'zero-len':
      op.descs = [[h, d(hdr, 0, NEXT, h2)], [h2, d(buf, 0, WRITE, 0)]];
      break;
    case 'duplicate-head':
      op.descs = [[h, d(hdr, 16, NEXT, h2)], [h2, d(buf, 1, WRITE, 0)]];
      op.heads = Array.from({ length: r.range(2, Math.max(2, size + 2)) }, () => h);
      break;
    case 'random-descs': {
      const n = r.range(1, Math.min(size, 8));
      for (let k = 0; k < n; k++) {
        const addr = r.chance(0.7) ? SCRATCH_GPA + r.int(SCRATCH_END - SCRATCH_GPA) : r.chance(0.5) ? GUARD_GPA + r.int(GUARD_END - GUARD_GPA) : r.int(RAM_BYTES * 2);
        // Random descriptors may name the guard only as readable.
        let flags = r.int(8);
        if (addr >= GUARD_GPA) flags &= ~WRITE;
        op.descs.push([r.int(size), d(addr, r.pick([0, 1, 16, 512, 4096, r.u32()]) , flags, r.int(size + 2))]);
      }
      break;
    }
  }
  if (op.heads.length === 0) op.heads = [h];
  b.use(cls, op);
  return op;
}

// ---- attacks: the fd-kind classes, each placed where it bites -----------------------------------

/** One fd-kind attack composed the way it does harm (random placement rarely lines these up). */
function attack(b: Builder, s: Session): Op[] {
  const r = b.r;
  const ack = s.replyAck;
  const options: MutationClass[] = ['short-log', 'blocking-notify-fd', 'kick-fd-kind', 'short-memfd', 'backend-req-fd-kind', 'notify-fd-kind'];
  const c = b.pickClass(options);
  if (c === null) return [...handshake(b, s), { t: 'sync' }, ...blkOps(b, s, 1, true)];
  const hs: Op[] = handshake(b, s);
  const at = (code: number) => hs.findIndex((m) => m.t === 'msg' && m.code === code);
  const tail: Op[] = [];
  switch (c) {
    case 'short-log': {
      // A 1 MiB log over a 0-byte memfd, LOG_ALL, the used ring logged: the first used-ring write.
      s.protocol |= featureBit(ProtocolFeature.LOG_SHMFD);
      hs[at(Req.SET_PROTOCOL_FEATURES)] = msg({ code: Req.SET_PROTOCOL_FEATURES, features: s.protocol }, [], false);
      const ops = [
        msg({ code: Req.SET_LOG_BASE, log: { mmapSize: BigInt(RAM_BYTES), mmapOffset: 0n }, fd: 0 }, [{ kind: 'memfd', size: 0 }], false),
        msg({ code: Req.SET_FEATURES, features: s.features | bit(VHOST_F_LOG_ALL) }, [], ack),
        msg({ code: Req.SET_VRING_ADDR, addr: vringAddr(s, true) }, [], ack),
      ];
      b.use(c, ...ops);
      tail.push(...blkOps(b, s, 1, true), ...ops, { t: 'sync' }, ...blkOps(b, s, 1, false));
      break;
    }
    case 'blocking-notify-fd': {
      // A full, blocking pipe as the call (or err) fd: the device's first notification.
      const code = r.pick([Req.SET_VRING_CALL, Req.SET_VRING_ERR]);
      const op = msg({ code, index: 0, fd: 0 } as FrontendRequest, [{ kind: 'pipe', full: true }], ack);
      b.use(c, op);
      const j = at(Req.SET_VRING_CALL);
      if (code === Req.SET_VRING_CALL) hs[j] = op;
      else hs.splice(j + 1, 0, op);
      // An err fd is written when the ring breaks: break it.
      tail.push(...blkOps(b, s, 2, false));
      if (code === Req.SET_VRING_ERR) {
        const ring = hostileRing(new Builder(r, new Set()), s);
        if (ring) tail.push(ring, { t: 'kick' });
      }
      break;
    }
    case 'kick-fd-kind': {
      // On a running ring, a kick fd the host refuses (unpollable) or cannot read as an eventfd
      // (kicked through), then what a front-end retrying sends: a new call fd, (the right kick,)
      // enable. The session after must serve, and notify through our call eventfd.
      const bad = msg({ code: Req.SET_VRING_KICK, index: 0, fd: 0 }, [r.pick<FdSpec>([{ kind: 'memfd', size: 4096 }, { kind: 'dir' }, { kind: 'file', size: 8 }, { kind: 'pipe-read' }, { kind: 'devnull' }])], ack);
      b.use(c, bad);
      // Without a resent kick, a refused SET_VRING_KICK must have left the ring's kick fd as it was.
      const resend = r.chance(0.5);
      tail.push(
        ...blkOps(b, s, 1, true),
        bad,
        { t: 'kick' },
        { t: 'sync' },
        msg({ code: Req.SET_VRING_CALL, index: 0, fd: 0 }, [{ kind: 'call' }], ack),
        ...(resend ? [msg({ code: Req.SET_VRING_KICK, index: 0, fd: 0 }, [{ kind: 'kick' }], ack)] : []),
        msg({ code: Req.SET_VRING_ENABLE, state: { index: 0, num: 1 } }, [], ack),
        { t: 'sync' },
        ...blkOps(b, s, 2, true),
      );
      break;
    }
    case 'short-memfd': {
      const j = at(Req.SET_MEM_TABLE) >= 0 ? at(Req.SET_MEM_TABLE) : at(Req.ADD_MEM_REG);
      const region = { ...ramRegion };
      const fd: FdSpec = r.chance(0.5) ? { kind: 'memfd', size: r.pick([0, 4096]) } : { kind: 'ram' };
      if (fd.kind === 'ram') region.mmapOffset = BigInt(RAM_BYTES);
      hs[j] = (hs[j] as MsgOp).code === Req.ADD_MEM_REG ? msg({ code: Req.ADD_MEM_REG, region }, [fd], ack) : msg({ code: Req.SET_MEM_TABLE, regions: [region] }, [fd], ack);
      b.use(c, hs[j] as MsgOp);
      tail.push({ t: 'kick' }, ...blkOps(b, s, 1, false));
      break;
    }
    case 'backend-req-fd-kind':
    case 'notify-fd-kind': {
      // Refused fds, many times over: none may stay open in the host.
      const code = c === 'backend-req-fd-kind' ? Req.SET_BACKEND_REQ_FD : r.pick([Req.SET_VRING_CALL, Req.SET_VRING_ERR]);
      for (let k = r.range(1, 4); k > 0; k--) {
        const fd: FdSpec = r.pick<FdSpec>([{ kind: 'memfd', size: 4096 }, { kind: 'dir' }, { kind: 'file', size: 8 }, { kind: 'devnull' }]);
        const op = msg(code === Req.SET_BACKEND_REQ_FD ? { code, fd: 0 } : ({ code, index: 0, fd: 0 } as FrontendRequest), [fd], ack);
        b.use(c, op);
        tail.push(op);
      }
      tail.push({ t: 'sync' });
      break;
    }
  }
  return [...hs, { t: 'sync' }, ...tail, { t: 'sync' }];
}

// ---- cases ---------------------------------------------------------------------------------

/** The case number `n` of run `runSeed`; the same arguments always give the same case. */
export function generateCase(runSeed: string, n: number, opts: GenOptions = {}): FuzzCase {
  const seed = `${runSeed}:${n}`;
  const r = new Prng(seed);
  const b = new Builder(r, opts.exclude ?? new Set());
  const s = chooseSession(b);
  const kind = r.weighted([['valid', 3], ['messages', 4], ['ring', 3], ['recover', 2], ['attack', 1]] as const);
  const ops: Op[] = [];
  if (kind === 'valid') {
    ops.push(...handshake(b, s), { t: 'sync' }, ...blkOps(b, s, r.range(1, 6), true));
  } else if (kind === 'attack') {
    ops.push(...attack(b, s));
  } else if (kind === 'recover') {
    // A message with a wrong fd, then the right one (a front-end retrying): whatever the host
    // did with the first, the session after the second must serve valid requests.
    const hs = handshake(b, s);
    const withFd = hs.map((m, j) => [m, j] as const).filter(([m]) => m.fds.length > 0);
    const [m, j] = r.pick(withFd);
    const mem = m.code === Req.SET_MEM_TABLE || m.code === Req.ADD_MEM_REG;
    let fd = fdKindOther(b, m.code === Req.SET_BACKEND_REQ_FD ? 'socket' : mem ? 'mem' : 'eventfd');
    if (mem && fd.kind === 'memfd' && fd.size >= RAM_BYTES) fd = { kind: 'memfd', size: 4096 };
    let c = fdKindClass(m.code, fd);
    if (!b.allowed(c)) {
      fd = { kind: 'devnull' };
      c = fdKindClass(m.code, fd);
    }
    if (b.allowed(c)) {
      const bad: MsgOp = { ...m, fds: [fd, ...m.fds.slice(1)] };
      b.use(c, bad);
      // ADD_MEM_REG adds: a front-end retrying removes the region it added first.
      const undo = m.code === Req.ADD_MEM_REG ? [msg({ code: Req.REM_MEM_REG, region: ramRegion }, [], s.replyAck)] : [];
      hs.splice(j, 0, bad, ...undo);
    }
    ops.push(...hs, { t: 'sync' }, ...blkOps(b, s, r.range(1, 3), true));
  } else if (kind === 'messages') {
    const hs = handshake(b, s);
    const mutations = r.chance(0.5) ? r.range(1, 3) : 0;
    for (let k = 0; k < mutations; k++) mutateMessages(b, hs, s);
    ops.push(...hs, { t: 'sync' }, ...blkOps(b, s, 1, false));
    const extra: MsgOp[] = [];
    for (let k = r.range(1, 4); k > 0; k--) extra.push(...extraRequest(b, s));
    if (extra.length > 0 && r.chance(0.4)) mutateMessages(b, extra, s);
    ops.push(...extra, { t: 'sync' }, { t: 'kick' }, ...blkOps(b, s, 1, false), { t: 'sync' });
  } else {
    ops.push(...handshake(b, s), { t: 'sync' }, ...blkOps(b, s, r.range(0, 2), true));
    for (let k = r.range(1, 3); k > 0; k--) {
      const op = hostileRing(b, s);
      if (op !== null) ops.push(op, { t: 'kick' });
    }
    ops.push({ t: 'sync' });
  }
  return { format: CASE_FORMAT, seed, classes: classesOf(ops), queue: s.queue, ops };
}
