// Typed wire payloads and the decoded forms of every vhost-user message.
// u64 fields are bigint (addresses and feature masks use all 64 bits); u32 and smaller are number.

import type { Req, BackendReq } from './requests.ts';

export interface Header {
  request: number;
  /** Raw flags word (version bits included). */
  flags: number;
  size: number;
  reply: boolean;
  needReply: boolean;
}

/** struct vhost_vring_state: GET/SET_VRING_BASE, SET_VRING_NUM/ENABLE/ENDIAN, VRING_KICK, back-end VRING_CALL/ERR. */
export interface VringState {
  index: number;
  num: number;
}

/** struct vhost_vring_addr: front-end virtual addresses (IOVAs with IOMMU_PLATFORM). */
export interface VringAddr {
  index: number;
  /** Bit 0 = VHOST_VRING_F_LOG. */
  flags: number;
  descUserAddr: bigint;
  usedUserAddr: bigint;
  availUserAddr: bigint;
  logGuestAddr: bigint;
}

/** VhostUserMemoryRegion (xen fields only when XEN_MMAP was negotiated). */
export interface MemoryRegion {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
  xen?: { mmapFlags: number; domid: number };
}

/** A region of SET_MEM_TABLE / ADD_MEM_REG together with the fd it is mapped from. */
export interface MemoryRegionWithFd extends MemoryRegion {
  fd: number;
}

/** VhostUserLog: the dirty-log area inside the SET_LOG_BASE fd. */
export interface LogArea {
  mmapSize: bigint;
  mmapOffset: bigint;
}

/** struct vhost_iotlb_msg. */
export interface IotlbMsg {
  iova: bigint;
  size: bigint;
  userAddr: bigint;
  perm: number;
  type: number;
}

/** VhostUserConfig: `data.length` is the access size. */
export interface ConfigSpace {
  offset: number;
  flags: number;
  data: Uint8Array;
}

