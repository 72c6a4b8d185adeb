// bytes + fds <-> typed messages, both directions and both sides. Pure: no I/O, and it never
// closes an fd (on a throw the caller still owns and must close every fd it passed in). What
// each request's payload, fds and reply look like is the request table's (requests.ts); this
// file frames, checks the header, and runs the table's entry.

import {
  FLAG_KNOWN_MASK, FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION_MASK, HEADER_SIZE, MAX_CONFIG_SIZE,
  MAX_FDS, MAX_MEM_SLOTS, MAX_PAYLOAD_SIZE, VERSION, DEVICE_STATE_REPLY_NOFD,
} from './constants.ts';
import { ProtocolError } from './errors.ts';
import { LE, bytesOf, checkU32, configBytes, inflightDescription, u64Bytes, view, vringState } from './layout.ts';
import { u64Answer, type CodecContext } from './payload-codec.ts';
import { PayloadReader } from './reader.ts';
import {
  Req, backendRequest, backendRequestName, frontendRequest, replyCodecOf, requestName, type RequestEntry,
} from './requests.ts';
import type {
  AnyDecodedBackendRequest, AnyDecodedRequest, BackendRequest, ConfigSpace, Encoded, FrontendRequest, Header, InflightDescription, MessageMeta, Reply, VringState,
} from './messages.ts';

/** Which numbering a message's code uses: front-end requests (1-43) or back-end requests (1-8). */
export type CodeSpace = 'frontend' | 'backend';

export interface DecodeOptions {
  /** Memory regions carry the two XEN_MMAP fields (only when that feature was negotiated). */
  xenMmap?: boolean;
}

function nameOf(code: number, space: CodeSpace): string {
  return space === 'backend' ? backendRequestName(code) : requestName(code);
}

// ---------------------------------------------------------------------------------------------
// Header

/**
 * Decodes and validates the 12-byte header. `maxPayload` bounds `size` before anyone
 * allocates or waits for that many bytes.
 */
export function decodeHeader(bytes: Uint8Array, maxPayload = MAX_PAYLOAD_SIZE, space: CodeSpace = 'frontend'): Header {
  if (bytes.length < HEADER_SIZE) {
    throw new ProtocolError(`truncated header: ${bytes.length} of ${HEADER_SIZE} bytes`);
  }
  const dv = view(bytes);
  const request = dv.getUint32(0, LE);
  const flags = dv.getUint32(4, LE);
  const size = dv.getUint32(8, LE);
  const name = nameOf(request, space);
  const version = flags & FLAG_VERSION_MASK;
  if (version !== VERSION) {
    throw new ProtocolError(`${name}: header version is ${version}, only version ${VERSION} exists`, request);
  }
  const reserved = flags & ~FLAG_KNOWN_MASK;
  if (reserved !== 0) {
    throw new ProtocolError(`${name}: reserved header flag bits 0x${(reserved >>> 0).toString(16)} are set (flags 0x${(flags >>> 0).toString(16)})`, request);
  }
  if (size > maxPayload) {
    throw new ProtocolError(`${name}: payload size ${size} exceeds the ${maxPayload}-byte limit`, request);
  }
  return { request, flags, size, reply: (flags & FLAG_REPLY) !== 0, needReply: (flags & FLAG_NEED_REPLY) !== 0 };
}

/** Header + payload as one buffer (so a single sendmsg carries the fds with the first byte). */
export function frame(code: number, flags: number, payload: Uint8Array = EMPTY): Uint8Array {
  checkU32(code, 'request code');
  if (payload.length > MAX_PAYLOAD_SIZE) {
    throw new RangeError(`payload of ${payload.length} bytes exceeds the ${MAX_PAYLOAD_SIZE}-byte limit`);
  }
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const dv = view(out);
  dv.setUint32(0, code, LE);
  dv.setUint32(4, flags, LE);
  dv.setUint32(8, payload.length, LE);
  out.set(payload, HEADER_SIZE);
  return out;
}

const EMPTY = new Uint8Array(0);

