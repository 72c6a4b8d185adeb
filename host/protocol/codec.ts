// bytes + fds <-> typed messages, both directions and both sides. Pure: no I/O, and it never
// closes an fd (on a throw the caller still owns and must close every fd it passed in).

import {
  BackendReq, FLAG_KNOWN_MASK, FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION_MASK, HEADER_SIZE,
  MAX_CONFIG_SIZE, MAX_FDS, MAX_MEM_SLOTS, MAX_MEM_TABLE_REGIONS, MAX_PAYLOAD_SIZE, Req,
  SIZE_CONFIG_HEADER, SIZE_DEVICE_STATE, SIZE_INFLIGHT, SIZE_IOTLB, SIZE_LOG, SIZE_MEM_TABLE_HEADER,
  SIZE_SHARED_UUID, SIZE_U64, SIZE_VRING_ADDR, SIZE_VRING_AREA, SIZE_VRING_STATE, VERSION,
  VRING_IDX_MASK, VRING_NOFD_MASK, DEVICE_STATE_REPLY_ERROR_MASK, DEVICE_STATE_REPLY_NOFD,
  backendRequestName, isBackendReqCode, isReqCode, requestName,
  RfcStateReq, SIZE_RFC_STATE_AREA, SIZE_RFC_STATE_CHUNK, SIZE_RFC_GET_STATE_REPLY, isRfcStateReqCode,
} from './constants.ts';
import { ProtocolError } from './errors.ts';
import {
  LE, checkU32, configBytes, readConfig, readDeviceState, readInflight, readIotlb, readLog,
  readMemRegion, readShared, readVringAddr, readVringArea, readVringState, regionSize, sharedBytes,
  sized, u64Bytes, view, writeDeviceState, writeInflight, writeIotlb, writeLog, writeMemRegion,
  writeVringAddr, writeVringArea, writeVringState,
} from './layout.ts';
import type {
  AnyDecodedBackendRequest, AnyDecodedRequest, BackendRequest, ConfigSpace, DecodedBackendRequest,
  DecodedRequest, Encoded, FrontendRequest, Header, InflightDescription, MemoryRegion, Reply,
  VringState,
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

// ---------------------------------------------------------------------------------------------
// Validation helpers

class Check {
  readonly dv: DataView;
  constructor(readonly name: string, readonly code: number, readonly payload: Uint8Array, readonly fds: number[]) {
    this.dv = view(payload);
  }

  fail(what: string): never {
    throw new ProtocolError(`${this.name}: ${what}`, this.code);
  }

  size(expected: number, layout: string): void {
    const n = this.payload.length;
    if (n < expected) this.fail(`payload is ${n} bytes, shorter than its ${expected}-byte ${layout}`);
    if (n > expected) this.fail(`payload is ${n} bytes, longer than its ${expected}-byte ${layout}`);
  }

  atLeast(min: number, layout: string): void {
    const n = this.payload.length;
    if (n < min) this.fail(`payload is ${n} bytes, shorter than the ${min}-byte minimum of its ${layout}`);
  }

  fdCount(expected: number, why = ''): void {
    const n = this.fds.length;
    if (n === expected) return;
    const want = expected === 0 ? 'none' : `exactly ${expected}`;
    this.fail(`carries ${n} fd${n === 1 ? '' : 's'}, expects ${want}${why}`);
  }

  fdRange(min: number, max: number): void {
    const n = this.fds.length;
    if (n < min || n > max) this.fail(`carries ${n} fds, expects ${min} to ${max}`);
  }

  u64(): bigint {
    return this.dv.getBigUint64(0, LE);
  }
}

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

/** SET_VRING_KICK/CALL/ERR: u64 = ring index | no-fd bit; one fd unless the bit is set. */
function vringFd(c: Check): { index: number; fd: number | null } {
  c.size(SIZE_U64, 'u64');
  const u = c.u64();
  const reserved = u & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK);
  if (reserved !== 0n) c.fail(`reserved bits 0x${reserved.toString(16)} set in the ring/fd u64 0x${u.toString(16)}`);
  const index = Number(u & BigInt(VRING_IDX_MASK));
  if ((u & BigInt(VRING_NOFD_MASK)) !== 0n) {
    c.fdCount(0, ' (the no-fd bit is set)');
    return { index, fd: null };
  }
  c.fdCount(1, ' (the no-fd bit is clear)');
  return { index, fd: c.fds[0] };
}

