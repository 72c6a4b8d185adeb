// Experimental extension (vhost-wasm only, off by default): the 2023 RFC's shared-memory chunk
// protocol for back-end state ("vhost-user-fs: Internal migration", FS_SET_STATE_FD /
// FS_GET_STATE / FS_SET_STATE), made generic. The RFC numbered its messages 41-43; those numbers
// now belong to GET_SHARED_OBJECT / SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, so the extension
// uses its own numbers, far outside the spec's range (front-end requests are 1-43 today and are
// allocated consecutively), and its own protocol feature bit. Its requests are entries of the
// request table (registered below as extensions): unknown requests unless a caller that
// negotiated the feature decodes them with decodeRfcStateRequest. See docs/migration.md; the
// transfer itself is host/migration/rfc-shm.ts.

import { ProtocolError } from './errors.ts';
import { LE, bytesOf, checkU32, checkU64, u64, type Layout } from './layout.ts';
import { always, type FdRule, type PayloadCodec, type ReplyCodec } from './payload-codec.ts';
import { frontendRequest, registerExtension, requestName, type RequestDef } from './requests.ts';
import { decodeWithEntry, encodeReply, encodeWithEntry, replyReader } from './codec.ts';
import type { Encoded, Header } from './messages.ts';

/**
 * Protocol feature bit of the extension. The spec allocates protocol feature bits upwards from 0
 * (20 is the highest so far): 63 is the bit a future spec revision reaches last. A front-end that
 * does not know the bit never sets it (QEMU masks GET_PROTOCOL_FEATURES with the bits it knows),
 * and the back-end offers it only when the operator asked for the extension.
 */
export const RFC_STATE_SHM_PROTOCOL_FEATURE = 63;

/** Request codes of the extension (front-end -> back-end), outside the spec's range. */
export const RfcStateReq = {
  SET_STATE_AREA: 1000,
  GET_STATE: 1001,
  SET_STATE: 1002,
} as const;
export type RfcStateReqCode = (typeof RfcStateReq)[keyof typeof RfcStateReq];

export type RfcStateRequest =
  /** size 0 and fd null: detach (ends the transfer; the reply is its outcome). */
  | { code: typeof RfcStateReq.SET_STATE_AREA; size: bigint; mmapOffset: bigint; direction: number; flags: number; fd: number | null }
  | { code: typeof RfcStateReq.GET_STATE | typeof RfcStateReq.SET_STATE; offset: bigint; size: bigint };

export interface RfcGetStateReply {
  /** 0 = success; otherwise length and remaining are 0. */
  status: bigint;
  /** Bytes the back-end placed at offset 0 of the area. */
  length: bigint;
  /** Bytes of state left after this chunk (0: this was the last one). */
  remaining: bigint;
}

interface StateArea {
  size: bigint;
  mmapOffset: bigint;
  /** 0 = SAVE, 1 = LOAD, as SET_DEVICE_STATE_FD. */
  direction: number;
  /** Reserved, 0. */
  flags: number;
}

const stateArea: Layout<StateArea> = {
  name: 'state area description',
  size: 24,
  read: (dv, off = 0) => ({
    size: dv.getBigUint64(off, LE),
    mmapOffset: dv.getBigUint64(off + 8, LE),
    direction: dv.getUint32(off + 16, LE),
    flags: dv.getUint32(off + 20, LE),
  }),
  write(dv, a, off = 0) {
    dv.setBigUint64(off, checkU64(a.size, 'state area size'), LE);
    dv.setBigUint64(off + 8, checkU64(a.mmapOffset, 'state area offset'), LE);
    dv.setUint32(off + 16, checkU32(a.direction, 'state area direction'), LE);
    dv.setUint32(off + 20, checkU32(a.flags, 'state area flags'), LE);
  },
};

interface Chunk {
  offset: bigint;
  size: bigint;
}

const chunk: Layout<Chunk> = {
  name: 'chunk description',
  size: 16,
  read: (dv, off = 0) => ({ offset: dv.getBigUint64(off, LE), size: dv.getBigUint64(off + 8, LE) }),
  write(dv, c, off = 0) {
    dv.setBigUint64(off, checkU64(c.offset, 'chunk offset'), LE);
    dv.setBigUint64(off + 8, checkU64(c.size, 'chunk size'), LE);
  },
};

const getStateAnswerLayout: Layout<RfcGetStateReply> = {
  name: 'chunk answer',
  size: 24,
  read: (dv, off = 0) => ({ status: dv.getBigUint64(off, LE), length: dv.getBigUint64(off + 8, LE), remaining: dv.getBigUint64(off + 16, LE) }),
  write(dv, r, off = 0) {
    dv.setBigUint64(off, checkU64(r.status, 'status'), LE);
    dv.setBigUint64(off + 8, checkU64(r.length, 'length'), LE);
    dv.setBigUint64(off + 16, checkU64(r.remaining, 'remaining'), LE);
  },
};