function checkFraming(name: string, header: Header, payload: Uint8Array, fds: number[]): void {
  if (header.size !== payload.length) {
    throw new ProtocolError(`${name}: header says ${header.size} payload bytes but ${payload.length} were given`, header.request);
  }
  if (fds.length > MAX_FDS) {
    throw new ProtocolError(`${name}: carries ${fds.length} fds, more than the ${MAX_FDS} a message may carry`, header.request);
  }
}

function checkRequestFlags(name: string, header: Header): void {
  if (header.reply) throw new ProtocolError(`${name}: REPLY flag set on a request`, header.request);
}

function checkReplyHeader(code: number, name: string, header: Header, space: CodeSpace): void {
  if (header.request !== code) {
    throw new ProtocolError(`reply to ${name} carries request code ${header.request} (${nameOf(header.request, space)})`, header.request);
  }
  if (!header.reply) throw new ProtocolError(`reply to ${name} lacks the REPLY flag`, code);
  if (header.needReply) throw new ProtocolError(`reply to ${name} sets NEED_REPLY`, code);
}

// ---------------------------------------------------------------------------------------------
// Requests, by table entry

/** Size rule, payload, then fd rule: the entry's typed body with the fds in their places. */
function decodeBody(entry: RequestEntry, r: PayloadReader, ctx: CodecContext): object {
  const size = entry.payload.size(ctx);
  if (entry.payload.sizeRule === 'exact') r.size(size, entry.payload.layout);
  else r.atLeast(size, entry.payload.layout);
  const p = entry.payload.decode(r, ctx);
  entry.fds.check(r, p);
  return entry.fds.attach(p, r.fds) as object;
}

/** The checks every received request gets, then the entry's (undefined entry: unknown request). */
export function decodeWithEntry(
  entry: RequestEntry | undefined, name: string, header: Header, payload: Uint8Array, fds: number[], opts: DecodeOptions,
): (MessageMeta & { unknown: false; code: number }) | (MessageMeta & { unknown: true; code: number; payload: Uint8Array }) {
  const code = header.request;
  checkFraming(name, header, payload, fds);
  checkRequestFlags(name, header);
  const meta = { flags: header.flags, needReply: header.needReply, fds: fds.slice() };
  if (entry === undefined) return { unknown: true, code, payload: payload.slice(), ...meta };
  const body = decodeBody(entry, new PayloadReader(name, code, payload, fds), { name, xen: opts.xenMmap ?? false });
  // Body after meta: an extension's body may name a field `flags` (its own); no spec body does.
  return { ...meta, code, ...body, unknown: false };
}

/** Bytes and fds of a request, from its typed form. */
export function encodeWithEntry(entry: RequestEntry, name: string, req: { code: number }, needReply: boolean, opts: DecodeOptions): Encoded {
  const ctx = { name, xen: opts.xenMmap ?? false };
  const { p, fds } = entry.fds.detach(req);
  return { bytes: frame(entry.code, VERSION | (needReply ? FLAG_NEED_REPLY : 0), entry.payload.encode(p, ctx)), fds };
}

/**
 * Decodes a front-end request. Throws ProtocolError naming the request and the defect; an
 * undefined request number decodes to `{ unknown: true }` instead (see UnknownRequest).
 */
export function decodeRequest(header: Header, payload: Uint8Array, fds: number[], opts: DecodeOptions = {}): AnyDecodedRequest {
  const code = header.request;
  return decodeWithEntry(frontendRequest(code), requestName(code), header, payload, fds, opts) as AnyDecodedRequest;
}

/** Encodes a front-end request; `fds` go with the first byte (sendmsg SCM_RIGHTS). */
export function encodeRequest(req: FrontendRequest, needReply = false, opts: DecodeOptions = {}): Encoded {
  const entry = frontendRequest(req.code);
  if (entry === undefined) throw new RangeError(`${requestName(req.code)} has no entry in the request table`);
  return encodeWithEntry(entry, requestName(req.code), req, needReply, opts);
}

// ---------------------------------------------------------------------------------------------
// Replies, back-end side (what the session sends)

/**
 * A reply to `code`. Flags are always version|REPLY: QEMU rejects a reply whose flags word is
 * anything else, so there is no flags parameter to get wrong.
 */
export function encodeReply(code: number, payload: Uint8Array = EMPTY): Uint8Array {
  return frame(code, VERSION | FLAG_REPLY, payload);
}

