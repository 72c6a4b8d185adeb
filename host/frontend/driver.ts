// A vhost-user front-end in TypeScript: what QEMU does for a vhost-user device, in QEMU's
// order (vhost_user_backend_init, vhost_dev_init, vhost_dev_start), so a back-end that works
// with this works with QEMU and the other way round.

import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_VRING_F_LOG, featureBit } from '../protocol/constants.ts';
import { VirtioFeature } from '../device/features.ts';

/** VHOST_F_LOG_ALL is bit 26 (linux/vhost.h). */
const VHOST_F_LOG_ALL = VirtioFeature.LOG_ALL;
import type { VringAddr } from '../protocol/messages.ts';
import { native } from '../native/index.ts';
import type { Mapping } from '../native/api.ts';
import type { BackendChannel } from './backend-channel.ts';
import { VhostUserConnection } from './connection.ts';
import { GuestRam, type RamOptions } from './driver-memory.ts';
import { DriverQueue } from './queue.ts';

export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;

/** virtio status bits (SET_STATUS). */
export const VirtioStatus = { ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8 } as const;

/** Protocol features this front-end implements (what it offers in SET_PROTOCOL_FEATURES). */
export const FRONTEND_PROTOCOL_FEATURES: bigint = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
  ProtocolFeature.DEVICE_STATE,
  ProtocolFeature.LOG_SHMFD,
].reduce((m, b) => m | featureBit(b), 0n);

export interface FrontendOptions {
  /** Guest RAM in bytes (multiple of 4096). */
  memoryBytes: number;
  /** Region layout of guest RAM (see RamOptions); default one region per GiB. */
  memory?: Omit<RamOptions, 'bytes'>;
  /** Ring sizes, one per queue started (default [256]). */
  queues?: number[];
  /** Virtio device features wanted (device-specific bits, VERSION_1, ...); default VERSION_1. */
  features?: bigint;
  /** Negotiate VIRTIO_F_EVENT_IDX if offered (default true). */
  eventIdx?: boolean;
  /** Negotiate VIRTIO_F_INDIRECT_DESC if offered; a number sets entries per table (default 16 when true). */
  indirect?: boolean | number;
  /** Protocol features this front-end is willing to use (default FRONTEND_PROTOCOL_FEATURES). */
  protocolFeatures?: bigint;
  /** Describe memory with GET_MAX_MEM_SLOTS + ADD_MEM_REG instead of SET_MEM_TABLE (needs CONFIGURE_MEM_SLOTS). */
  addMemReg?: boolean;
  /** Send SET_VRING_ENABLE 1 per ring when protocol features are on (default true, as QEMU). */
  enableRings?: boolean;
  /** Ring index every queue starts at (SET_VRING_BASE); default 0. */
  startIndex?: number;
  /**
   * Inflight tracking as QEMU's vhost-user-blk does it: negotiate INFLIGHT_SHMFD, get an area
   * with GET_INFLIGHT_FD (every queue the size of the first) and hand it back with
   * SET_INFLIGHT_FD before the rings start. `reconnect` hands the same area to a new back-end.
   */
  inflight?: boolean;
}

/** The inflight area the front-end keeps across back-end restarts (GET_INFLIGHT_FD). */
export interface FrontendInflight {
  fd: number;
  size: number;
  numQueues: number;
  queueSize: number;
  /** The area as mapped here (shared with the back-end). */
  bytes: Uint8Array;
  mapping: Mapping;
}

export class VhostUserFrontend {
  private closed = false;
  /** Dirty logging state (startDirtyLog). */
  dirtyLog: FrontendDirtyLog | null = null;
  /** The inflight area (FrontendOptions.inflight), kept across back-end restarts. */
  inflight: FrontendInflight | null = null;

  private constructor(
    private connection: VhostUserConnection,
    readonly memory: GuestRam,
    readonly queues: DriverQueue[],
    /** GET_FEATURES's answer. */
    readonly offeredFeatures: bigint,
    /** What SET_FEATURES acked. */
    readonly features: bigint,
    /** GET_PROTOCOL_FEATURES's answer (0 without F_PROTOCOL_FEATURES). */
    readonly offeredProtocolFeatures: bigint,
    /** GET_QUEUE_NUM's answer, or null without MQ. */
    readonly backendQueues: number | null,
  ) {}

  /** The control connection (a migration moves it to the destination back-end). */
  get conn(): VhostUserConnection {
    return this.connection;
  }

