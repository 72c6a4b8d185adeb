// Numbers of the vhost-user wire protocol (QEMU docs/interop/vhost-user.rst).

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

const reqNames = new Map<number, string>(Object.entries(Req).map(([n, c]) => [c, n]));
const backendReqNames = new Map<number, string>(Object.entries(BackendReq).map(([n, c]) => [c, n]));

export function isReqCode(code: number): code is ReqCode {
  return reqNames.has(code);
}

export function isBackendReqCode(code: number): code is BackendReqCode {
  return backendReqNames.has(code);
}

/** "SET_MEM_TABLE (5)"; unknown numbers read "unknown request 99" so errors stay readable. */
export function requestName(code: number): string {
  const name = reqNames.get(code) ?? rfcStateReqNames.get(code);
  return name === undefined ? `unknown request ${code}` : `${name} (${code})`;
}

/** Same as requestName for the back-end -> front-end direction. */
export function backendRequestName(code: number): string {
  const name = backendReqNames.get(code);
  return name === undefined ? `unknown back-end request ${code}` : `BACKEND_${name} (${code})`;
}

/**
 * Requests that always have a reply, NEED_REPLY or not (SET_LOG_BASE: in its LOG_SHMFD form,
 * the only one we accept). With REPLY_ACK, NEED_REPLY on these changes nothing: they still get
 * exactly one reply, their own; every other request gets a u64 ack only when NEED_REPLY is set.
 */
const withReply: ReadonlySet<number> = new Set<number>([
  Req.GET_FEATURES, Req.GET_PROTOCOL_FEATURES, Req.GET_VRING_BASE, Req.SET_LOG_BASE,
  Req.GET_QUEUE_NUM, Req.IOTLB_MSG, Req.GET_CONFIG, Req.CREATE_CRYPTO_SESSION,
  Req.POSTCOPY_ADVISE, Req.POSTCOPY_END, Req.GET_INFLIGHT_FD, Req.GET_MAX_MEM_SLOTS,
  Req.GET_STATUS, Req.GET_SHARED_OBJECT, Req.SET_DEVICE_STATE_FD, Req.CHECK_DEVICE_STATE,
]);

export function hasReply(code: number): boolean {
  return withReply.has(code);
}

/** Back-end requests that always have a reply (the rest only with NEED_REPLY). */
export function backendHasReply(code: number): boolean {
  return code === BackendReq.SHARED_OBJECT_LOOKUP;
}

// Header.
export const HEADER_SIZE = 12;
export const VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const FLAG_KNOWN_MASK = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES), as bit numbers. */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
  GET_VRING_BASE_INFLIGHT: 20,
} as const;
export type ProtocolFeatureName = keyof typeof ProtocolFeature;

/** A feature bit number as a u64 mask. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Virtio feature bit 30: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
/**
 * Feature bit 26 (linux/vhost.h): dirty logging of every guest-memory write. It reuses a bit
 * from the transport range; our shared notes once said 42, which QEMU does not recognise.
 */
export const VHOST_F_LOG_ALL = 26;
/** SET_VRING_ADDR flags bit 0: log writes to the used ring at log_guest_addr. */
export const VHOST_VRING_F_LOG = 0x1;
/** Dirty-log granularity. */
export const VHOST_LOG_PAGE = 0x1000;

/** u64 payload of SET_VRING_KICK/CALL/ERR (and the vring area's u64): ring index bits. */
export const VRING_IDX_MASK = 0xff;
/** ... and the "no fd: poll instead" bit. */
export const VRING_NOFD_MASK = 0x100;

/** SET_DEVICE_STATE_FD directions and phases. */
export const DeviceStateDirection = { SAVE: 0, LOAD: 1 } as const;
export const DeviceStatePhase = { STOPPED: 0 } as const;
/** SET_DEVICE_STATE_FD reply: bits 0-7 error code, bit 8 "no fd returned". */
export const DEVICE_STATE_REPLY_ERROR_MASK = 0xffn;
export const DEVICE_STATE_REPLY_NOFD = 0x100n;

/** IOTLB message types and permissions (struct vhost_iotlb_msg). */
export const IotlbType = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;
export const IotlbPerm = { NONE: 0, RO: 1, WO: 2, RW: 3 } as const;

/** GET/SET_CONFIG flags. */
export const ConfigFlags = { WRITABLE: 0, LIVE_MIGRATION: 1 } as const;