/** u64 replies: GET_FEATURES and friends, and the REPLY_ACK answer (0 = success). */
export function encodeU64Reply(code: number, value: bigint | number): Uint8Array {
  return encodeReply(code, u64Bytes(BigInt(value)));
}

/** GET_VRING_BASE's reply. */
export function encodeVringStateReply(state: VringState, code: number = Req.GET_VRING_BASE): Uint8Array {
  return encodeReply(code, bytesOf(vringState, state));
}

/** GET_CONFIG's reply; null sends the empty payload the spec defines as the error answer. */
export function encodeConfigReply(config: ConfigSpace | null): Uint8Array {
  if (config !== null && config.data.length > MAX_CONFIG_SIZE) {
    throw new RangeError(`config reply of ${config.data.length} bytes exceeds ${MAX_CONFIG_SIZE}`);
  }
  return encodeReply(Req.GET_CONFIG, config === null ? EMPTY : configBytes(config));
}

/** GET_INFLIGHT_FD's reply; the caller sends the area's fd with it. */
export function encodeInflightReply(desc: InflightDescription): Uint8Array {
  return encodeReply(Req.GET_INFLIGHT_FD, bytesOf(inflightDescription, desc));
}

/** GET_MAX_MEM_SLOTS's reply. */
export function encodeMemSlotsReply(slots: number = MAX_MEM_SLOTS): Uint8Array {
  return encodeU64Reply(Req.GET_MAX_MEM_SLOTS, BigInt(checkU32(slots, 'mem slots')));
}

/** SET_DEVICE_STATE_FD's reply value: error code in bits 0-7, bit 8 when no fd is returned. */
export function deviceStateReplyValue(error: number, returnsFd: boolean): bigint {
  if (!Number.isInteger(error) || error < 0 || error > 0xff) throw new RangeError(`device state error ${error} does not fit in 8 bits`);
  if (error !== 0 && returnsFd) throw new RangeError('SET_DEVICE_STATE_FD must not return an fd together with an error');
  return BigInt(error) | (returnsFd ? 0n : DEVICE_STATE_REPLY_NOFD);
}

// ---------------------------------------------------------------------------------------------
// Replies, front-end side (what a front-end receives for a request it sent)

/** The header, framing and fd checks of a reply, then a reader over its payload. */
export function replyReader(code: number, header: Header, payload: Uint8Array, fds: number[], space: CodeSpace = 'frontend'): PayloadReader {
  const requestText = nameOf(code, space);
  checkReplyHeader(code, requestText, header, space);
  checkFraming(`reply to ${requestText}`, header, payload, fds);
  return new PayloadReader(`reply to ${requestText}`, code, payload, fds);
}

/** Decodes and validates the reply to front-end request `code`, by its table entry's reply rule. */
export function decodeReply(code: number, header: Header, payload: Uint8Array, fds: number[] = [], opts: DecodeOptions = {}): Reply {
  const r = replyReader(code, header, payload, fds);
  return replyCodecOf(code).decode(r, { name: r.name, xen: opts.xenMmap ?? false }) as Reply;
}

// ---------------------------------------------------------------------------------------------
// Back-end -> front-end requests (the SET_BACKEND_REQ_FD socket)

export function decodeBackendRequest(header: Header, payload: Uint8Array, fds: number[]): AnyDecodedBackendRequest {
  const code = header.request;
  return decodeWithEntry(backendRequest(code), backendRequestName(code), header, payload, fds, {}) as AnyDecodedBackendRequest;
}

export function encodeBackendRequest(req: BackendRequest, needReply = false): Encoded {
  const entry = backendRequest(req.code);
  if (entry === undefined) throw new RangeError(`${backendRequestName(req.code)} has no entry in the request table`);
  return encodeWithEntry(entry, backendRequestName(req.code), req, needReply, {});
}

/** The front-end's answer to a back-end request: a u64 (0 = success); LOOKUP may carry the dma-buf fd. */
export function decodeBackendReply(code: number, header: Header, payload: Uint8Array, fds: number[] = []): Reply {
  const r = replyReader(code, header, payload, fds, 'backend');
  const codec = backendRequest(code)?.reply.codec ?? u64Answer;
  return codec.decode(r, { name: r.name, xen: false }) as Reply;
}
