// The parts a request-table entry is made of (host/protocol/requests.ts): a payload codec
// (size rule, decode, encode), an fd rule (how many fds, where they go in the typed request),
// and a reply rule (when a reply comes, and its payload). Each payload shape and each fd rule
// is written once here and named by every request that uses it.

import { DEVICE_STATE_REPLY_ERROR_MASK, DEVICE_STATE_REPLY_NOFD, MAX_CONFIG_SIZE, MAX_MEM_TABLE_REGIONS } from './constants.ts';
import {
  CONFIG_HEADER_SIZE, LE, MEM_TABLE_HEADER_SIZE, SINGLE_REGION_PADDING, bytesOf, configBytes,
  inflightDescription, memRegion, readConfig, ringFdWord, u64, view, vringArea, vringState, type Layout,
} from './layout.ts';
import type { PayloadReader } from './reader.ts';
import type { ConfigSpace, MemoryRegion, MemoryRegionWithFd, Reply, VringArea } from './messages.ts';

/** What a codec needs besides the bytes. */
export interface CodecContext {
  /** The message's name for error messages, e.g. "SET_MEM_TABLE (5)". */
  name: string;
  /** Memory regions carry the two XEN_MMAP fields (only when that feature was negotiated). */
  xen: boolean;
}

// ---------------------------------------------------------------------------------------------
// Payloads

/**
 * A payload's bytes <-> its typed fields (without the fds: see FdRule). `size` with
 * `sizeRule` is checked before decode runs; a 'min' payload's decode checks the rest.
 */
export interface PayloadCodec<P> {
  /** The payload's struct as error messages name it ("vring state"). */
  readonly layout: string;
  readonly sizeRule: 'exact' | 'min';
  size(ctx: CodecContext): number;
  decode(r: PayloadReader, ctx: CodecContext): P;
  /** Throws RangeError for a value the wire format cannot carry. */
  encode(p: P, ctx: CodecContext): Uint8Array;
}

const EMPTY = new Uint8Array(0);

/** No payload at all. */
export const empty: PayloadCodec<object> = {
  layout: 'empty payload',
  sizeRule: 'exact',
  size: () => 0,
  decode: () => ({}),
  encode: () => EMPTY,
};

/** One fixed-size struct, carried in the typed request as field `key`. */
export function field<K extends string, T>(key: K, layout: Layout<T>): PayloadCodec<{ [k in K]: T }> {
  return {
    layout: layout.name,
    sizeRule: 'exact',
    size: () => layout.size,
    decode: (r) => ({ [key]: layout.read(r.dv, 0) }) as { [k in K]: T },
    encode: (p) => bytesOf(layout, p[key]),
  };
}

/** SET_VRING_KICK/CALL/ERR: a u64 of ring index | no-fd bit; reserved bits rejected. */
export const ringFd: PayloadCodec<{ index: number; noFd: boolean }> = {
  layout: 'u64',
  sizeRule: 'exact',
  size: () => 8,
  decode(r) {
    const w = ringFdWord.read(r.dv, 0);
    if (w.reservedBits !== 0n) {
      r.fail(`reserved bits 0x${w.reservedBits.toString(16)} set in the ring/fd u64 0x${u64.read(r.dv, 0).toString(16)}`);
    }
    return { index: w.index, noFd: w.noFd };
  },
  encode(p, ctx) {
    if (!Number.isInteger(p.index) || p.index < 0 || p.index > 0xff) {
      throw new RangeError(`${ctx.name}: ring index ${p.index} does not fit in 8 bits`);
    }
    return bytesOf(ringFdWord, { index: p.index, noFd: p.noFd, reservedBits: 0n });
  },
};

/** VhostUserConfig: 12-byte header + `size` bytes, size at most MAX_CONFIG_SIZE. */
export const configSpace: PayloadCodec<{ config: ConfigSpace }> = {
  layout: 'config space header',
  sizeRule: 'min',
  size: () => CONFIG_HEADER_SIZE,
  decode(r) {
    const size = r.dv.getUint32(4, LE);
    if (size > MAX_CONFIG_SIZE) r.fail(`config size ${size} exceeds the ${MAX_CONFIG_SIZE}-byte config space`);
    r.size(CONFIG_HEADER_SIZE + size, `config space (12-byte header + size ${size})`);
    return { config: readConfig(r.payload) };
  },
  encode: (p) => configBytes(p.config),
};