  /** After a migration: the destination's connection replaces the source's (closed by the caller). */
  adoptConnection(conn: VhostUserConnection): VhostUserConnection {
    const old = this.connection;
    this.connection = conn;
    return old;
  }

  get protocolFeatures(): bigint {
    return this.conn.protocolFeatures;
  }

  get backend(): BackendChannel | null {
    return this.conn.backend;
  }

  hasFeature(bit: number): boolean {
    return (this.features & (1n << BigInt(bit))) !== 0n;
  }

  static async connect(path: string, opts: FrontendOptions): Promise<VhostUserFrontend> {
    const conn = VhostUserConnection.connect(path);
    let memory: GuestRam | null = null;
    const queues: DriverQueue[] = [];
    const made: { inflight: FrontendInflight | null } = { inflight: null };
    try {
      memory = GuestRam.create({ ...opts.memory, bytes: opts.memoryBytes });
      const r = await handshake(conn, memory, queues, opts, made);
      const fe = new VhostUserFrontend(conn, memory, queues, r.offered, r.features, r.offeredProtocol, r.backendQueues);
      fe.inflight = made.inflight;
      return fe;
    } catch (e) {
      if (made.inflight !== null) {
        made.inflight.mapping.unmap();
        native.close(made.inflight.fd);
      }
      for (const q of queues) q.close();
      conn.close();
      memory?.close();
      throw e;
    }
  }

  /** Stops ring i (GET_VRING_BASE) and returns the back-end's next avail index. */
  stopQueue(i: number): Promise<number> {
    return this.conn.getVringBase(this.queues[i].index);
  }

  /**
   * (Re)starts ring i on `conn` at `base`, as vhost_dev_start does: size, base, addresses (with
   * the log flag when dirty logging is on), kick, call, enable. The queue's memory and eventfds
   * are unchanged, so requests already on the ring are picked up from `base`.
   */
  async startQueue(i: number, base: number, conn: VhostUserConnection = this.conn): Promise<void> {
    const q = this.queues[i];
    await conn.setVringNum(q.index, q.ring.size);
    await conn.setVringBase(q.index, base);
    await conn.setVringAddr(ringAddr(q, this.dirtyLog !== null));
    await conn.setVringKick(q.index, q.kickFd);
    await conn.setVringCall(q.index, q.callFd);
    if (conn.hasProtocol(ProtocolFeature.STATUS) || (this.features & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))) !== 0n) {
      await conn.setVringEnable(q.index, true);
    }
  }

  /**
   * Dirty logging as QEMU starts it for a migration: a shared log (one bit per 4 KiB page of
   * guest memory) given with SET_LOG_BASE, then SET_FEATURES with VHOST_F_LOG_ALL and the rings'
   * addresses again with VHOST_VRING_F_LOG. Needs LOG_SHMFD.
   */
  async startDirtyLog(): Promise<FrontendDirtyLog> {
    if (!this.conn.hasProtocol(ProtocolFeature.LOG_SHMFD)) throw new Error('dirty logging needs LOG_SHMFD, which the back-end did not negotiate');
    if ((this.offeredFeatures & (1n << BigInt(VHOST_F_LOG_ALL))) === 0n) throw new Error('the back-end does not offer VHOST_F_LOG_ALL');
    const end = Math.max(...this.memory.regions.map((r) => r.gpa + r.size));
    const log = this.dirtyLog ?? FrontendDirtyLog.create(end);
    this.dirtyLog = log;
    await this.conn.setLogBase(log.size, 0, log.fd);
    await this.conn.setFeatures(this.features | (1n << BigInt(VHOST_F_LOG_ALL)));
    for (const q of this.queues) await this.conn.setVringAddr(ringAddr(q, true));
    return log;
  }

  /**
   * Stops dirty logging (SET_FEATURES without LOG_ALL; with `ringFlags`, also the ring addresses
   * without the log flag, as QEMU does). Returns the log, which the caller now owns and closes.
   */
  async stopDirtyLog(ringFlags = true): Promise<FrontendDirtyLog | null> {
    await this.conn.setFeatures(this.features);
    const log = this.dirtyLog;
    this.dirtyLog = null;
    if (ringFlags) for (const q of this.queues) await this.conn.setVringAddr(ringAddr(q, false));
    return log;
  }

  /** Reads `size` bytes of device config at `offset` (needs PROTOCOL_F_CONFIG). */
  getConfig(offset: number, size: number): Promise<Uint8Array> {
    return this.conn.getConfig(offset, size);
  }

  /** Closes the socket first (the back-end stops touching our memory), then rings and RAM. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.conn.close();
    await this.conn.closed;
    for (const q of this.queues) q.close();
    this.dirtyLog?.close();
    if (this.inflight !== null) {
      this.inflight.mapping.unmap();
      native.close(this.inflight.fd);
    }
    this.memory.close();
  }

  /**
   * After the back-end died: connects to `path` (a restarted back-end) and sets the device up
   * again as QEMU's reconnect does, with the same guest memory, rings and inflight area. Each
   * ring restarts at the used idx in guest memory (all a front-end knows without the dead
   * back-end's GET_VRING_BASE); the back-end learns from the area what was in flight.
   */
  async reconnect(path: string): Promise<void> {
    const conn = VhostUserConnection.connect(path);
    try {
      const offered = await conn.getFeatures();
      if ((offered & this.features) !== this.features) throw new Error('the restarted back-end does not offer the features acked before');
      await conn.setProtocolFeatures((await conn.getProtocolFeatures()) & this.protocolFeatures);
      if (conn.hasProtocol(ProtocolFeature.BACKEND_REQ)) await conn.setBackendReqFd();
      await conn.setOwner();
      // As QEMU's vhost_dev_prepare_inflight: features first, so the back-end knows the ring
      // layout (and with it the area's format) when the area arrives.
      await conn.setFeatures(this.features);
      const a = this.inflight;
      if (a !== null) await conn.setInflightFd(a.fd, a.size, 0, a.numQueues, a.queueSize);
      await conn.setMemTable(this.memory.memTable());
      for (let i = 0; i < this.queues.length; i++) {
        const q = this.queues[i];
        const used = new DataView(this.memory.view(q.ring.usedGpa + 2, 2).slice().buffer).getUint16(0, true);
        await this.startQueue(i, used, conn);
      }
    } catch (e) {
      conn.close();
      throw e;
    }
    this.adoptConnection(conn).close();
  }
}