function vringState(c: Check): VringState {
  c.size(SIZE_VRING_STATE, 'vring state');
  c.fdCount(0);
  return readVringState(c.dv);
}

function configSpace(c: Check): ConfigSpace {
  c.atLeast(SIZE_CONFIG_HEADER, 'config space header');
  const size = c.dv.getUint32(4, LE);
  if (size > MAX_CONFIG_SIZE) c.fail(`config size ${size} exceeds the ${MAX_CONFIG_SIZE}-byte config space`);
  c.size(SIZE_CONFIG_HEADER + size, `config space (12-byte header + size ${size})`);
  c.fdCount(0);
  return readConfig(c.payload);
}

function memTable(c: Check, xen: boolean, withFds: boolean): MemoryRegion[] {
  c.atLeast(SIZE_MEM_TABLE_HEADER, 'memory table');
  const n = c.dv.getUint32(0, LE);
  if (n > MAX_MEM_TABLE_REGIONS) c.fail(`nregions ${n} exceeds the maximum of ${MAX_MEM_TABLE_REGIONS}`);
  const rs = regionSize(xen);
  const expected = SIZE_MEM_TABLE_HEADER + n * rs;
  if (c.payload.length !== expected) {
    c.fail(`payload is ${c.payload.length} bytes, inconsistent with nregions ${n} (8 + ${n} x ${rs} = ${expected} bytes)`);
  }
  if (withFds && c.fds.length !== n) {
    c.fail(`carries ${c.fds.length} fds for ${n} regions; needs exactly one fd per region`);
  }
  if (!withFds) c.fdCount(0);
  const regions: MemoryRegion[] = [];
  for (let i = 0; i < n; i++) regions.push(readMemRegion(c.dv, SIZE_MEM_TABLE_HEADER + i * rs, xen));
  return regions;
}

function singleRegion(c: Check, xen: boolean): MemoryRegion {
  c.size(8 + regionSize(xen), 'single memory region (8-byte padding + region)');
  return readMemRegion(c.dv, 8, xen);
}

function inflight(c: Check): InflightDescription {
  c.size(SIZE_INFLIGHT, 'inflight description');
  return readInflight(c.dv);
}

// ---------------------------------------------------------------------------------------------
// Front-end -> back-end requests

/**
 * Decodes a front-end request. Throws ProtocolError naming the request and the defect; an
 * undefined request number decodes to `{ unknown: true }` instead (see UnknownRequest).
 */
export function decodeRequest(header: Header, payload: Uint8Array, fds: number[], opts: DecodeOptions = {}): AnyDecodedRequest {
  const code = header.request;
  const name = requestName(code);
  checkFraming(name, header, payload, fds);
  checkRequestFlags(name, header);
  const meta = { flags: header.flags, needReply: header.needReply, fds: fds.slice() };
  if (!isReqCode(code)) return { unknown: true, code, payload: payload.slice(), ...meta };
  const body = requestBody(new Check(name, code, payload, fds), opts.xenMmap ?? false);
  return { ...body, ...meta, unknown: false } as DecodedRequest;
}

