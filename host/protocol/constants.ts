// Numbers of the vhost-user wire protocol (QEMU docs/interop/vhost-user.rst) that are not about
// one request: the header, feature bits, field values and limits. Request codes and everything
// about each request live in requests.ts; struct sizes in layout.ts.

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
