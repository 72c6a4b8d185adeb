// Byte layouts of the payload structs, both directions. Native byte order, as the spec says
// ("All numbers are in the machine native byte order"); both peers share one machine.

import { endianness } from 'node:os';
import {
  SIZE_CONFIG_HEADER, SIZE_MEM_REGION, SIZE_MEM_REGION_XEN, SIZE_SHARED_UUID, VRING_IDX_MASK,
  VRING_NOFD_MASK,
} from './constants.ts';
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

function checkBits(v: number, bits: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v >= 2 ** bits) throw new RangeError(`${what} ${v} does not fit in ${bits} bits`);
  return v;
}

export function readVringState(dv: DataView, off = 0): VringState {
  return { index: dv.getUint32(off, LE), num: dv.getUint32(off + 4, LE) };
}
export function writeVringState(dv: DataView, s: VringState, off = 0): void {
  dv.setUint32(off, checkU32(s.index, 'vring index'), LE);
  dv.setUint32(off + 4, checkU32(s.num, 'vring num'), LE);
}

export function readVringAddr(dv: DataView): VringAddr {
  return {
    index: dv.getUint32(0, LE),
    flags: dv.getUint32(4, LE),
    descUserAddr: dv.getBigUint64(8, LE),
    usedUserAddr: dv.getBigUint64(16, LE),
    availUserAddr: dv.getBigUint64(24, LE),
    logGuestAddr: dv.getBigUint64(32, LE),
  };
}
export function writeVringAddr(dv: DataView, a: VringAddr): void {
  dv.setUint32(0, checkU32(a.index, 'vring index'), LE);
  dv.setUint32(4, checkU32(a.flags, 'vring addr flags'), LE);
  dv.setBigUint64(8, checkU64(a.descUserAddr, 'desc address'), LE);
  dv.setBigUint64(16, checkU64(a.usedUserAddr, 'used address'), LE);
  dv.setBigUint64(24, checkU64(a.availUserAddr, 'avail address'), LE);
  dv.setBigUint64(32, checkU64(a.logGuestAddr, 'log guest address'), LE);
}

export function regionSize(xen: boolean): number {
  return xen ? SIZE_MEM_REGION_XEN : SIZE_MEM_REGION;
}

export function readMemRegion(dv: DataView, off: number, xen: boolean): MemoryRegion {
  const r: MemoryRegion = {
    guestPhysAddr: dv.getBigUint64(off, LE),
    memorySize: dv.getBigUint64(off + 8, LE),
    userspaceAddr: dv.getBigUint64(off + 16, LE),
    mmapOffset: dv.getBigUint64(off + 24, LE),
  };
  if (xen) r.xen = { mmapFlags: dv.getUint32(off + 32, LE), domid: dv.getUint32(off + 36, LE) };
  return r;
}
export function writeMemRegion(dv: DataView, off: number, r: MemoryRegion, xen: boolean): void {
  dv.setBigUint64(off, checkU64(r.guestPhysAddr, 'guest address'), LE);
  dv.setBigUint64(off + 8, checkU64(r.memorySize, 'region size'), LE);
  dv.setBigUint64(off + 16, checkU64(r.userspaceAddr, 'user address'), LE);
  dv.setBigUint64(off + 24, checkU64(r.mmapOffset, 'mmap offset'), LE);
  if (xen) {
    dv.setUint32(off + 32, checkU32(r.xen?.mmapFlags ?? 0, 'xen mmap flags'), LE);
    dv.setUint32(off + 36, checkU32(r.xen?.domid ?? 0, 'xen domid'), LE);
  }
}

export function readLog(dv: DataView): LogArea {
  return { mmapSize: dv.getBigUint64(0, LE), mmapOffset: dv.getBigUint64(8, LE) };
}
export function writeLog(dv: DataView, l: LogArea): void {
  dv.setBigUint64(0, checkU64(l.mmapSize, 'log size'), LE);
  dv.setBigUint64(8, checkU64(l.mmapOffset, 'log offset'), LE);
}