/** VhostUserMemory: nregions u32, padding u32, then nregions regions (at most 8). */
export const memTable: PayloadCodec<{ regions: MemoryRegion[] }> = {
  layout: 'memory table',
  sizeRule: 'min',
  size: () => MEM_TABLE_HEADER_SIZE,
  decode(r, ctx) {
    const n = r.dv.getUint32(0, LE);
    if (n > MAX_MEM_TABLE_REGIONS) r.fail(`nregions ${n} exceeds the maximum of ${MAX_MEM_TABLE_REGIONS}`);
    const region = memRegion(ctx.xen);
    const expected = MEM_TABLE_HEADER_SIZE + n * region.size;
    if (r.payload.length !== expected) {
      r.fail(`payload is ${r.payload.length} bytes, inconsistent with nregions ${n} (8 + ${n} x ${region.size} = ${expected} bytes)`);
    }
    const regions: MemoryRegion[] = [];
    for (let i = 0; i < n; i++) regions.push(region.read(r.dv, MEM_TABLE_HEADER_SIZE + i * region.size));
    return { regions };
  },
  encode(p, ctx) {
    const n = p.regions.length;
    if (n > MAX_MEM_TABLE_REGIONS) throw new RangeError(`${ctx.name}: ${n} regions exceed the maximum of ${MAX_MEM_TABLE_REGIONS}`);
    const region = memRegion(ctx.xen);
    const out = new Uint8Array(MEM_TABLE_HEADER_SIZE + n * region.size);
    const dv = view(out);
    dv.setUint32(0, n, LE);
    p.regions.forEach((reg, i) => region.write(dv, reg, MEM_TABLE_HEADER_SIZE + i * region.size));
    return out;
  },
};

/** VhostUserMemRegMsg (ADD_MEM_REG / REM_MEM_REG): a u64 of padding, then one region. */
export const singleRegion: PayloadCodec<{ region: MemoryRegion }> = {
  layout: 'single memory region (8-byte padding + region)',
  sizeRule: 'exact',
  size: (ctx) => SINGLE_REGION_PADDING + memRegion(ctx.xen).size,
  decode: (r, ctx) => ({ region: memRegion(ctx.xen).read(r.dv, SINGLE_REGION_PADDING) }),
  encode(p, ctx) {
    const region = memRegion(ctx.xen);
    const out = new Uint8Array(SINGLE_REGION_PADDING + region.size);
    region.write(view(out), p.region, SINGLE_REGION_PADDING);
    return out;
  },
};

/** Back-end VRING_HOST_NOTIFIER_MSG's VhostUserVringArea; reserved bits of its u64 rejected. */
export const hostNotifierArea: PayloadCodec<{ area: VringArea }> = {
  layout: vringArea.name,
  sizeRule: 'exact',
  size: () => vringArea.size,
  decode(r) {
    const { area, reservedBits } = vringArea.read(r.dv, 0);
    if (reservedBits !== 0n) r.fail(`reserved bits 0x${reservedBits.toString(16)} set in the ring/fd u64`);
    return { area };
  },
  encode: (p) => bytesOf(vringArea, { area: p.area, reservedBits: 0n }),
};

/** VhostUserCryptoSession: device-specific; only its fixed ends (op_code, session_id) are certain. */
export const cryptoSession: PayloadCodec<{ session: Uint8Array }> = {
  layout: 'crypto session',
  sizeRule: 'min',
  size: () => 16,
  decode: (r) => ({ session: r.payload.slice() }),
  encode: (p) => p.session.slice(),
};

// ---------------------------------------------------------------------------------------------
// Fds

/**
 * How many fds a request carries and where they go in its typed form. `check` runs after the
 * payload decoded (some counts depend on it: the no-fd bit, nregions); the receiver owns every
 * fd either way (MessageMeta.fds).
 */
export interface FdRule<P, B> {
  /** The rule in words, e.g. "exactly 1", "one per region". */
  readonly summary: string;
  /** Most fds the rule ever accepts. */
  readonly max: number;
  check(r: PayloadReader, p: P): void;
  attach(p: P, fds: readonly number[]): B;
  /** The payload fields and the fds to send, from a typed request. */
  detach(b: B): { p: P; fds: number[] };
}

export function noFds<P>(): FdRule<P, P> {
  return { summary: 'none', max: 0, check: (r) => r.fdCount(0), attach: (p) => p, detach: (b) => ({ p: b, fds: [] }) };
}

/** Exactly one, kept as `fd`. */
export function oneFd<P>(): FdRule<P, P & { fd: number }> {
  return {
    summary: 'exactly 1',
    max: 1,
    check: (r) => r.fdCount(1),
    attach: (p, fds) => ({ ...p, fd: fds[0] }),
    detach: (b) => ({ p: b, fds: [b.fd] }),
  };
}

/** 0 or 1, never used: the spec lets old front-ends attach one anyway (close it unused). */
export function strayFd<P>(): FdRule<P, P> {
  return { summary: '0 or 1 (unused, closed)', max: 1, check: (r) => r.fdRange(0, 1), attach: (p) => p, detach: (b) => ({ p: b, fds: [] }) };
}