function requestBody(c: Check, xen: boolean): FrontendRequest {
  const code = c.code;
  switch (code) {
    case Req.GET_FEATURES:
    case Req.SET_OWNER:
    case Req.RESET_OWNER:
    case Req.GET_PROTOCOL_FEATURES:
    case Req.GET_QUEUE_NUM:
    case Req.POSTCOPY_ADVISE:
    case Req.POSTCOPY_LISTEN:
    case Req.POSTCOPY_END:
    case Req.RESET_DEVICE:
    case Req.GET_MAX_MEM_SLOTS:
    case Req.GET_STATUS:
    case Req.CHECK_DEVICE_STATE:
      c.size(0, 'empty payload');
      c.fdCount(0);
      return { code };
    case Req.SET_FEATURES:
    case Req.SET_PROTOCOL_FEATURES:
      c.size(SIZE_U64, 'u64');
      c.fdCount(0);
      return { code, features: c.u64() };
    case Req.SEND_RARP:
      c.size(SIZE_U64, 'u64');
      c.fdCount(0);
      return { code, mac: c.u64() };
    case Req.NET_SET_MTU:
      c.size(SIZE_U64, 'u64');
      c.fdCount(0);
      return { code, mtu: c.u64() };
    case Req.CLOSE_CRYPTO_SESSION:
      c.size(SIZE_U64, 'u64');
      c.fdCount(0);
      return { code, sessionId: c.u64() };
    case Req.SET_STATUS:
      c.size(SIZE_U64, 'u64');
      c.fdCount(0);
      return { code, status: c.u64() };
    case Req.SET_MEM_TABLE: {
      const regions = memTable(c, xen, true);
      return { code, regions: regions.map((r, i) => ({ ...r, fd: c.fds[i] })) };
    }
    case Req.SET_LOG_BASE:
      // Only the LOG_SHMFD form (log area + fd) is usable by a separate process: without the fd
      // there is no log to write to, so the fd is required rather than optional.
      c.size(SIZE_LOG, 'log description');
      c.fdCount(1);
      return { code, log: readLog(c.dv), fd: c.fds[0] };
    case Req.SET_LOG_FD:
    case Req.SET_BACKEND_REQ_FD:
    case Req.GPU_SET_SOCKET:
      c.size(0, 'empty payload');
      c.fdCount(1);
      return { code, fd: c.fds[0] };
    case Req.SET_VRING_NUM:
    case Req.SET_VRING_BASE:
    case Req.GET_VRING_BASE:
    case Req.SET_VRING_ENABLE:
    case Req.SET_VRING_ENDIAN:
    case Req.VRING_KICK:
      return { code, state: vringState(c) };
    case Req.SET_VRING_ADDR:
      c.size(SIZE_VRING_ADDR, 'vring address');
      c.fdCount(0);
      return { code, addr: readVringAddr(c.dv) };
    case Req.SET_VRING_KICK:
    case Req.SET_VRING_CALL:
    case Req.SET_VRING_ERR:
      return { code, ...vringFd(c) };
    case Req.IOTLB_MSG:
      c.size(SIZE_IOTLB, 'IOTLB message');
      c.fdCount(0);
      return { code, iotlb: readIotlb(c.dv) };
    case Req.GET_CONFIG:
    case Req.SET_CONFIG:
      return { code, config: configSpace(c) };
    case Req.CREATE_CRYPTO_SESSION:
      // Device-specific struct; only its fixed ends (op_code, session_id) are certain.
      c.atLeast(16, 'crypto session');
      c.fdCount(0);
      return { code, session: c.payload.slice() };
    case Req.GET_INFLIGHT_FD: {
      const desc = inflight(c);
      c.fdCount(0);
      return { code, inflight: desc };
    }
    case Req.SET_INFLIGHT_FD: {
      const desc = inflight(c);
      c.fdCount(1);
      return { code, inflight: desc, fd: c.fds[0] };
    }
    case Req.ADD_MEM_REG: {
      const region = singleRegion(c, xen);
      c.fdCount(1);
      return { code, region: { ...region, fd: c.fds[0] } };
    }
    case Req.REM_MEM_REG: {
      const region = singleRegion(c, xen);
      // The spec lets a back-end accept (and close unused) one stray fd from old front-ends.
      c.fdRange(0, 1);
      return { code, region };
    }
    case Req.GET_SHARED_OBJECT:
      c.size(SIZE_SHARED_UUID, 'shared object UUID');
      c.fdCount(0);
      return { code, object: readShared(c.payload) };
    case Req.SET_DEVICE_STATE_FD:
      c.size(SIZE_DEVICE_STATE, 'device state parameters');
      c.fdCount(1);
      return { code, params: readDeviceState(c.dv), fd: c.fds[0] };
    default:
      throw new Error(`unreachable: request ${code} has no decoder`);
  }
}

/** Encodes a front-end request; `fds` go with the first byte (sendmsg SCM_RIGHTS). */
export function encodeRequest(req: FrontendRequest, needReply = false, opts: DecodeOptions = {}): Encoded {
  const xen = opts.xenMmap ?? false;
  const { payload, fds } = requestPayload(req, xen);
  return { bytes: frame(req.code, VERSION | (needReply ? FLAG_NEED_REPLY : 0), payload), fds };
}