/** SET_VRING_ADDR's payload for a queue; with `log`, the used ring is logged at its GPA. */
export function ringAddr(q: DriverQueue, log: boolean): VringAddr {
  const a = q.addresses();
  return {
    index: q.index,
    flags: log ? VHOST_VRING_F_LOG : 0,
    descUserAddr: BigInt(a.desc),
    usedUserAddr: BigInt(a.used),
    availUserAddr: BigInt(a.avail),
    logGuestAddr: BigInt(q.ring.usedGpa),
  };
}

/** The front-end's dirty log: a memfd the back-end maps, one bit per 4 KiB guest page. */
export class FrontendDirtyLog {
  private constructor(
    readonly fd: number,
    readonly size: number,
    private readonly mapping: Mapping,
    private readonly bytes: Uint8Array,
  ) {}

  /** A log covering guest addresses [0, coverBytes). */
  static create(coverBytes: number): FrontendDirtyLog {
    const pages = Math.ceil(coverBytes / 4096);
    // QEMU sizes the log in u64 chunks; round up to a page so it can be mapped on its own.
    const size = Math.ceil(Math.ceil(pages / 8) / 4096) * 4096;
    const fd = native.memfdCreate('vhost-wasm-dirty-log', false);
    try {
      native.ftruncate(fd, size);
      const m = native.mmap(fd, size, 0, true);
      return new FrontendDirtyLog(fd, size, m, new Uint8Array(m.window(0, size)));
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  /** Dirty page numbers, in order; with `clear`, atomically takes them (as QEMU's sync does). */
  pages(clear = false): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.bytes.length; i++) {
      if (this.bytes[i] === 0) continue;
      const v = clear ? Atomics.exchange(this.bytes, i, 0) : this.bytes[i];
      for (let b = 0; b < 8; b++) if (v & (1 << b)) out.push(i * 8 + b);
    }
    return out;
  }

  isDirty(page: number): boolean {
    return (this.bytes[page >> 3] & (1 << (page & 7))) !== 0;
  }

  close(): void {
    this.mapping.unmap();
    try {
      native.close(this.fd);
    } catch {
      // already closed
    }
  }
}

interface Negotiated {
  offered: bigint;
  features: bigint;
  offeredProtocol: bigint;
  backendQueues: number | null;
}