const areaPayload: PayloadCodec<StateArea> = {
  layout: stateArea.name,
  sizeRule: 'exact',
  size: () => stateArea.size,
  decode(r) {
    const a = stateArea.read(r.dv, 0);
    if (a.flags !== 0) r.fail(`flags 0x${a.flags.toString(16)} are reserved (must be 0)`);
    return a;
  },
  encode: (a) => bytesOf(stateArea, a),
};

/** The area's memfd exactly when size > 0; size 0 without an fd detaches. */
const areaFd: FdRule<StateArea, StateArea & { fd: number | null }> = {
  summary: '1 unless size is 0 (detach)',
  max: 1,
  check: (r, a) => (a.size === 0n ? r.fdCount(0, ' (size 0 detaches the area)') : r.fdCount(1, ' (the area\'s memfd)')),
  attach: (a, fds) => ({ ...a, fd: a.size === 0n ? null : fds[0] }),
  detach(b) {
    if ((b.size === 0n) !== (b.fd === null)) throw new RangeError('RFC_SET_STATE_AREA: an fd exactly when size > 0');
    return { p: b, fds: b.fd === null ? [] : [b.fd] };
  },
};

const chunkPayload: PayloadCodec<Chunk> = {
  layout: chunk.name,
  sizeRule: 'exact',
  size: () => chunk.size,
  decode: (r) => chunk.read(r.dv, 0),
  encode: (c) => bytesOf(chunk, c),
};

const noFds: FdRule<Chunk, Chunk> = { summary: 'none', max: 0, check: (r) => r.fdCount(0), attach: (c) => c, detach: (c) => ({ p: c, fds: [] }) };

/** The extension's u64 answers: fds are checked first (as they always were here). */
const u64Status: ReplyCodec<bigint> = {
  layout: 'u64',
  decode(r) {
    r.fdCount(0);
    return r.read(u64);
  },
};

const getStateAnswer: ReplyCodec<RfcGetStateReply> = {
  layout: 'chunk answer',
  decode(r) {
    r.fdCount(0);
    return r.read(getStateAnswerLayout);
  },
};

const entry = <P, B>(code: number, d: RequestDef<P, B>) => ({ code, ...d }) as { code: number } & RequestDef<never, never>;

registerExtension({
  RFC_SET_STATE_AREA: entry(RfcStateReq.SET_STATE_AREA, {
    payload: areaPayload, fds: areaFd, reply: always(u64Status), feature: RFC_STATE_SHM_PROTOCOL_FEATURE,
    description: 'attaches the shared state area (memfd) for SAVE or LOAD; size 0 detaches it and answers the outcome',
    debug: (b) => ` size ${b.size} direction ${b.direction}`,
  }),
  RFC_GET_STATE: entry(RfcStateReq.GET_STATE, {
    payload: chunkPayload, fds: noFds, reply: always(getStateAnswer), feature: RFC_STATE_SHM_PROTOCOL_FEATURE,
    description: 'SAVE: the back-end writes the next chunk of state into the area',
    debug: (b) => ` offset ${b.offset} size ${b.size}`,
  }),
  RFC_SET_STATE: entry(RfcStateReq.SET_STATE, {
    payload: chunkPayload, fds: noFds, reply: always(u64Status), feature: RFC_STATE_SHM_PROTOCOL_FEATURE,
    description: 'LOAD: the back-end takes the next chunk of state from the area',
    debug: (b) => ` offset ${b.offset} size ${b.size}`,
  }),
});

export function isRfcStateReqCode(code: number): code is RfcStateReqCode {
  return frontendRequest(code, true)?.feature === RFC_STATE_SHM_PROTOCOL_FEATURE;
}

export function encodeRfcStateRequest(req: RfcStateRequest, needReply = false): Encoded {
  return encodeWithEntry(frontendRequest(req.code, true)!, requestName(req.code), req, needReply, {});
}

/** Decodes one of the extension's requests; throws ProtocolError (the caller closes the fds). */
export function decodeRfcStateRequest(header: Header, payload: Uint8Array, fds: number[]): RfcStateRequest & { needReply: boolean } {
  const code = header.request;
  const name = requestName(code);
  const entry = isRfcStateReqCode(code) ? frontendRequest(code, true) : undefined;
  if (entry === undefined) throw new ProtocolError(`${name} is not a request of the RFC state extension`, code);
  return decodeWithEntry(entry, name, header, payload, fds, {}) as unknown as RfcStateRequest & { needReply: boolean };
}

export function encodeRfcGetStateReply(r: RfcGetStateReply): Uint8Array {
  return encodeReply(RfcStateReq.GET_STATE, bytesOf(getStateAnswerLayout, r));
}

/** Reply to RFC_SET_STATE_AREA / RFC_SET_STATE: a u64 (0 = success); to RFC_GET_STATE: its struct. */
export function decodeRfcStateReply(code: number, header: Header, payload: Uint8Array, fds: number[] = []): bigint | RfcGetStateReply {
  const r = replyReader(code, header, payload, fds);
  const entry = isRfcStateReqCode(code) ? frontendRequest(code, true) : undefined;
  if (entry === undefined) throw new ProtocolError(`${requestName(code)} is not a request of the RFC state extension`, code);
  return entry.reply.codec.decode(r, { name: r.name, xen: false }) as bigint | RfcGetStateReply;
}
