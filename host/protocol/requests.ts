// The vhost-user request table: for every request, its payload codec, fd rule, reply rule,
// required protocol feature, a description and its debug text. Everything else derives from it:
// decode and encode (codec.ts), which requests always have a reply (hasReply), the session's
// feature gate (requiredFeature) and debug lines (describeRequest). Adding a request means one
// entry here and one member of the typed union in messages.ts, which the compiler ties together.
// Numbers and semantics: QEMU docs/interop/vhost-user.rst.

import { ProtocolFeature } from './constants.ts';
import {
  deviceStateParams, inflightDescription, iotlbMsg, logArea, sharedObject, u64, vringAddr, vringState,
} from './layout.ts';
import {
  ack, always, configAnswer, configSpace, cryptoSession, cryptoSessionAnswer, deviceStateAnswer, empty, fdPerRegion,
  field, hostNotifierArea, inflightAnswer, lookupAnswer, memRegionAnswer, memTable, memTableAnswer, noFds,
  notifierFd, oneFd, postcopyAdviseAnswer, regionFd, ringFd, ringFdRule, sharedObjectAnswer, singleRegion, strayFd,
  u64Answer, vringStateAnswer, type FdRule, type PayloadCodec, type ReplyRule,
} from './payload-codec.ts';
import type { BackendRequest, ConfigSpace, FrontendRequest } from './messages.ts';

/** Front-end -> back-end request codes. */
export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;
export type ReqName = keyof typeof Req;
export type ReqCode = (typeof Req)[ReqName];

/** Back-end -> front-end request codes (sent on the SET_BACKEND_REQ_FD socket). */
export const BackendReq = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;
export type BackendReqName = keyof typeof BackendReq;
export type BackendReqCode = (typeof BackendReq)[BackendReqName];

/** One request: everything the protocol says about it. P = payload fields, B = typed body. */
export interface RequestDef<P, B> {
  readonly payload: PayloadCodec<P>;
  readonly fds: FdRule<P, B>;
  readonly reply: ReplyRule<unknown>;
  /** Protocol feature bit it needs; sent without that feature negotiated = a front-end bug. */
  readonly feature?: number;
  /** One line: what the request does. */
  readonly description: string;
  /** The values worth a debug log line, with a leading space (none: the name says it all). */
  readonly debug?: (b: B) => string;
}

/** A table entry as the registry holds it. */
export interface RequestEntry extends RequestDef<unknown, unknown> {
  readonly code: number;
  readonly name: string;
  /**
   * A vhost-wasm extension (registered by its own module): decoded only when its caller asks
   * for extensions (it negotiated the extension's feature); otherwise an unknown request.
   */
  readonly extension: boolean;
}

/** The typed body (everything but `code`) of the request with code C in union U. */
export type BodyOf<U, C> = U extends { code: C } ? Omit<U, 'code'> : never;

// Entries are checked against the typed unions: P ties payload and fd rule, B the union member.
type Def<B> = RequestDef<any, B>;
const def = <P, B>(d: RequestDef<P, B>): RequestDef<P, B> => d;

const hex = (v: bigint | number) => `0x${v.toString(16)}`;
const region = (r: { guestPhysAddr: bigint; memorySize: bigint; userspaceAddr: bigint; mmapOffset: bigint }) =>
  `[gpa ${hex(r.guestPhysAddr)} size ${hex(r.memorySize)} uva ${hex(r.userspaceAddr)} off ${hex(r.mmapOffset)}]`;
const ring = (b: { state: { index: number; num: number } }) => ` ring ${b.state.index} num ${b.state.num}`;
const ringFdText = (b: { index: number; fd: number | null }) => ` ring ${b.index} ${b.fd === null ? 'no fd' : 'fd'}`;
const configText = (b: { config: ConfigSpace }) => ` offset ${b.config.offset} size ${b.config.data.length}`;

const F = ProtocolFeature;