/** SET_VRING_KICK/CALL/ERR: one fd unless the no-fd bit is set (fd null: poll instead). */
export const ringFdRule: FdRule<{ index: number; noFd: boolean }, { index: number; fd: number | null }> = {
  summary: '1 unless the no-fd bit is set',
  max: 1,
  check: (r, p) => (p.noFd ? r.fdCount(0, ' (the no-fd bit is set)') : r.fdCount(1, ' (the no-fd bit is clear)')),
  attach: (p, fds) => ({ index: p.index, fd: p.noFd ? null : fds[0] }),
  detach: (b) => ({ p: { index: b.index, noFd: b.fd === null }, fds: b.fd === null ? [] : [b.fd] }),
};

/** SET_MEM_TABLE: one fd per region, in region order. */
export const fdPerRegion: FdRule<{ regions: MemoryRegion[] }, { regions: MemoryRegionWithFd[] }> = {
  summary: 'one per region',
  max: MAX_MEM_TABLE_REGIONS,
  check(r, p) {
    const n = p.regions.length;
    if (r.fds.length !== n) r.fail(`carries ${r.fds.length} fds for ${n} regions; needs exactly one fd per region`);
  },
  attach: (p, fds) => ({ regions: p.regions.map((reg, i) => ({ ...reg, fd: fds[i] })) }),
  detach: (b) => ({ p: b, fds: b.regions.map((reg) => reg.fd) }),
};

/** ADD_MEM_REG: exactly one, the region's. */
export const regionFd: FdRule<{ region: MemoryRegion }, { region: MemoryRegionWithFd }> = {
  summary: 'exactly 1',
  max: 1,
  check: (r) => r.fdCount(1),
  attach: (p, fds) => ({ region: { ...p.region, fd: fds[0] } }),
  detach: (b) => ({ p: b, fds: [b.region.fd] }),
};

/** Back-end VRING_HOST_NOTIFIER_MSG: one fd unless area.noFd (unregister). */
export const notifierFd: FdRule<{ area: VringArea }, { area: VringArea; fd: number | null }> = {
  summary: '1 unless the no-fd bit is set',
  max: 1,
  check: (r, p) => r.fdCount(p.area.noFd ? 0 : 1, p.area.noFd ? ' (the no-fd bit is set)' : ' (the no-fd bit is clear)'),
  attach: (p, fds) => ({ area: p.area, fd: p.area.noFd ? null : fds[0] }),
  detach(b) {
    if ((b.fd === null) !== b.area.noFd) throw new RangeError('VRING_HOST_NOTIFIER_MSG: fd must be null exactly when area.noFd is set');
    return { p: b, fds: b.fd === null ? [] : [b.fd] };
  },
};

// ---------------------------------------------------------------------------------------------
// Replies

/** Decodes the payload and fds of a reply (the header and framing are already checked). */
export interface ReplyCodec<R> {
  /** The reply's payload in words, e.g. "u64", "vring state". */
  readonly layout: string;
  decode(r: PayloadReader, ctx: CodecContext): R;
}

/**
 * When a request is answered. 'ack': only with NEED_REPLY (REPLY_ACK), a u64 (0 = success).
 * 'always': every time, NEED_REPLY or not, with the payload `codec` decodes; NEED_REPLY then
 * changes nothing (still exactly one reply, its own).
 */
export interface ReplyRule<R> {
  readonly when: 'ack' | 'always';
  readonly codec: ReplyCodec<R>;
}

const u64Reply = (r: PayloadReader, fd: number | null = null): Reply => ({
  kind: 'u64', code: r.code, value: u64.read(r.dv, 0), fd, fds: r.fds.slice(),
});

/** A u64 and no fd: REPLY_ACK's answer and most defined replies. */
export const u64Answer: ReplyCodec<Reply> = {
  layout: 'u64',
  decode(r) {
    r.size(8, 'u64');
    r.fdCount(0);
    return u64Reply(r);
  },
};

export const ack: ReplyRule<Reply> = { when: 'ack', codec: u64Answer };
export const always = <R>(codec: ReplyCodec<R>): ReplyRule<R> => ({ when: 'always', codec });

export const vringStateAnswer: ReplyCodec<Reply> = {
  layout: 'vring state',
  decode(r) {
    const state = r.read(vringState);
    r.fdCount(0);
    return { kind: 'vring-state', code: r.code, state, fds: r.fds.slice() };
  },
};

/** GET_CONFIG: the config space read, or an empty payload (the spec's failure answer). */
export const configAnswer: ReplyCodec<Reply> = {
  layout: 'config space, or empty on failure',
  decode(r, ctx) {
    if (r.payload.length === 0) {
      r.fdCount(0);
      return { kind: 'config', code: r.code, config: null, fds: [] };
    }
    r.atLeast(configSpace.size(ctx), configSpace.layout);
    const { config } = configSpace.decode(r, ctx);
    r.fdCount(0);
    return { kind: 'config', code: r.code, config, fds: [] };
  },
};