/** VhostUserInflight. */
export interface InflightDescription {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

/** VhostUserVringArea (back-end VRING_HOST_NOTIFIER_MSG). */
export interface VringArea {
  /** Ring index (bits 0-7 of the u64). */
  index: number;
  /** Bit 8 of the u64: unregister, no fd attached. */
  noFd: boolean;
  size: bigint;
  offset: bigint;
}

/** VhostUserShared: a 16-byte UUID, kept as bytes. */
export interface SharedObject {
  uuid: Uint8Array;
}

/** VhostUserTransferDeviceState. */
export interface DeviceStateParams {
  /** 0 = SAVE (back-end writes), 1 = LOAD (back-end reads). Other values are passed through for the session to reject. */
  direction: number;
  /** 0 = STOPPED is the only phase defined. */
  phase: number;
}

type R = typeof Req;

/** A front-end -> back-end request, as encodeRequest takes it and decodeRequest returns it. */
export type FrontendRequest =
  | { code: R['GET_FEATURES'] }
  | { code: R['SET_FEATURES']; features: bigint }
  | { code: R['SET_OWNER'] }
  | { code: R['RESET_OWNER'] }
  | { code: R['SET_MEM_TABLE']; regions: MemoryRegionWithFd[] }
  | { code: R['SET_LOG_BASE']; log: LogArea; fd: number }
  | { code: R['SET_LOG_FD']; fd: number }
  | { code: R['SET_VRING_NUM']; state: VringState }
  | { code: R['SET_VRING_ADDR']; addr: VringAddr }
  | { code: R['SET_VRING_BASE']; state: VringState }
  | { code: R['GET_VRING_BASE']; state: VringState }
  /** fd null = the no-fd bit: poll the ring instead of waiting for a kick. */
  | { code: R['SET_VRING_KICK']; index: number; fd: number | null }
  | { code: R['SET_VRING_CALL']; index: number; fd: number | null }
  | { code: R['SET_VRING_ERR']; index: number; fd: number | null }
  | { code: R['GET_PROTOCOL_FEATURES'] }
  | { code: R['SET_PROTOCOL_FEATURES']; features: bigint }
  | { code: R['GET_QUEUE_NUM'] }
  | { code: R['SET_VRING_ENABLE']; state: VringState }
  /** The guest MAC in the low 6 bytes of a u64. */
  | { code: R['SEND_RARP']; mac: bigint }
  | { code: R['NET_SET_MTU']; mtu: bigint }
  | { code: R['SET_BACKEND_REQ_FD']; fd: number }
  | { code: R['IOTLB_MSG']; iotlb: IotlbMsg }
  | { code: R['SET_VRING_ENDIAN']; state: VringState }
  /** `data` is the requested size's worth of (ignored) bytes. */
  | { code: R['GET_CONFIG']; config: ConfigSpace }
  | { code: R['SET_CONFIG']; config: ConfigSpace }
  /** VhostUserCryptoSession is device-specific and variable; carried as raw bytes. */
  | { code: R['CREATE_CRYPTO_SESSION']; session: Uint8Array }
  | { code: R['CLOSE_CRYPTO_SESSION']; sessionId: bigint }
  | { code: R['POSTCOPY_ADVISE'] }
  | { code: R['POSTCOPY_LISTEN'] }
  | { code: R['POSTCOPY_END'] }
  | { code: R['GET_INFLIGHT_FD']; inflight: InflightDescription }
  | { code: R['SET_INFLIGHT_FD']; inflight: InflightDescription; fd: number }
  | { code: R['GPU_SET_SOCKET']; fd: number }
  | { code: R['RESET_DEVICE'] }
  | { code: R['VRING_KICK']; state: VringState }
  | { code: R['GET_MAX_MEM_SLOTS'] }
  | { code: R['ADD_MEM_REG']; region: MemoryRegionWithFd }
  /** Any fd a front-end attached anyway is only in `fds` (the spec says close it unused). */
  | { code: R['REM_MEM_REG']; region: MemoryRegion }
  | { code: R['SET_STATUS']; status: bigint }
  | { code: R['GET_STATUS'] }
  | { code: R['GET_SHARED_OBJECT']; object: SharedObject }
  | { code: R['SET_DEVICE_STATE_FD']; params: DeviceStateParams; fd: number }
  | { code: R['CHECK_DEVICE_STATE'] };

/** What a received message carried besides its payload. */
export interface MessageMeta {
  flags: number;
  needReply: boolean;
  /**
   * Every fd that arrived with the message, in order. The receiver owns all of them: it keeps
   * the ones the typed fields name and must close the rest (and all of them on error).
   */
  fds: number[];
}

export type DecodedRequest = FrontendRequest & MessageMeta & { unknown: false };

/**
 * A request number this protocol version does not define. Not an error at the codec level:
 * the session decides (reply a non-zero u64 when NEED_REPLY is set, else refuse/close), so a
 * newer front-end probing an optional message does not cost the whole connection here.
 */
export interface UnknownRequest extends MessageMeta {
  unknown: true;
  code: number;
  payload: Uint8Array;
}

export type AnyDecodedRequest = DecodedRequest | UnknownRequest;

type B = typeof BackendReq;

/** A back-end -> front-end request (on the back-end request socket). */
export type BackendRequest =
  | { code: B['IOTLB_MSG']; iotlb: IotlbMsg }
  | { code: B['CONFIG_CHANGE_MSG'] }
  /** fd null exactly when area.noFd: unregister the notifier. */
  | { code: B['VRING_HOST_NOTIFIER_MSG']; area: VringArea; fd: number | null }
  | { code: B['VRING_CALL']; state: VringState }
  | { code: B['VRING_ERR']; state: VringState }
  | { code: B['SHARED_OBJECT_ADD']; object: SharedObject }
  | { code: B['SHARED_OBJECT_REMOVE']; object: SharedObject }
  | { code: B['SHARED_OBJECT_LOOKUP']; object: SharedObject };

export type DecodedBackendRequest = BackendRequest & MessageMeta & { unknown: false };
export type AnyDecodedBackendRequest = DecodedBackendRequest | UnknownRequest;

/** A decoded reply (the front-end side of a request it sent, or the back-end side of a back-end request). */
export type Reply =
  /** A u64 answer or REPLY_ACK; `fd` for the replies that may carry one (SET_DEVICE_STATE_FD, GET_SHARED_OBJECT, POSTCOPY_ADVISE, BACKEND_SHARED_OBJECT_LOOKUP). */
  | { kind: 'u64'; code: number; value: bigint; fd: number | null; fds: number[] }
  | { kind: 'vring-state'; code: number; state: VringState; fds: number[] }
  /** config null: the back-end answered with an empty payload, which the spec defines as an error. */
  | { kind: 'config'; code: number; config: ConfigSpace | null; fds: number[] }
  /** fd null only when mmapSize is 0 (no inflight area). */
  | { kind: 'inflight'; code: number; inflight: InflightDescription; fd: number | null; fds: number[] }
  /** Postcopy SET_MEM_TABLE reply: the back-end's mapping bases. */
  | { kind: 'memory-table'; code: number; regions: MemoryRegion[]; fds: number[] }
  /** Postcopy ADD_MEM_REG reply. */
  | { kind: 'mem-region'; code: number; region: MemoryRegion; fds: number[] }
  | { kind: 'crypto-session'; code: number; session: Uint8Array; fds: number[] };

/** Bytes ready for the socket, and the fds to attach to their first byte. */
export interface Encoded {
  bytes: Uint8Array;
  fds: number[];
}

/** One framed message as the channel delivers it. */
export interface RawMessage {
  header: Header;
  payload: Uint8Array;
  fds: number[];
}