const frontendTable: { [N in ReqName]: Def<BodyOf<FrontendRequest, (typeof Req)[N]>> } = {
  GET_FEATURES: def({ payload: empty, fds: noFds(), reply: always(u64Answer), description: 'the virtio features the back-end offers' }),
  SET_FEATURES: def({
    payload: field('features', u64), fds: noFds(), reply: ack,
    description: 'the virtio features the front-end accepted', debug: (b) => ` ${hex(b.features)}`,
  }),
  SET_OWNER: def({ payload: empty, fds: noFds(), reply: ack, description: 'the front-end claims the session' }),
  RESET_OWNER: def({ payload: empty, fds: noFds(), reply: ack, description: 'deprecated; no defined meaning' }),
  SET_MEM_TABLE: def({
    payload: memTable, fds: fdPerRegion, reply: { when: 'ack', codec: memTableAnswer },
    description: 'the whole guest memory table, one fd per region (replaces the previous table)',
    debug: (b) => ' ' + b.regions.map(region).join(' '),
  }),
  SET_LOG_BASE: def({
    // Only the LOG_SHMFD form (log area + fd) is usable by a separate process: without the fd
    // there is no log to write to, so the fd is required rather than optional.
    payload: field('log', logArea), fds: oneFd(), reply: always(u64Answer), feature: F.LOG_SHMFD,
    description: 'the dirty-page log area (shared memory fd) for live migration',
  }),
  SET_LOG_FD: def({ payload: empty, fds: oneFd(), reply: ack, description: 'an eventfd to signal when the log was written' }),
  SET_VRING_NUM: def({ payload: field('state', vringState), fds: noFds(), reply: ack, description: 'a ring\'s size', debug: ring }),
  SET_VRING_ADDR: def({
    payload: field('addr', vringAddr), fds: noFds(), reply: ack, description: 'a ring\'s descriptor, avail and used addresses and its log flag',
    debug: (b) => ` ring ${b.addr.index} desc ${hex(b.addr.descUserAddr)} avail ${hex(b.addr.availUserAddr)} used ${hex(b.addr.usedUserAddr)} flags ${b.addr.flags} log ${hex(b.addr.logGuestAddr)}`,
  }),
  SET_VRING_BASE: def({ payload: field('state', vringState), fds: noFds(), reply: ack, description: 'the avail index a ring starts at', debug: ring }),
  GET_VRING_BASE: def({
    payload: field('state', vringState), fds: noFds(), reply: always(vringStateAnswer),
    description: 'stops a ring; the reply is the next avail index to process', debug: ring,
  }),
  SET_VRING_KICK: def({ payload: ringFd, fds: ringFdRule, reply: ack, description: 'a ring\'s kick eventfd (or none: poll); starts the ring', debug: ringFdText }),
  SET_VRING_CALL: def({ payload: ringFd, fds: ringFdRule, reply: ack, description: 'a ring\'s call eventfd for used-buffer notifications', debug: ringFdText }),
  SET_VRING_ERR: def({ payload: ringFd, fds: ringFdRule, reply: ack, description: 'a ring\'s error eventfd', debug: ringFdText }),
  GET_PROTOCOL_FEATURES: def({ payload: empty, fds: noFds(), reply: always(u64Answer), description: 'the protocol features the back-end offers' }),
  SET_PROTOCOL_FEATURES: def({
    payload: field('features', u64), fds: noFds(), reply: ack,
    description: 'the protocol features the front-end accepted', debug: (b) => ` ${hex(b.features)}`,
  }),
  GET_QUEUE_NUM: def({ payload: empty, fds: noFds(), reply: always(u64Answer), feature: F.MQ, description: 'how many queues the back-end has' }),
  SET_VRING_ENABLE: def({ payload: field('state', vringState), fds: noFds(), reply: ack, description: 'enables or disables a ring', debug: ring }),
  SEND_RARP: def({ payload: field('mac', u64), fds: noFds(), reply: ack, description: 'net: announce the guest MAC after migration' }),
  NET_SET_MTU: def({ payload: field('mtu', u64), fds: noFds(), reply: ack, description: 'net: the MTU' }),
  SET_BACKEND_REQ_FD: def({
    payload: empty, fds: oneFd(), reply: ack, feature: F.BACKEND_REQ,
    description: 'a socket on which the back-end sends its own requests',
  }),
  IOTLB_MSG: def({ payload: field('iotlb', iotlbMsg), fds: noFds(), reply: always(u64Answer), description: 'an IOTLB update or invalidation (vIOMMU)' }),
  SET_VRING_ENDIAN: def({ payload: field('state', vringState), fds: noFds(), reply: ack, description: 'a legacy ring\'s endianness' }),
  GET_CONFIG: def({
    payload: configSpace, fds: noFds(), reply: always(configAnswer), feature: F.CONFIG,
    description: 'reads the device config space', debug: configText,
  }),
  SET_CONFIG: def({
    payload: configSpace, fds: noFds(), reply: ack, feature: F.CONFIG,
    description: 'writes the device config space', debug: configText,
  }),
  CREATE_CRYPTO_SESSION: def({ payload: cryptoSession, fds: noFds(), reply: always(cryptoSessionAnswer), description: 'crypto: open a session' }),
  CLOSE_CRYPTO_SESSION: def({ payload: field('sessionId', u64), fds: noFds(), reply: ack, description: 'crypto: close a session' }),
  POSTCOPY_ADVISE: def({ payload: empty, fds: noFds(), reply: always(postcopyAdviseAnswer), description: 'postcopy: the reply carries a userfaultfd' }),
  POSTCOPY_LISTEN: def({ payload: empty, fds: noFds(), reply: ack, description: 'postcopy: start handling faults' }),
  POSTCOPY_END: def({ payload: empty, fds: noFds(), reply: always(u64Answer), description: 'postcopy: done' }),
  GET_INFLIGHT_FD: def({
    payload: field('inflight', inflightDescription), fds: noFds(), reply: always(inflightAnswer),
    description: 'asks for a shared in-flight tracking area',
  }),
  SET_INFLIGHT_FD: def({
    payload: field('inflight', inflightDescription), fds: oneFd(), reply: ack,
    description: 'hands back the in-flight area after a reconnect',
  }),
  GPU_SET_SOCKET: def({ payload: empty, fds: oneFd(), reply: ack, description: 'gpu: the socket for the gpu protocol' }),
  RESET_DEVICE: def({ payload: empty, fds: noFds(), reply: ack, feature: F.RESET_DEVICE, description: 'resets the device to its initial state' }),
  VRING_KICK: def({
    payload: field('state', vringState), fds: noFds(), reply: ack, feature: F.INBAND_NOTIFICATIONS,
    description: 'an in-band kick of a ring', debug: ring,
  }),
  GET_MAX_MEM_SLOTS: def({
    payload: empty, fds: noFds(), reply: always(u64Answer), feature: F.CONFIGURE_MEM_SLOTS,
    description: 'how many memory regions the back-end accepts',
  }),
  ADD_MEM_REG: def({
    payload: singleRegion, fds: regionFd, reply: { when: 'ack', codec: memRegionAnswer }, feature: F.CONFIGURE_MEM_SLOTS,
    description: 'adds one guest memory region', debug: (b) => ` ${region(b.region)}`,
  }),
  REM_MEM_REG: def({
    payload: singleRegion, fds: strayFd(), reply: ack, feature: F.CONFIGURE_MEM_SLOTS,
    description: 'removes one guest memory region', debug: (b) => ` ${region(b.region)}`,
  }),
  SET_STATUS: def({
    payload: field('status', u64), fds: noFds(), reply: ack, feature: F.STATUS,
    description: 'the virtio device status byte', debug: (b) => ` ${hex(b.status)}`,
  }),
  GET_STATUS: def({ payload: empty, fds: noFds(), reply: always(u64Answer), feature: F.STATUS, description: 'reads the virtio device status byte' }),
  GET_SHARED_OBJECT: def({
    payload: field('object', sharedObject), fds: noFds(), reply: always(sharedObjectAnswer),
    description: 'asks for the dma-buf of a shared object by UUID',
  }),
  SET_DEVICE_STATE_FD: def({
    payload: field('params', deviceStateParams), fds: oneFd(), reply: always(deviceStateAnswer), feature: F.DEVICE_STATE,
    description: 'starts saving or loading the device state through the fd',
    debug: (b) => ` direction ${b.params.direction} phase ${b.params.phase}`,
  }),
  CHECK_DEVICE_STATE: def({
    payload: empty, fds: noFds(), reply: always(u64Answer), feature: F.DEVICE_STATE,
    description: 'the outcome of the state transfer, once it is known',
  }),
};