function requestPayload(req: FrontendRequest, xen: boolean): { payload: Uint8Array; fds: number[] } {
  const none = (payload: Uint8Array = EMPTY) => ({ payload, fds: [] as number[] });
  switch (req.code) {
    case Req.GET_FEATURES:
    case Req.SET_OWNER:
    case Req.RESET_OWNER:
    case Req.GET_PROTOCOL_FEATURES:
    case Req.GET_QUEUE_NUM:
    case Req.POSTCOPY_ADVISE:
    case Req.POSTCOPY_LISTEN:
    case Req.POSTCOPY_END:
    case Req.RESET_DEVICE:
    case Req.GET_MAX_MEM_SLOTS:
    case Req.GET_STATUS:
    case Req.CHECK_DEVICE_STATE:
      return none();
    case Req.SET_FEATURES:
    case Req.SET_PROTOCOL_FEATURES:
      return none(u64Bytes(req.features));
    case Req.SEND_RARP:
      return none(u64Bytes(req.mac));
    case Req.NET_SET_MTU:
      return none(u64Bytes(req.mtu));
    case Req.CLOSE_CRYPTO_SESSION:
      return none(u64Bytes(req.sessionId));
    case Req.SET_STATUS:
      return none(u64Bytes(req.status));
    case Req.SET_MEM_TABLE: {
      const n = req.regions.length;
      if (n > MAX_MEM_TABLE_REGIONS) throw new RangeError(`SET_MEM_TABLE: ${n} regions exceed the maximum of ${MAX_MEM_TABLE_REGIONS}`);
      const rs = regionSize(xen);
      const payload = sized(SIZE_MEM_TABLE_HEADER + n * rs, (dv) => {
        dv.setUint32(0, n, LE);
        req.regions.forEach((r, i) => writeMemRegion(dv, SIZE_MEM_TABLE_HEADER + i * rs, r, xen));
      });
      return { payload, fds: req.regions.map((r) => r.fd) };
    }
    case Req.SET_LOG_BASE:
      return { payload: sized(SIZE_LOG, (dv) => writeLog(dv, req.log)), fds: [req.fd] };
    case Req.SET_LOG_FD:
    case Req.SET_BACKEND_REQ_FD:
    case Req.GPU_SET_SOCKET:
      return { payload: EMPTY, fds: [req.fd] };
    case Req.SET_VRING_NUM:
    case Req.SET_VRING_BASE:
    case Req.GET_VRING_BASE:
    case Req.SET_VRING_ENABLE:
    case Req.SET_VRING_ENDIAN:
    case Req.VRING_KICK:
      return none(sized(SIZE_VRING_STATE, (dv) => writeVringState(dv, req.state)));
    case Req.SET_VRING_ADDR:
      return none(sized(SIZE_VRING_ADDR, (dv) => writeVringAddr(dv, req.addr)));
    case Req.SET_VRING_KICK:
    case Req.SET_VRING_CALL:
    case Req.SET_VRING_ERR: {
      if (!Number.isInteger(req.index) || req.index < 0 || req.index > VRING_IDX_MASK) {
        throw new RangeError(`${requestName(req.code)}: ring index ${req.index} does not fit in 8 bits`);
      }
      const u = BigInt(req.index) | (req.fd === null ? BigInt(VRING_NOFD_MASK) : 0n);
      return { payload: u64Bytes(u), fds: req.fd === null ? [] : [req.fd] };
    }
    case Req.IOTLB_MSG:
      return none(sized(SIZE_IOTLB, (dv) => writeIotlb(dv, req.iotlb)));
    case Req.GET_CONFIG:
    case Req.SET_CONFIG:
      return none(configBytes(req.config));
    case Req.CREATE_CRYPTO_SESSION:
      return none(req.session.slice());
    case Req.GET_INFLIGHT_FD:
      return none(sized(SIZE_INFLIGHT, (dv) => writeInflight(dv, req.inflight)));
    case Req.SET_INFLIGHT_FD:
      return { payload: sized(SIZE_INFLIGHT, (dv) => writeInflight(dv, req.inflight)), fds: [req.fd] };
    case Req.ADD_MEM_REG:
      return { payload: sized(8 + regionSize(xen), (dv) => writeMemRegion(dv, 8, req.region, xen)), fds: [req.region.fd] };
    case Req.REM_MEM_REG:
      return none(sized(8 + regionSize(xen), (dv) => writeMemRegion(dv, 8, req.region, xen)));
    case Req.GET_SHARED_OBJECT:
      return none(sharedBytes(req.object));
    case Req.SET_DEVICE_STATE_FD:
      return { payload: sized(SIZE_DEVICE_STATE, (dv) => writeDeviceState(dv, req.params)), fds: [req.fd] };
  }
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
  return encodeReply(code, sized(SIZE_VRING_STATE, (dv) => writeVringState(dv, state)));
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
  return encodeReply(Req.GET_INFLIGHT_FD, sized(SIZE_INFLIGHT, (dv) => writeInflight(dv, desc)));
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

/** Decodes and validates the reply to front-end request `code`. */
export function decodeReply(code: number, header: Header, payload: Uint8Array, fds: number[] = [], opts: DecodeOptions = {}): Reply {
  const name = `reply to ${requestName(code)}`;
  checkReplyHeader(code, requestName(code), header, 'frontend');
  checkFraming(name, header, payload, fds);
  const c = new Check(name, code, payload, fds);
  const xen = opts.xenMmap ?? false;
  const u64 = (fd: number | null = null): Reply => ({ kind: 'u64', code, value: c.u64(), fd, fds: fds.slice() });
  switch (code) {
    case Req.GET_VRING_BASE:
      return { kind: 'vring-state', code, state: vringState(c), fds: fds.slice() };
    case Req.GET_CONFIG:
      if (payload.length === 0) {
        c.fdCount(0);
        return { kind: 'config', code, config: null, fds: [] };
      }
      return { kind: 'config', code, config: configSpace(c), fds: [] };
    case Req.GET_INFLIGHT_FD: {
      const desc = inflight(c);
      if (desc.mmapSize === 0n) {
        c.fdCount(0, ' (mmap size is 0)');
        return { kind: 'inflight', code, inflight: desc, fd: null, fds: [] };
      }
      c.fdCount(1);
      return { kind: 'inflight', code, inflight: desc, fd: fds[0], fds: fds.slice() };
    }
    case Req.CREATE_CRYPTO_SESSION:
      c.atLeast(16, 'crypto session');
      c.fdCount(0);
      return { kind: 'crypto-session', code, session: payload.slice(), fds: [] };
    case Req.SET_MEM_TABLE:
      if (payload.length === SIZE_U64) {
        c.fdCount(0);
        return u64();
      }
      return { kind: 'memory-table', code, regions: memTable(c, xen, false), fds: [] };
    case Req.ADD_MEM_REG:
      if (payload.length === SIZE_U64) {
        c.fdCount(0);
        return u64();
      }
      c.fdCount(0);
      return { kind: 'mem-region', code, region: singleRegion(c, xen), fds: [] };
    case Req.SET_DEVICE_STATE_FD: {
      c.size(SIZE_U64, 'u64');
      const v = c.u64();
      if ((v & ~(DEVICE_STATE_REPLY_ERROR_MASK | DEVICE_STATE_REPLY_NOFD)) !== 0n) {
        c.fail(`reserved bits set in the result 0x${v.toString(16)}`);
      }
      if ((v & DEVICE_STATE_REPLY_ERROR_MASK) !== 0n) {
        c.fdCount(0, ' (the result is an error)');
        return u64();
      }
      if ((v & DEVICE_STATE_REPLY_NOFD) !== 0n) {
        c.fdCount(0, ' (the no-fd bit is set)');
        return u64();
      }
      c.fdCount(1, ' (the no-fd bit is clear)');
      return u64(fds[0]);
    }
    case Req.GET_SHARED_OBJECT:
      c.size(SIZE_U64, 'u64');
      c.fdRange(0, 1);
      return u64(fds[0] ?? null);
    case Req.POSTCOPY_ADVISE:
      // The answer is the userfaultfd; the payload is an optional u64.
      if (payload.length !== 0) c.size(SIZE_U64, 'u64');
      c.fdCount(1);
      return { kind: 'u64', code, value: payload.length === 0 ? 0n : c.u64(), fd: fds[0], fds: fds.slice() };
    default:
      c.size(SIZE_U64, 'u64');
      c.fdCount(0);
      return u64();
  }
}

// ---------------------------------------------------------------------------------------------
// Back-end -> front-end requests (the SET_BACKEND_REQ_FD socket)

export function decodeBackendRequest(header: Header, payload: Uint8Array, fds: number[]): AnyDecodedBackendRequest {
  const code = header.request;
  const name = backendRequestName(code);
  checkFraming(name, header, payload, fds);
  checkRequestFlags(name, header);
  const meta = { flags: header.flags, needReply: header.needReply, fds: fds.slice() };
  if (!isBackendReqCode(code)) return { unknown: true, code, payload: payload.slice(), ...meta };
  const c = new Check(name, code, payload, fds);
  let body: BackendRequest;
  switch (code) {
    case BackendReq.IOTLB_MSG:
      c.size(SIZE_IOTLB, 'IOTLB message');
      c.fdCount(0);
      body = { code, iotlb: readIotlb(c.dv) };
      break;
    case BackendReq.CONFIG_CHANGE_MSG:
      c.size(0, 'empty payload');
      c.fdCount(0);
      body = { code };
      break;
    case BackendReq.VRING_HOST_NOTIFIER_MSG: {
      c.size(SIZE_VRING_AREA, 'vring area');
      const { area, reservedBits } = readVringArea(c.dv);
      if (reservedBits !== 0n) c.fail(`reserved bits 0x${reservedBits.toString(16)} set in the ring/fd u64`);
      c.fdCount(area.noFd ? 0 : 1, area.noFd ? ' (the no-fd bit is set)' : ' (the no-fd bit is clear)');
      body = { code, area, fd: area.noFd ? null : fds[0] };
      break;
    }
    case BackendReq.VRING_CALL:
    case BackendReq.VRING_ERR:
      body = { code, state: vringState(c) };
      break;
    case BackendReq.SHARED_OBJECT_ADD:
    case BackendReq.SHARED_OBJECT_REMOVE:
    case BackendReq.SHARED_OBJECT_LOOKUP:
      c.size(SIZE_SHARED_UUID, 'shared object UUID');
      c.fdCount(0);
      body = { code, object: readShared(payload) };
      break;
  }
  return { ...body, ...meta, unknown: false } as DecodedBackendRequest;
}

export function encodeBackendRequest(req: BackendRequest, needReply = false): Encoded {
  let payload: Uint8Array = EMPTY;
  let fds: number[] = [];
  switch (req.code) {
    case BackendReq.IOTLB_MSG:
      payload = sized(SIZE_IOTLB, (dv) => writeIotlb(dv, req.iotlb));
      break;
    case BackendReq.CONFIG_CHANGE_MSG:
      break;
    case BackendReq.VRING_HOST_NOTIFIER_MSG:
      if ((req.fd === null) !== req.area.noFd) {
        throw new RangeError('VRING_HOST_NOTIFIER_MSG: fd must be null exactly when area.noFd is set');
      }
      payload = sized(SIZE_VRING_AREA, (dv) => writeVringArea(dv, req.area));
      fds = req.fd === null ? [] : [req.fd];
      break;
    case BackendReq.VRING_CALL:
    case BackendReq.VRING_ERR:
      payload = sized(SIZE_VRING_STATE, (dv) => writeVringState(dv, req.state));
      break;
    case BackendReq.SHARED_OBJECT_ADD:
    case BackendReq.SHARED_OBJECT_REMOVE:
    case BackendReq.SHARED_OBJECT_LOOKUP:
      payload = sharedBytes(req.object);
      break;
  }
  return { bytes: frame(req.code, VERSION | (needReply ? FLAG_NEED_REPLY : 0), payload), fds };
}

/** The front-end's answer to a back-end request: a u64 (0 = success); LOOKUP may carry the dma-buf fd. */
export function decodeBackendReply(code: number, header: Header, payload: Uint8Array, fds: number[] = []): Reply {
  const name = backendRequestName(code);
  checkReplyHeader(code, name, header, 'backend');
  checkFraming(`reply to ${name}`, header, payload, fds);
  const c = new Check(`reply to ${name}`, code, payload, fds);
  c.size(SIZE_U64, 'u64');
  if (code === BackendReq.SHARED_OBJECT_LOOKUP) {
    c.fdRange(0, 1);
    const value = c.u64();
    if (value !== 0n && fds.length > 0) c.fail('returns an fd together with a non-zero (error) result');
    return { kind: 'u64', code, value, fd: fds[0] ?? null, fds: fds.slice() };
  }
  c.fdCount(0);
  return { kind: 'u64', code, value: c.u64(), fd: null, fds: [] };
}

// ---------------------------------------------------------------------------------------------
// Experimental extension: the RFC's shared-memory state chunks (constants.ts RfcStateReq). Not
// part of decodeRequest: those numbers are unknown requests unless the extension was negotiated,
// and the session decodes them with decodeRfcStateRequest only then.

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

export function encodeRfcStateRequest(req: RfcStateRequest, needReply = false): Encoded {
  const flags = VERSION | (needReply ? FLAG_NEED_REPLY : 0);
  if (req.code === RfcStateReq.SET_STATE_AREA) {
    if ((req.size === 0n) !== (req.fd === null)) throw new RangeError('RFC_SET_STATE_AREA: an fd exactly when size > 0');
    const payload = sized(SIZE_RFC_STATE_AREA, (dv) => {
      dv.setBigUint64(0, req.size, LE);
      dv.setBigUint64(8, req.mmapOffset, LE);
      dv.setUint32(16, req.direction, LE);
      dv.setUint32(20, req.flags, LE);
    });
    return { bytes: frame(req.code, flags, payload), fds: req.fd === null ? [] : [req.fd] };
  }
  const payload = sized(SIZE_RFC_STATE_CHUNK, (dv) => {
    dv.setBigUint64(0, req.offset, LE);
    dv.setBigUint64(8, req.size, LE);
  });
  return { bytes: frame(req.code, flags, payload), fds: [] };
}

/** Decodes one of the extension's requests; throws ProtocolError (the caller closes the fds). */
export function decodeRfcStateRequest(header: Header, payload: Uint8Array, fds: number[]): RfcStateRequest & { needReply: boolean } {
  const code = header.request;
  const name = requestName(code);
  checkFraming(name, header, payload, fds);
  checkRequestFlags(name, header);
  if (!isRfcStateReqCode(code)) throw new ProtocolError(`${name} is not a request of the RFC state extension`, code);
  const c = new Check(name, code, payload, fds);
  if (code === RfcStateReq.SET_STATE_AREA) {
    c.size(SIZE_RFC_STATE_AREA, 'state area description');
    const size = c.dv.getBigUint64(0, LE);
    const mmapOffset = c.dv.getBigUint64(8, LE);
    const direction = c.dv.getUint32(16, LE);
    const flags = c.dv.getUint32(20, LE);
    if (flags !== 0) c.fail(`flags 0x${flags.toString(16)} are reserved (must be 0)`);
    if (size === 0n) {
      c.fdCount(0, ' (size 0 detaches the area)');
      return { code, size, mmapOffset, direction, flags, fd: null, needReply: header.needReply };
    }
    c.fdCount(1, ' (the area\'s memfd)');
    return { code, size, mmapOffset, direction, flags, fd: c.fds[0], needReply: header.needReply };
  }
  c.size(SIZE_RFC_STATE_CHUNK, 'chunk description');
  c.fdCount(0);
  return { code, offset: c.dv.getBigUint64(0, LE), size: c.dv.getBigUint64(8, LE), needReply: header.needReply };
}

export function encodeRfcGetStateReply(r: RfcGetStateReply): Uint8Array {
  return encodeReply(RfcStateReq.GET_STATE, sized(SIZE_RFC_GET_STATE_REPLY, (dv) => {
    dv.setBigUint64(0, r.status, LE);
    dv.setBigUint64(8, r.length, LE);
    dv.setBigUint64(16, r.remaining, LE);
  }));
}

/** Reply to RFC_SET_STATE_AREA / RFC_SET_STATE: a u64 (0 = success); to RFC_GET_STATE: its struct. */
export function decodeRfcStateReply(code: number, header: Header, payload: Uint8Array, fds: number[] = []): bigint | RfcGetStateReply {
  const name = requestName(code);
  checkFraming(name, header, payload, fds);
  checkReplyHeader(code, name, header, 'frontend');
  const c = new Check(`reply to ${name}`, code, payload, fds);
  c.fdCount(0);
  if (code === RfcStateReq.GET_STATE) {
    c.size(SIZE_RFC_GET_STATE_REPLY, 'chunk answer');
    return { status: c.dv.getBigUint64(0, LE), length: c.dv.getBigUint64(8, LE), remaining: c.dv.getBigUint64(16, LE) };
  }
  c.size(SIZE_U64, 'u64');
  return c.u64();
}