// Limits.
/** SCM_RIGHTS fds per message (QEMU's VHOST_MEMORY_BASELINE_NREGIONS / BACKEND_MAX_FDS). */
export const MAX_FDS = 8;
/** Regions in one SET_MEM_TABLE (one fd each, so bounded by MAX_FDS). */
export const MAX_MEM_TABLE_REGIONS = 8;
/**
 * What GET_MAX_MEM_SLOTS may report: QEMU caps the answer at its own limit (512 on x86) and
 * KVM's is 509 with room for the VM's other slots, so 509 is what real back-ends say.
 */
export const MAX_MEM_SLOTS = 509;
/** Largest virtio config space QEMU carries (VHOST_USER_MAX_CONFIG_SIZE). */
export const MAX_CONFIG_SIZE = 256;
/**
 * Largest payload accepted. Every defined payload is at most 328 bytes (SET_MEM_TABLE with 8
 * Xen-extended regions) except CREATE_CRYPTO_SESSION (~1.1 KiB: an asymmetric key of up to
 * 1024 bytes plus its setup data). 4096 leaves room for that and future growth while keeping
 * a hostile `size` from making us allocate and wait for gigabytes before we can reject it.
 */
export const MAX_PAYLOAD_SIZE = 4096;

// Payload sizes (QEMU's structs, natural alignment).
export const SIZE_U64 = 8;
export const SIZE_VRING_STATE = 8;
export const SIZE_VRING_ADDR = 40;
export const SIZE_MEM_REGION = 32;
/** With XEN_MMAP negotiated a region carries two more u32s (xen mmap flags, domid). */
export const SIZE_MEM_REGION_XEN = 40;
export const SIZE_MEM_TABLE_HEADER = 8;
export const SIZE_LOG = 16;
export const SIZE_IOTLB = 32;
export const SIZE_CONFIG_HEADER = 12;
export const SIZE_VRING_AREA = 24;
/** u64 + u64 + u16 + u16, padded to 8 (QEMU's VhostUserInflight is not packed). */
export const SIZE_INFLIGHT = 24;
export const SIZE_SHARED_UUID = 16;
export const SIZE_DEVICE_STATE = 8;

// ---------------------------------------------------------------------------------------------
// Experimental extension (vhost-wasm only, off by default): the 2023 RFC's shared-memory chunk
// protocol for back-end state ("vhost-user-fs: Internal migration", FS_SET_STATE_FD /
// FS_GET_STATE / FS_SET_STATE), made generic. The RFC numbered its messages 41-43; those numbers
// now belong to GET_SHARED_OBJECT / SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE, so the extension
// uses its own numbers, far outside the spec's range (front-end requests are 1-43 today and are
// allocated consecutively), and its own protocol feature bit. See docs/migration.md.

/**
 * Protocol feature bit of the extension. The spec allocates protocol feature bits upwards from 0
 * (20 is the highest so far): 63 is the bit a future spec revision reaches last. A front-end that
 * does not know the bit never sets it (QEMU masks GET_PROTOCOL_FEATURES with the bits it knows),
 * and the back-end offers it only when the operator asked for the extension.
 */
export const RFC_STATE_SHM_PROTOCOL_FEATURE = 63;

/** Request codes of the extension (front-end -> back-end), outside the spec's range. */
export const RfcStateReq = {
  /** payload {size u64, mmap_offset u64, direction u32, flags u32} + a memfd when size > 0; size 0 without fd = detach + final check. Reply u64. */
  SET_STATE_AREA: 1000,
  /** payload {offset u64, size u64}; reply {status u64, length u64, remaining u64}. */
  GET_STATE: 1001,
  /** payload {offset u64, size u64}; reply u64 status. */
  SET_STATE: 1002,
} as const;
export type RfcStateReqCode = (typeof RfcStateReq)[keyof typeof RfcStateReq];

const rfcStateReqNames = new Map<number, string>(Object.entries(RfcStateReq).map(([n, c]) => [c, `RFC_${n}`]));

export function isRfcStateReqCode(code: number): code is RfcStateReqCode {
  return rfcStateReqNames.has(code);
}

/** Payload sizes of the extension's messages. */
export const SIZE_RFC_STATE_AREA = 24;
export const SIZE_RFC_STATE_CHUNK = 16;
export const SIZE_RFC_GET_STATE_REPLY = 24;
