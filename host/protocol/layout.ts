// Byte layouts of the payload structs, both directions: one typed Layout per wire struct, with
// its size, so a struct's size and its field offsets are written down once. Native byte order,
// as the spec says ("All numbers are in the machine native byte order"); both peers share one
// machine. Which request carries which struct is host/protocol/requests.ts's business.

import { endianness } from 'node:os';
import { VRING_IDX_MASK, VRING_NOFD_MASK } from './constants.ts';
import type {
  ConfigSpace, DeviceStateParams, InflightDescription, IotlbMsg, LogArea, MemoryRegion,
  SharedObject, VringAddr, VringArea, VringState,
} from './messages.ts';

export const LE = endianness() === 'LE';

export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const U64_MAX = (1n << 64n) - 1n;

/** Rejects values a u64/u32 field cannot hold, so a caller's bug is not silently truncated. */
export function checkU64(v: bigint, what: string): bigint {
  if (v < 0n || v > U64_MAX) throw new RangeError(`${what} ${v} does not fit in a u64`);
  return v;
}

export function checkU32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`${what} ${v} does not fit in a u32`);
  return v;
}

export function checkBits(v: number, bits: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v >= 2 ** bits) throw new RangeError(`${what} ${v} does not fit in ${bits} bits`);
  return v;
}

/** A fixed-size wire struct: its name (as error messages say it), its size, and its fields. */
export interface Layout<T> {
  readonly name: string;
  readonly size: number;
  read(dv: DataView, off?: number): T;
  /** Throws RangeError for a value a field cannot hold. */
  write(dv: DataView, v: T, off?: number): void;
}

/** The struct's bytes. */
export function bytesOf<T>(layout: Layout<T>, v: T): Uint8Array {
  const out = new Uint8Array(layout.size);
  layout.write(view(out), v, 0);
  return out;
}

/** A bare u64: feature masks, the REPLY_ACK / u64 answers, status, and the like. */
export const u64: Layout<bigint> = {
  name: 'u64',
  size: 8,
  read: (dv, off = 0) => dv.getBigUint64(off, LE),
  write: (dv, v, off = 0) => dv.setBigUint64(off, checkU64(v, 'u64 payload'), LE),
};

/** struct vhost_vring_state. */
export const vringState: Layout<VringState> = {
  name: 'vring state',
  size: 8,
  read: (dv, off = 0) => ({ index: dv.getUint32(off, LE), num: dv.getUint32(off + 4, LE) }),
  write(dv, s, off = 0) {
    dv.setUint32(off, checkU32(s.index, 'vring index'), LE);
    dv.setUint32(off + 4, checkU32(s.num, 'vring num'), LE);
  },
};

/** struct vhost_vring_addr. */
export const vringAddr: Layout<VringAddr> = {
  name: 'vring address',
  size: 40,
  read: (dv, off = 0) => ({
    index: dv.getUint32(off, LE),
    flags: dv.getUint32(off + 4, LE),
    descUserAddr: dv.getBigUint64(off + 8, LE),
    usedUserAddr: dv.getBigUint64(off + 16, LE),
    availUserAddr: dv.getBigUint64(off + 24, LE),
    logGuestAddr: dv.getBigUint64(off + 32, LE),
  }),
  write(dv, a, off = 0) {
    dv.setUint32(off, checkU32(a.index, 'vring index'), LE);
    dv.setUint32(off + 4, checkU32(a.flags, 'vring addr flags'), LE);
    dv.setBigUint64(off + 8, checkU64(a.descUserAddr, 'desc address'), LE);
    dv.setBigUint64(off + 16, checkU64(a.usedUserAddr, 'used address'), LE);
    dv.setBigUint64(off + 24, checkU64(a.availUserAddr, 'avail address'), LE);
    dv.setBigUint64(off + 32, checkU64(a.logGuestAddr, 'log guest address'), LE);
  },
};