const backendTable: { [N in BackendReqName]: Def<BodyOf<BackendRequest, (typeof BackendReq)[N]>> } = {
  IOTLB_MSG: def({ payload: field('iotlb', iotlbMsg), fds: noFds(), reply: ack, description: 'an IOTLB miss or access failure (vIOMMU)' }),
  CONFIG_CHANGE_MSG: def({ payload: empty, fds: noFds(), reply: ack, description: 'the device config space changed' }),
  VRING_HOST_NOTIFIER_MSG: def({
    payload: hostNotifierArea, fds: notifierFd, reply: ack,
    description: 'maps (or unmaps) a ring\'s notification area in the front-end',
  }),
  VRING_CALL: def({ payload: field('state', vringState), fds: noFds(), reply: ack, description: 'an in-band call: the ring has used buffers' }),
  VRING_ERR: def({ payload: field('state', vringState), fds: noFds(), reply: ack, description: 'an in-band ring error' }),
  SHARED_OBJECT_ADD: def({ payload: field('object', sharedObject), fds: noFds(), reply: ack, description: 'announces an exported shared object' }),
  SHARED_OBJECT_REMOVE: def({ payload: field('object', sharedObject), fds: noFds(), reply: ack, description: 'withdraws a shared object' }),
  SHARED_OBJECT_LOOKUP: def({
    payload: field('object', sharedObject), fds: noFds(), reply: always(lookupAnswer),
    description: 'asks the front-end for a shared object\'s fd',
  }),
};