/** GET_INFLIGHT_FD: the area's description, with its fd unless the size is 0. */
export const inflightAnswer: ReplyCodec<Reply> = {
  layout: 'inflight description + fd',
  decode(r) {
    const inflight = r.read(inflightDescription);
    if (inflight.mmapSize === 0n) {
      r.fdCount(0, ' (mmap size is 0)');
      return { kind: 'inflight', code: r.code, inflight, fd: null, fds: [] };
    }
    r.fdCount(1);
    return { kind: 'inflight', code: r.code, inflight, fd: r.fds[0], fds: r.fds.slice() };
  },
};

export const cryptoSessionAnswer: ReplyCodec<Reply> = {
  layout: 'crypto session',
  decode(r) {
    r.atLeast(16, 'crypto session');
    r.fdCount(0);
    return { kind: 'crypto-session', code: r.code, session: r.payload.slice(), fds: [] };
  },
};

/** SET_MEM_TABLE: a u64 ack, or in postcopy mode the back-end's mapping bases. */
export const memTableAnswer: ReplyCodec<Reply> = {
  layout: 'u64, or (postcopy) the memory table',
  decode(r, ctx) {
    if (r.payload.length === 8) return u64Answer.decode(r, ctx);
    r.atLeast(memTable.size(ctx), memTable.layout);
    const { regions } = memTable.decode(r, ctx);
    r.fdCount(0);
    return { kind: 'memory-table', code: r.code, regions, fds: [] };
  },
};

/** ADD_MEM_REG: a u64 ack, or in postcopy mode the region with the back-end's base. */
export const memRegionAnswer: ReplyCodec<Reply> = {
  layout: 'u64, or (postcopy) the region',
  decode(r, ctx) {
    if (r.payload.length === 8) return u64Answer.decode(r, ctx);
    r.fdCount(0);
    r.size(singleRegion.size(ctx), singleRegion.layout);
    return { kind: 'mem-region', code: r.code, region: singleRegion.decode(r, ctx).region, fds: [] };
  },
};

/** SET_DEVICE_STATE_FD: u64 error code (bits 0-7) | no-fd bit 8; an fd exactly when both are clear. */
export const deviceStateAnswer: ReplyCodec<Reply> = {
  layout: 'u64 (error | no-fd bit) + optional fd',
  decode(r) {
    r.size(8, 'u64');
    const v = u64.read(r.dv, 0);
    if ((v & ~(DEVICE_STATE_REPLY_ERROR_MASK | DEVICE_STATE_REPLY_NOFD)) !== 0n) {
      r.fail(`reserved bits set in the result 0x${v.toString(16)}`);
    }
    if ((v & DEVICE_STATE_REPLY_ERROR_MASK) !== 0n) {
      r.fdCount(0, ' (the result is an error)');
      return u64Reply(r);
    }
    if ((v & DEVICE_STATE_REPLY_NOFD) !== 0n) {
      r.fdCount(0, ' (the no-fd bit is set)');
      return u64Reply(r);
    }
    r.fdCount(1, ' (the no-fd bit is clear)');
    return u64Reply(r, r.fds[0]);
  },
};

/** GET_SHARED_OBJECT: a u64 and the object's dma-buf fd, if any. */
export const sharedObjectAnswer: ReplyCodec<Reply> = {
  layout: 'u64 + optional fd',
  decode(r) {
    r.size(8, 'u64');
    r.fdRange(0, 1);
    return u64Reply(r, r.fds[0] ?? null);
  },
};

/** POSTCOPY_ADVISE: the userfaultfd; the payload is an optional u64. */
export const postcopyAdviseAnswer: ReplyCodec<Reply> = {
  layout: 'userfaultfd + optional u64',
  decode(r) {
    if (r.payload.length !== 0) r.size(8, 'u64');
    r.fdCount(1);
    return { kind: 'u64', code: r.code, value: r.payload.length === 0 ? 0n : u64.read(r.dv, 0), fd: r.fds[0], fds: r.fds.slice() };
  },
};

/** Back-end SHARED_OBJECT_LOOKUP: a u64 and, on success, the object's fd. */
export const lookupAnswer: ReplyCodec<Reply> = {
  layout: 'u64 + fd on success',
  decode(r) {
    r.size(8, 'u64');
    r.fdRange(0, 1);
    const value = u64.read(r.dv, 0);
    if (value !== 0n && r.fds.length > 0) r.fail('returns an fd together with a non-zero (error) result');
    return { kind: 'u64', code: r.code, value, fd: r.fds[0] ?? null, fds: r.fds.slice() };
  },
};