/** VhostUserMemoryRegion. */
const memRegionPlain: Layout<MemoryRegion> = {
  name: 'memory region',
  size: 32,
  read: (dv, off = 0) => ({
    guestPhysAddr: dv.getBigUint64(off, LE),
    memorySize: dv.getBigUint64(off + 8, LE),
    userspaceAddr: dv.getBigUint64(off + 16, LE),
    mmapOffset: dv.getBigUint64(off + 24, LE),
  }),
  write(dv, r, off = 0) {
    dv.setBigUint64(off, checkU64(r.guestPhysAddr, 'guest address'), LE);
    dv.setBigUint64(off + 8, checkU64(r.memorySize, 'region size'), LE);
    dv.setBigUint64(off + 16, checkU64(r.userspaceAddr, 'user address'), LE);
    dv.setBigUint64(off + 24, checkU64(r.mmapOffset, 'mmap offset'), LE);
  },
};

/** With XEN_MMAP negotiated a region carries two more u32s (xen mmap flags, domid). */
const memRegionXen: Layout<MemoryRegion> = {
  name: 'memory region',
  size: 40,
  read: (dv, off = 0) => ({
    ...memRegionPlain.read(dv, off),
    xen: { mmapFlags: dv.getUint32(off + 32, LE), domid: dv.getUint32(off + 36, LE) },
  }),
  write(dv, r, off = 0) {
    memRegionPlain.write(dv, r, off);
    dv.setUint32(off + 32, checkU32(r.xen?.mmapFlags ?? 0, 'xen mmap flags'), LE);
    dv.setUint32(off + 36, checkU32(r.xen?.domid ?? 0, 'xen domid'), LE);
  },
};

export function memRegion(xen: boolean): Layout<MemoryRegion> {
  return xen ? memRegionXen : memRegionPlain;
}

/** VhostUserMemory's header: nregions u32 + padding u32, then the regions. */
export const MEM_TABLE_HEADER_SIZE = 8;
/** ADD_MEM_REG / REM_MEM_REG: a u64 of padding before the one region. */
export const SINGLE_REGION_PADDING = 8;

/** VhostUserLog: the dirty-log area inside the SET_LOG_BASE fd. */
export const logArea: Layout<LogArea> = {
  name: 'log description',
  size: 16,
  read: (dv, off = 0) => ({ mmapSize: dv.getBigUint64(off, LE), mmapOffset: dv.getBigUint64(off + 8, LE) }),
  write(dv, l, off = 0) {
    dv.setBigUint64(off, checkU64(l.mmapSize, 'log size'), LE);
    dv.setBigUint64(off + 8, checkU64(l.mmapOffset, 'log offset'), LE);
  },
};

/** struct vhost_iotlb_msg (padded to 32). */
export const iotlbMsg: Layout<IotlbMsg> = {
  name: 'IOTLB message',
  size: 32,
  read: (dv, off = 0) => ({
    iova: dv.getBigUint64(off, LE),
    size: dv.getBigUint64(off + 8, LE),
    userAddr: dv.getBigUint64(off + 16, LE),
    perm: dv.getUint8(off + 24),
    type: dv.getUint8(off + 25),
  }),
  write(dv, m, off = 0) {
    dv.setBigUint64(off, checkU64(m.iova, 'iova'), LE);
    dv.setBigUint64(off + 8, checkU64(m.size, 'iotlb size'), LE);
    dv.setBigUint64(off + 16, checkU64(m.userAddr, 'iotlb user address'), LE);
    dv.setUint8(off + 24, checkBits(m.perm, 8, 'iotlb perm'));
    dv.setUint8(off + 25, checkBits(m.type, 8, 'iotlb type'));
  },
};

/** VhostUserConfig's header: offset u32, size u32, flags u32; `size` bytes of data follow. */
export const CONFIG_HEADER_SIZE = 12;

/** Caller has checked that payload.length == 12 + the size field. */
export function readConfig(payload: Uint8Array): ConfigSpace {
  const dv = view(payload);
  return { offset: dv.getUint32(0, LE), flags: dv.getUint32(8, LE), data: payload.slice(CONFIG_HEADER_SIZE) };
}
export function configBytes(c: ConfigSpace): Uint8Array {
  const out = new Uint8Array(CONFIG_HEADER_SIZE + c.data.length);
  const dv = view(out);
  dv.setUint32(0, checkU32(c.offset, 'config offset'), LE);
  dv.setUint32(4, c.data.length, LE);
  dv.setUint32(8, checkU32(c.flags, 'config flags'), LE);
  out.set(c.data, CONFIG_HEADER_SIZE);
  return out;
}