// ---------------------------------------------------------------------------------------------
// The registry

const frontend = new Map<number, RequestEntry>();
const backend = new Map<number, RequestEntry>();

function fill(into: Map<number, RequestEntry>, codes: Record<string, number>, table: Record<string, RequestDef<unknown, unknown>>): void {
  for (const [name, code] of Object.entries(codes)) into.set(code, { ...table[name], code, name, extension: false });
}
fill(frontend, Req, frontendTable as unknown as Record<string, RequestDef<unknown, unknown>>);
fill(backend, BackendReq, backendTable as unknown as Record<string, RequestDef<unknown, unknown>>);

/**
 * Adds an extension's front-end requests (host/protocol/rfc-state-shm.ts). Its codes must be
 * outside the spec's and each other's: a clash would silently change a request's meaning.
 */
export function registerExtension(entries: Record<string, { code: number } & RequestDef<never, never>>): void {
  for (const [name, e] of Object.entries(entries)) {
    if (frontend.has(e.code)) throw new Error(`extension request ${name} reuses code ${e.code} (${frontend.get(e.code)!.name})`);
    frontend.set(e.code, { ...(e as unknown as RequestDef<unknown, unknown>), code: e.code, name, extension: true });
  }
}

/** The entry for a front-end request code; extension entries only when asked for. */
export function frontendRequest(code: number, extensions = false): RequestEntry | undefined {
  const e = frontend.get(code);
  return e === undefined || (e.extension && !extensions) ? undefined : e;
}

export function backendRequest(code: number): RequestEntry | undefined {
  return backend.get(code);
}

/** Every front-end entry, spec and registered extensions (tests, docs). */
export function frontendRequests(): RequestEntry[] {
  return [...frontend.values()];
}

export function backendRequests(): RequestEntry[] {
  return [...backend.values()];
}

// ---------------------------------------------------------------------------------------------
// Derived facts

export function isReqCode(code: number): code is ReqCode {
  return frontendRequest(code) !== undefined;
}

export function isBackendReqCode(code: number): code is BackendReqCode {
  return backend.has(code);
}

/** "SET_MEM_TABLE (5)"; unknown numbers read "unknown request 99" so errors stay readable. */
export function requestName(code: number): string {
  const e = frontend.get(code);
  return e === undefined ? `unknown request ${code}` : `${e.name} (${code})`;
}

/** Same as requestName for the back-end -> front-end direction. */
export function backendRequestName(code: number): string {
  const e = backend.get(code);
  return e === undefined ? `unknown back-end request ${code}` : `BACKEND_${e.name} (${code})`;
}

/**
 * Requests that always have a reply, NEED_REPLY or not. With REPLY_ACK, NEED_REPLY on these
 * changes nothing: they still get exactly one reply, their own; every other request gets a u64
 * ack only when NEED_REPLY is set. Extension requests count only through their own module.
 */
export function hasReply(code: number): boolean {
  return frontendRequest(code)?.reply.when === 'always';
}

/** Back-end requests that always have a reply (the rest only with NEED_REPLY). */
export function backendHasReply(code: number): boolean {
  return backend.get(code)?.reply.when === 'always';
}

/** The protocol feature bit a front-end request needs, if any. */
export function requiredFeature(code: number): number | undefined {
  return frontendRequest(code)?.feature;
}

/** "DEVICE_STATE" for 19; a bit no name is known for reads "bit 63". */
export function protocolFeatureName(bit: number): string {
  return Object.entries(ProtocolFeature).find(([, v]) => v === bit)?.[0] ?? `bit ${bit}`;
}

/** The values of a decoded request, for debug logs (operators and tests read what the front-end sent). */
export function describeRequest(req: { code: number }): string {
  const e = frontend.get(req.code);
  return e?.debug?.(req) ?? '';
}

/** The reply decoder of a front-end request (a u64 for codes the table does not know). */
export function replyCodecOf(code: number, extensions = false): ReplyRule<unknown>['codec'] {
  return frontendRequest(code, extensions)?.reply.codec ?? u64Answer;
}