export function readIotlb(dv: DataView): IotlbMsg {
  return {
    iova: dv.getBigUint64(0, LE),
    size: dv.getBigUint64(8, LE),
    userAddr: dv.getBigUint64(16, LE),
    perm: dv.getUint8(24),
    type: dv.getUint8(25),
  };
}
export function writeIotlb(dv: DataView, m: IotlbMsg): void {
  dv.setBigUint64(0, checkU64(m.iova, 'iova'), LE);
  dv.setBigUint64(8, checkU64(m.size, 'iotlb size'), LE);
  dv.setBigUint64(16, checkU64(m.userAddr, 'iotlb user address'), LE);
  dv.setUint8(24, checkBits(m.perm, 8, 'iotlb perm'));
  dv.setUint8(25, checkBits(m.type, 8, 'iotlb type'));
}

/** Caller has checked that payload.length == 12 + the size field. */
export function readConfig(payload: Uint8Array): ConfigSpace {
  const dv = view(payload);
  return { offset: dv.getUint32(0, LE), flags: dv.getUint32(8, LE), data: payload.slice(SIZE_CONFIG_HEADER) };
}
export function configBytes(c: ConfigSpace): Uint8Array {
  const out = new Uint8Array(SIZE_CONFIG_HEADER + c.data.length);
  const dv = view(out);
  dv.setUint32(0, checkU32(c.offset, 'config offset'), LE);
  dv.setUint32(4, c.data.length, LE);
  dv.setUint32(8, checkU32(c.flags, 'config flags'), LE);
  out.set(c.data, SIZE_CONFIG_HEADER);
  return out;
}

export function readInflight(dv: DataView): InflightDescription {
  return {
    mmapSize: dv.getBigUint64(0, LE),
    mmapOffset: dv.getBigUint64(8, LE),
    numQueues: dv.getUint16(16, LE),
    queueSize: dv.getUint16(18, LE),
  };
}
export function writeInflight(dv: DataView, i: InflightDescription): void {
  dv.setBigUint64(0, checkU64(i.mmapSize, 'inflight mmap size'), LE);
  dv.setBigUint64(8, checkU64(i.mmapOffset, 'inflight mmap offset'), LE);
  dv.setUint16(16, checkBits(i.numQueues, 16, 'inflight num queues'), LE);
  dv.setUint16(18, checkBits(i.queueSize, 16, 'inflight queue size'), LE);
}

export function readVringArea(dv: DataView): { area: VringArea; reservedBits: bigint } {
  const u = dv.getBigUint64(0, LE);
  return {
    area: {
      index: Number(u & BigInt(VRING_IDX_MASK)),
      noFd: (u & BigInt(VRING_NOFD_MASK)) !== 0n,
      size: dv.getBigUint64(8, LE),
      offset: dv.getBigUint64(16, LE),
    },
    reservedBits: u & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK),
  };
}
export function writeVringArea(dv: DataView, a: VringArea): void {
  dv.setBigUint64(0, BigInt(checkBits(a.index, 8, 'vring index')) | (a.noFd ? BigInt(VRING_NOFD_MASK) : 0n), LE);
  dv.setBigUint64(8, checkU64(a.size, 'vring area size'), LE);
  dv.setBigUint64(16, checkU64(a.offset, 'vring area offset'), LE);
}

export function readShared(payload: Uint8Array): SharedObject {
  return { uuid: payload.slice(0, SIZE_SHARED_UUID) };
}
export function sharedBytes(o: SharedObject): Uint8Array {
  if (o.uuid.length !== SIZE_SHARED_UUID) throw new RangeError(`shared object UUID is ${o.uuid.length} bytes, must be ${SIZE_SHARED_UUID}`);
  return o.uuid.slice();
}

export function readDeviceState(dv: DataView): DeviceStateParams {
  return { direction: dv.getUint32(0, LE), phase: dv.getUint32(4, LE) };
}
export function writeDeviceState(dv: DataView, p: DeviceStateParams): void {
  dv.setUint32(0, checkU32(p.direction, 'device state direction'), LE);
  dv.setUint32(4, checkU32(p.phase, 'device state phase'), LE);
}

export function u64Bytes(v: bigint): Uint8Array {
  const out = new Uint8Array(8);
  view(out).setBigUint64(0, checkU64(v, 'u64 payload'), LE);
  return out;
}

export function sized(size: number, fill: (dv: DataView) => void): Uint8Array {
  const out = new Uint8Array(size);
  fill(view(out));
  return out;
}