/** VhostUserInflight: u64 + u64 + u16 + u16, padded to 8 (QEMU's struct is not packed). */
export const inflightDescription: Layout<InflightDescription> = {
  name: 'inflight description',
  size: 24,
  read: (dv, off = 0) => ({
    mmapSize: dv.getBigUint64(off, LE),
    mmapOffset: dv.getBigUint64(off + 8, LE),
    numQueues: dv.getUint16(off + 16, LE),
    queueSize: dv.getUint16(off + 18, LE),
  }),
  write(dv, i, off = 0) {
    dv.setBigUint64(off, checkU64(i.mmapSize, 'inflight mmap size'), LE);
    dv.setBigUint64(off + 8, checkU64(i.mmapOffset, 'inflight mmap offset'), LE);
    dv.setUint16(off + 16, checkBits(i.numQueues, 16, 'inflight num queues'), LE);
    dv.setUint16(off + 18, checkBits(i.queueSize, 16, 'inflight queue size'), LE);
  },
};

/** The ring/fd u64 of SET_VRING_KICK/CALL/ERR: ring index in bits 0-7, bit 8 = no fd. */
export interface RingFdWord {
  index: number;
  noFd: boolean;
  /** Bits other than those two; must be 0 on the wire (decoders reject them). */
  reservedBits: bigint;
}

export const ringFdWord: Layout<RingFdWord> = {
  name: 'u64',
  size: 8,
  read(dv, off = 0) {
    const u = dv.getBigUint64(off, LE);
    return {
      index: Number(u & BigInt(VRING_IDX_MASK)),
      noFd: (u & BigInt(VRING_NOFD_MASK)) !== 0n,
      reservedBits: u & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK),
    };
  },
  write(dv, w, off = 0) {
    if (w.reservedBits !== 0n) throw new RangeError(`reserved bits 0x${w.reservedBits.toString(16)} in a ring/fd u64`);
    dv.setBigUint64(off, BigInt(checkBits(w.index, 8, 'ring index')) | (w.noFd ? BigInt(VRING_NOFD_MASK) : 0n), LE);
  },
};

/** VhostUserVringArea (back-end VRING_HOST_NOTIFIER_MSG): the ring/fd u64, size, offset. */
export const vringArea: Layout<{ area: VringArea; reservedBits: bigint }> = {
  name: 'vring area',
  size: 24,
  read(dv, off = 0) {
    const w = ringFdWord.read(dv, off);
    return {
      area: { index: w.index, noFd: w.noFd, size: dv.getBigUint64(off + 8, LE), offset: dv.getBigUint64(off + 16, LE) },
      reservedBits: w.reservedBits,
    };
  },
  write(dv, { area }, off = 0) {
    dv.setBigUint64(off, BigInt(checkBits(area.index, 8, 'vring index')) | (area.noFd ? BigInt(VRING_NOFD_MASK) : 0n), LE);
    dv.setBigUint64(off + 8, checkU64(area.size, 'vring area size'), LE);
    dv.setBigUint64(off + 16, checkU64(area.offset, 'vring area offset'), LE);
  },
};

/** VhostUserShared: a 16-byte UUID, kept as bytes. */
export const sharedObject: Layout<SharedObject> = {
  name: 'shared object UUID',
  size: 16,
  read: (dv, off = 0) => ({ uuid: new Uint8Array(dv.buffer.slice(dv.byteOffset + off, dv.byteOffset + off + 16)) }),
  write(dv, o, off = 0) {
    if (o.uuid.length !== 16) throw new RangeError(`shared object UUID is ${o.uuid.length} bytes, must be 16`);
    new Uint8Array(dv.buffer, dv.byteOffset + off, 16).set(o.uuid);
  },
};

/** VhostUserTransferDeviceState. */
export const deviceStateParams: Layout<DeviceStateParams> = {
  name: 'device state parameters',
  size: 8,
  read: (dv, off = 0) => ({ direction: dv.getUint32(off, LE), phase: dv.getUint32(off + 4, LE) }),
  write(dv, p, off = 0) {
    dv.setUint32(off, checkU32(p.direction, 'device state direction'), LE);
    dv.setUint32(off + 4, checkU32(p.phase, 'device state phase'), LE);
  },
};

export function u64Bytes(v: bigint): Uint8Array {
  return bytesOf(u64, v);
}