/** Fills `queues` and `made` as it goes, so the caller can close what was created if a step fails. */
async function handshake(
  conn: VhostUserConnection,
  memory: GuestRam,
  queues: DriverQueue[],
  opts: FrontendOptions,
  made: { inflight: FrontendInflight | null },
): Promise<Negotiated> {
  const sizes = opts.queues ?? [256];
  const bit = (b: number) => 1n << BigInt(b);

  // vhost_user_backend_init
  const offered = await conn.getFeatures();
  const hasProtocol = (offered & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
  let offeredProtocol = 0n;
  let backendQueues: number | null = null;
  if (hasProtocol) {
    offeredProtocol = await conn.getProtocolFeatures();
    const ours = (opts.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES) | (opts.inflight ? featureBit(ProtocolFeature.INFLIGHT_SHMFD) : 0n);
    await conn.setProtocolFeatures(offeredProtocol & ours);
    if (conn.hasProtocol(ProtocolFeature.MQ)) {
      backendQueues = await conn.getQueueNum();
      if (sizes.length > backendQueues) {
        throw new Error(`the back-end supports ${backendQueues} queue(s), ${sizes.length} were asked for`);
      }
    }
    if (opts.addMemReg) {
      if (!conn.hasProtocol(ProtocolFeature.CONFIGURE_MEM_SLOTS)) throw new Error('addMemReg: the back-end did not negotiate CONFIGURE_MEM_SLOTS');
      const slots = await conn.getMaxMemSlots();
      if (memory.regions.length > slots) throw new Error(`the back-end has ${slots} memory slots, guest RAM has ${memory.regions.length} regions`);
    }
    if (conn.hasProtocol(ProtocolFeature.BACKEND_REQ)) await conn.setBackendReqFd();
  }
  // vhost_dev_init
  await conn.setOwner();

  // The features vhost_dev_start will set (the inflight area needs them first).
  const wantIndirect = opts.indirect !== undefined && opts.indirect !== false;
  let want = (opts.features ?? bit(VIRTIO_F_VERSION_1)) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
  if (opts.eventIdx ?? true) want |= bit(VIRTIO_F_EVENT_IDX);
  if (wantIndirect) want |= bit(VIRTIO_F_INDIRECT_DESC);
  const features = offered & want;
  // vhost_user_blk_start: the inflight area before the device starts
  if (opts.inflight) {
    // vhost_dev_prepare_inflight: the features go first, so the back-end knows the ring layout
    // (split or packed), which decides the area's format.
    await conn.setFeatures(features);
    if (!conn.hasProtocol(ProtocolFeature.INFLIGHT_SHMFD)) throw new Error('inflight: the back-end did not negotiate INFLIGHT_SHMFD');
    const got = await conn.getInflightFd(sizes.length, sizes[0]);
    if (got.fd === null) throw new Error('inflight: the back-end answered GET_INFLIGHT_FD without an area');
    let mapping: Mapping;
    try {
      mapping = native.mmap(got.fd, got.size, got.offset, true);
    } catch (e) {
      native.close(got.fd);
      throw e;
    }
    made.inflight = { fd: got.fd, size: got.size, numQueues: sizes.length, queueSize: sizes[0], bytes: new Uint8Array(mapping.window(0, got.size)), mapping };
    await conn.setInflightFd(got.fd, got.size, got.offset, sizes.length, sizes[0]);
  }

  // vhost_dev_start
  const status = conn.hasProtocol(ProtocolFeature.STATUS);
  if (status) await conn.setStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
  await conn.setFeatures(features);
  if (status) await conn.setStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);

  if (opts.addMemReg) {
    for (const r of memory.memTable()) await conn.addMemReg(r);
  } else {
    await conn.setMemTable(memory.memTable());
  }

  const eventIdx = (features & bit(VIRTIO_F_EVENT_IDX)) !== 0n;
  const indirect = (features & bit(VIRTIO_F_INDIRECT_DESC)) !== 0n;
  const entries = indirect ? (typeof opts.indirect === 'number' ? opts.indirect : 16) : 0;
  for (let i = 0; i < sizes.length; i++) {
    const q = new DriverQueue(memory, { index: i, size: sizes[i], eventIdx, indirectEntries: entries, startIndex: opts.startIndex });
    queues.push(q);
    await conn.setVringNum(i, sizes[i]);
    await conn.setVringBase(i, q.startIndex);
    await conn.setVringAddr(ringAddr(q, false));
    await conn.setVringKick(i, q.kickFd);
    await conn.setVringCall(i, q.callFd);
    q.start();
  }
  if (hasProtocol && (opts.enableRings ?? true)) {
    for (let i = 0; i < sizes.length; i++) await conn.setVringEnable(i, true);
  }
  if (status) {
    await conn.setStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
  }
  return { offered, features, offeredProtocol, backendQueues };
}
