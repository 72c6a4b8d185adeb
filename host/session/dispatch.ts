// One vhost-user connection, back-end side: the message loop, feature negotiation and the
// reply rules (which request gets an ack, what a refusal answers). What each request does is
// in its own module: the memory table (memory-table.ts), ring fds (rings.ts), device state
// (device-state.ts, rfc-state-shm.ts), the back-end request channel (backend-channel.ts).
// Requests are handled strictly one at a time (the channel does not read the next message
// until the previous handler settled), which is what makes "GET_VRING_BASE replies after the
// ring stopped" hold.
//
// Fd ownership: every fd a front-end sends is owned by the session. The device worker only
// borrows memory, kick, call and err fds; they are closed once the worker stopped using them,
// or when the session ends (also when the worker died).

import { MessageChannel } from '../protocol/channel.ts';
import { decodeRequest, encodeConfigReply, encodeMemSlotsReply, encodeU64Reply, encodeVringStateReply } from '../protocol/codec.ts';
import { MAX_MEM_SLOTS, ProtocolFeature, VHOST_VRING_F_LOG, featureBit } from '../protocol/constants.ts';
import {
  BackendReq, Req, describeRequest, hasReply, protocolFeatureName, requestName, requiredFeature,
} from '../protocol/requests.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE, decodeRfcStateRequest, isRfcStateReqCode } from '../protocol/rfc-state-shm.ts';
import { ProtocolError } from '../protocol/errors.ts';
import type { DecodedRequest, RawMessage } from '../protocol/messages.ts';
import type { DeviceWorker, DeviceEvent } from '../device/worker-client.ts';
import type { DeviceSlot } from '../server/device-slot.ts';
import { VirtioFeature, bit, describeBits, DEVICE_FEATURE_MASK } from '../device/features.ts';
import { createLogger, errorText, type Logger } from '../log/logger.ts';
import { failureReply } from './failure-replies.ts';
import { closeFds } from './fds.ts';
import { RequestError, toNumber } from './request-error.ts';
import { MemoryTable } from './memory-table.ts';
import { RingFdTable, type RingFdKind } from './rings.ts';
import { DeviceStateTransfers, type TransferHost } from './device-state.ts';
import { RFC_STATE_SHM_FEATURE, RfcStateShmChannel } from './rfc-state-shm.ts';
import { DISK_HANDOVER_PROTOCOL_FEATURE, PRECOPY_PROTOCOL_FEATURE } from '../protocol/precopy.ts';
import { ADOPTION_UNCONFIRMED_ADVICE, checkHandedDisk } from '../migration/disk-handover.ts';
import { DeviceStateSection } from '../migration/transfer.ts';
import { BackendChannel } from './backend-channel.ts';
import { createInflightArea, setInflightArea } from './inflight.ts';
import { switchWorker, UpgradeRefused, type SessionSetup, type SwitchResult } from './upgrade.ts';
import { describeWarmUp } from '../device/warm-up.ts';
import { LIVE_RECORD_VERSION, type FdRef, type LiveSessionRecord, type LiveStop } from './handover-record.ts';
import { carryLocks, checkLockBounds, takeLocks } from './lock-carry.ts';
import { LiveHandoverBusy, LiveHandoverRefused, loadStateFromMemfd, saveStateToMemfd, stateIdentity, stopForHandover, type LiveCapture } from './live-handover.ts';
import type { FrontendRequest } from '../protocol/messages.ts';
import { native } from '../native/index.ts';
import type { SessionOptions } from './options.ts';

/** How a restored session reaches the old host (host/server/takeover.ts drives both). */
export interface RestoreWire {
  /** The old host stops its rings and saves the state: where they stopped, and the state memfd (taken). */
  stop(): Promise<{ stop: LiveStop; stateFd: number; lockFds?: number[] }>;
  /** "ready" / "go": true once the old host let go; the rings may start. */
  commit(): Promise<boolean>;
}

/** How long a live handover waits for the front-end's connection to reach a message boundary (each attempt; host-control retries). */
const HOLD_WAIT_MS = 500;

/** Virtio status bits the host sets on its own (virtio 1.x, 2.1). */
const STATUS_NEEDS_RESET = 0x40;

/** Protocol features this back-end implements. */
export const SUPPORTED_PROTOCOL_FEATURES = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.INBAND_NOTIFICATIONS,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
  ProtocolFeature.LOG_SHMFD,
  ProtocolFeature.DEVICE_STATE,
  ProtocolFeature.INFLIGHT_SHMFD,
].reduce((m, b) => m | featureBit(b), 0n);

/** Transport/ring features the host implements for every device. */
export const HOST_VIRTIO_FEATURES =
  bit(VirtioFeature.VERSION_1) |
  bit(VirtioFeature.RING_INDIRECT_DESC) |
  bit(VirtioFeature.RING_EVENT_IDX) |
  bit(VirtioFeature.RING_PACKED) |
  bit(VirtioFeature.PROTOCOL_FEATURES) |
  bit(VirtioFeature.LOG_ALL);

export class BackendSession {
  private readonly channel: MessageChannel;
  private readonly log: Logger;
  private ackedFeatures = 0n;
  private featuresSet = false;
  /** The worker an incoming pre-copy warmed up already (warmForIncoming). */
  private warmedWorker: DeviceWorker | null = null;
  private protocolFeatures = 0n;
  private status = 0;
  private needsReset: string | null = null;
  private readonly memory: MemoryTable;
  private readonly rings: RingFdTable;
  private readonly state: DeviceStateTransfers;
  private readonly rfcState: RfcStateShmChannel;
  private readonly backend: BackendChannel;
  private closed = false;
  /**
   * The front-end's requests and a plugin-upgrade run one at a time: each waits for the one
   * before (the channel already waits for each message; an upgrade joins the same line).
   */
  private turn: Promise<unknown> = Promise.resolve();
  /** The upgrade in progress, which a disconnect lets finish (or undo itself) before releasing. */
  private upgrading: Promise<unknown> | null = null;
  /** Rings started by SET_VRING_KICK and not stopped by GET_VRING_BASE since. */
  private readonly kickedRings = new Set<number>();
  /**
   * Destination of a disk hand-over: a ring started on the adopted disk, and the rings have not
   * all been stopped in order since. A connection that ends so may be a migration whose start
   * failed and whose source resumed on the same memfd: the disk is not served again (release()).
   */
  private adoptionUnconfirmed = false;
  /** Ends this session's lend of the memory disk (DeviceSlot.lendDisk), once it lent it. */
  private endDiskLend: (() => void) | null = null;
  /** Copies of the dirty log and inflight area fds the worker mapped: a new worker (upgrade) maps them too. */
  private logArea: SessionSetup['logArea'] = null;
  private inflightArea: SessionSetup['inflightArea'] = null;
  /** NEED_REPLY seen without REPLY_ACK negotiated (logged once per connection). */
  private strayNeedReplyLogged = false;

  constructor(
    fd: number,
    private worker: DeviceWorker,
    private readonly slot: DeviceSlot,
    private readonly opts: SessionOptions,
  ) {
    this.log = createLogger(`session ${opts.label}`);
    this.memory = new MemoryTable(this.log);
    this.rings = new RingFdTable(worker.info.numQueues, this.log);
    const transferHost: TransferHost = {
      log: this.log,
      settings: opts,
      worker: () => this.worker,
      reply: (bytes, fds) => this.reply(bytes, fds),
      transferStarted: (t) => slot.meter.transfer(t),
      memoryDisk: () => slot.memoryDiskHandle,
      precopyNegotiated: () => this.hasProtocol(PRECOPY_PROTOCOL_FEATURE),
      incomingPrecopy: () => this.warmForIncoming(),
      handoverNegotiated: () => this.hasProtocol(DISK_HANDOVER_PROTOCOL_FEATURE),
      adoptDisk: (fd) => this.adoptDisk(fd),
      adoptedDiskApplied: () => slot.adoptedDiskLoaded(),
      diskAdoptionPending: () => slot.adoptingDisk,
      diskLent: () => {
        this.endDiskLend ??= slot.lendDisk();
      },
    };
    this.state = new DeviceStateTransfers(transferHost);
    this.rfcState = new RfcStateShmChannel(transferHost, this.state);
    this.backend = new BackendChannel(opts.label, this.log);
    worker.onEvent = (e) => this.onDeviceEvent(e);
    this.channel = new MessageChannel(fd, {
      label: `front-end connection (${opts.label})`,
      // A session handed over by another host process is restored before anything is read.
      startHeld: opts.restoring === true,
      onMessage: (m) => this.inTurn(() => this.onMessage(m)),
      onClose: (reason) => this.onChannelClosed(reason),
    });
  }

  /** CONFIG only for a device that has a config space: QEMU warns about it otherwise. */
  get offeredProtocolFeatures(): bigint {
    const base = this.worker.info.configSize > 0 ? SUPPORTED_PROTOCOL_FEATURES : SUPPORTED_PROTOCOL_FEATURES & ~featureBit(ProtocolFeature.CONFIG);
    const precopy = this.slot.memoryDiskHandle !== null ? featureBit(PRECOPY_PROTOCOL_FEATURE) | featureBit(DISK_HANDOVER_PROTOCOL_FEATURE) : 0n;
    return (this.opts.experimentalRfcStateShm ? base | RFC_STATE_SHM_FEATURE : base) | precopy;
  }

  get offeredFeatures(): bigint {
    return (this.worker.info.features & DEVICE_FEATURE_MASK) | HOST_VIRTIO_FEATURES;
  }

  /** Ends the connection (host shutdown); resolves when everything is released. */
  close(reason: string | null = null): void {
    this.channel.close(reason);
  }

  private hasProtocol(bitNo: number): boolean {
    return (this.protocolFeatures & featureBit(bitNo)) !== 0n;
  }

  private hasFeature(bitNo: number): boolean {
    return (this.ackedFeatures & bit(bitNo)) !== 0n;
  }

  /**
   * A copy of an area's fd the session keeps (a plugin upgrade maps it again in the new worker);
   * when even that fails, the front-end's fd is closed and the request fails.
   */
  private dupOrClose(fd: number): number {
    try {
      return native.dup(fd);
    } catch (e) {
      this.closeFds([fd]);
      throw e;
    }
  }

  private closeFds(fds: readonly (number | null)[]): void {
    closeFds(fds, this.log);
  }

  // --- reply rules ---------------------------------------------------------------------------

  /**
   * Whether a request without a reply of its own gets the REPLY_ACK u64. NEED_REPLY means
   * nothing until REPLY_ACK is negotiated (spec, "REPLY_ACK"): a front-end that did not
   * negotiate it reads no ack, and an unexpected one would be taken as the answer to its next
   * request. Checked after the request ran, so SET_PROTOCOL_FEATURES enabling REPLY_ACK is acked.
   */
  private wantsAck(needReply: boolean): boolean {
    if (!needReply) return false;
    if (this.hasProtocol(ProtocolFeature.REPLY_ACK)) return true;
    if (!this.strayNeedReplyLogged) {
      this.strayNeedReplyLogged = true;
      this.log.warn('front-end set NEED_REPLY without negotiating REPLY_ACK: no ack is sent (the flag means nothing until REPLY_ACK is negotiated)');
    }
    return false;
  }

  /**
   * A request that always has a reply failed or is not supported: send its failure form if
   * the spec defines one, else end the connection (the front-end waits for an answer we cannot
   * give truthfully).
   */
  private async refuseWithReply(req: DecodedRequest, why: string): Promise<void> {
    const f = failureReply(req);
    if (f === null) throw new Error(`${why}; its reply has no failure form, so the connection is closed`);
    this.log.error(`${why}; answered with ${f.meaning}`);
    await this.reply(f.bytes);
  }

  private ack(code: number, ok: boolean): Promise<void> {
    return this.channel.send(encodeU64Reply(code, ok ? 0 : 1));
  }

  private reply(bytes: Uint8Array, fds: number[] = []): Promise<void> {
    return this.channel.send(bytes, fds);
  }

  /** Runs `fn` after every request and upgrade before it settled. */
  private inTurn<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.turn.then(fn);
    this.turn = p.catch(() => {});
    return p;
  }

  private setLogArea(a: SessionSetup['logArea']): void {
    this.closeFds([this.logArea?.fd ?? null]);
    this.logArea = a;
  }

  private setInflightCopy(a: SessionSetup['inflightArea']): void {
    this.closeFds([this.inflightArea?.fd ?? null]);
    this.inflightArea = a;
  }

  // --- live plugin upgrade (upgrade.ts) ------------------------------------------------------

  /**
   * Replaces the worker by `fresh` (started and name-checked by the caller) between two
   * front-end requests. On success `fresh` serves and the old worker is ended; on refusal
   * `fresh` is ended and the old one serves as before.
   */
  upgrade(fresh: DeviceWorker, adopt: (w: DeviceWorker) => void): Promise<SwitchResult> {
    const p = this.inTurn(async () => {
      const refuse = async (why: string): Promise<never> => {
        await fresh.terminate();
        throw new UpgradeRefused(why);
      };
      if (this.closed) return refuse('the front-end disconnected');
      if (this.state.current !== null) return refuse('a device state transfer (migration) is in progress or not yet collected (CHECK_DEVICE_STATE): retry after it');
      if (this.needsReset !== null) return refuse(`the device needs a reset (${this.needsReset}); upgrade after the front-end reset it`);
      if (this.worker.dead) return refuse(`the device's worker is gone (${this.worker.dead})`);
      const setup: SessionSetup = {
        features: this.featuresSet ? this.ackedFeatures : null,
        protocolFeatures: this.hasFeature(VirtioFeature.PROTOCOL_FEATURES),
        logging: this.hasFeature(VirtioFeature.LOG_ALL),
        memory: this.memory.current,
        logArea: this.logArea,
        inflightArea: this.inflightArea,
      };
      const old = this.worker;
      const r = await switchWorker(old, fresh, setup, this.log);
      this.worker = fresh;
      fresh.onEvent = (e) => this.onDeviceEvent(e);
      adopt(fresh);
      old.onEvent = () => {};
      // Its rings are stopped and its fds are the session's: ending it closes nothing of ours.
      void old.terminate();
      this.log.info(`plugin upgraded: rings ${r.rings.join(', ') || '(none running)'} moved to the new instance with ${r.stateBytes} state bytes; rings stopped ${r.stoppedMs.toFixed(2)} ms`);
      return r;
    });
    this.upgrading = p.catch(() => {});
    return p;
  }

  // --- an incoming pre-copy migration (device-state.ts, TransferHost.incomingPrecopy) -----------

  /**
   * Runs the worker's ring machinery once on scratch rings (warm-up.ts, as a plugin upgrade does
   * for its new instance) while the source still serves, so that the destination's rings start
   * after the stop with warm code: measured, the first SET_VRING_ENABLE of a cold worker took
   * 13-34 ms of the stop under a guest writer, 7-8 ms warm. Once per worker; only with the
   * features set (the warm-up runs the ring layout they select) and nothing of a ring's given
   * yet, since the warm-up leaves the device reset with no memory table: the features and the
   * memory table the front-end sent are given back to it here.
   */
  private async warmForIncoming(): Promise<void> {
    const w = this.worker;
    if (this.warmedWorker === w || !this.featuresSet || this.logArea !== null || this.inflightArea !== null) return;
    this.warmedWorker = w;
    if ((await w.ringSnapshot()).some((r) => r.started || r.num > 0)) return;
    const protocolFeatures = this.hasFeature(VirtioFeature.PROTOCOL_FEATURES);
    const rings = Array.from({ length: w.info.numQueues }, (_, i) => i);
    try {
      this.log.debug(`incoming pre-copy: ${describeWarmUp(await w.warmUp(this.ackedFeatures, protocolFeatures, rings))}`);
    } catch (e) {
      throw new Error(`the device failed its warm-up on a scratch ring before taking the migration (a build that cannot serve a read): ${errorText(e)}`);
    } finally {
      // Given back whatever the warm-up's outcome: the device as the front-end configured it.
      await w.setFeatures(this.ackedFeatures, protocolFeatures);
      await w.setLogAll(this.hasFeature(VirtioFeature.LOG_ALL));
      // Its windows mapped now, while the source serves (GuestMemory.mapWindows).
      if (this.memory.current.length > 0) await w.setMemTable(this.memory.current, true);
    }
  }

  // --- an incoming disk hand-over (disk-handover.ts, TransferHost.adoptDisk) ---------------------

  /**
   * Destination of a disk hand-over: `fd` (ours) is checked as hostile input, becomes the slot's
   * memory disk, and a fresh worker that maps it replaces the one that maps the old disk (a
   * worker's queue threads, disk views and mapped reads all belong to the disk it started
   * with), given the features and memory table the front-end sent. Refused (fd closed, nothing
   * changed) once a ring, log or inflight area was given: migrate sends DISK_FD before them.
   */
  private async adoptDisk(fd: number): Promise<void> {
    const disk = this.slot.memoryDiskHandle;
    const old = this.worker;
    // Neither an upgrade nor a disconnect may come between the steps below: an upgrade would
    // replace the worker (and its source) under the adoption; after a disconnect no session
    // would ever revert it. Checked after every wait.
    const interrupted = () => (this.closed ? 'the front-end disconnected meanwhile' : this.slot.upgradeRunning ? 'a plugin-upgrade is running on this device (retry once it answered)' : null);
    try {
      if (disk === null) throw new Error('this device has no writable memory disk');
      checkHandedDisk(fd, disk.size);
      if (this.rings.anySet || this.logArea !== null || this.inflightArea !== null) {
        throw new Error('a ring fd, dirty log or inflight area was given already: a disk is handed over before them (reset the device first)');
      }
      if ((await old.ringSnapshot()).some((r) => r.started || r.num > 0)) throw new Error('a ring was set up already: a disk is handed over before the rings');
      const why = interrupted();
      if (why !== null) throw new Error(why);
      this.slot.adoptMemoryDisk(fd);
    } catch (e) {
      this.closeFds([fd]);
      throw e;
    }
    let fresh: DeviceWorker;
    try {
      fresh = await this.slot.startWorker(this.slot.source);
    } catch (e) {
      await this.slot.revertAdoptedDisk(false);
      throw new Error(`a worker on the handed-over disk did not start: ${errorText(e)}`);
    }
    try {
      if (this.featuresSet) {
        await fresh.setFeatures(this.ackedFeatures, this.hasFeature(VirtioFeature.PROTOCOL_FEATURES));
        await fresh.setLogAll(this.hasFeature(VirtioFeature.LOG_ALL));
      }
      if (this.memory.current.length > 0) await fresh.setMemTable(this.memory.current, true);
      const why = interrupted();
      if (why !== null) throw new Error(why);
    } catch (e) {
      await fresh.terminate();
      await this.slot.revertAdoptedDisk(false);
      throw new Error(`the worker on the handed-over disk was not taken: ${errorText(e)}`);
    }
    this.slot.replaceWorker(fresh, this.slot.source);
    this.worker = fresh;
    fresh.onEvent = (e) => this.onDeviceEvent(e);
    old.onEvent = () => {};
    // No ring, log or inflight fd of ours is its: ending it closes nothing of the session's.
    await old.terminate();
    const t0 = performance.now();
    await this.warmAdopted(fresh);
    this.log.debug(`adopted disk: the fresh worker warmed up in ${(performance.now() - t0).toFixed(1)} ms`);
    this.log.info(`memory disk handed over: adopted a ${disk!.size}-byte memfd; served once its DISK_FINAL state applies`);
  }

  /**
   * A fresh worker's first state LOAD took ~40 ms measured (its code cold), inside the stopped
   * rings; it is run once here instead, while the source still serves: the fresh device's own
   * (initial) state saved and loaded back into it, which changes nothing. Then, with the
   * features set, its ring machinery on scratch rings (warmForIncoming).
   */
  private async warmAdopted(w: DeviceWorker): Promise<void> {
    const s = new DeviceStateSection(w);
    try {
      const n = await s.size();
      const bytes = n > 0 ? await s.read(0, n) : new Uint8Array(0);
      await s.beginLoad(n);
      if (n > 0) await s.write(0, bytes);
      const err = await s.finish();
      if (err !== null) throw new Error(err);
    } catch (e) {
      await s.abort().catch(() => {});
      this.log.warn(`adopted disk: the fresh worker's state warm-up failed (${errorText(e)}); its first LOAD runs cold`);
    }
    await this.warmForIncoming();
  }

  // --- live host handover (live-handover.ts, handover-record.ts) -------------------------------

  /**
   * Old host: stops this session at a message boundary (a message begun is read whole and
   * answered; none is started), pauses and stops its rings (what was popped completes here),
   * saves the device's state, and describes it all for a new host process. Throws
   * LiveHandoverBusy (a passing condition: the handover is refused, retry) or
   * LiveHandoverRefused (this session cannot move live); either way the session runs on.
   */
  async captureForHandover(): Promise<LiveCapture> {
    if (this.closed) throw new LiveHandoverBusy('the front-end is disconnecting');
    // Bounded: a front-end that stops in the middle of a message (or does not read our replies)
    // never lets the channel reach a boundary, and an unbounded wait would hold the handover,
    // and every later upgrade of this host, for as long as it likes.
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.channel.hold(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`the front-end is in the middle of a message (or not reading its replies) after ${HOLD_WAIT_MS} ms; the session stops only between messages`)),
            HOLD_WAIT_MS,
          );
        }),
      ]);
    } catch (e) {
      this.channel.release();
      throw new LiveHandoverBusy(errorText(e));
    } finally {
      clearTimeout(timer);
    }
    try {
      return await this.inTurn(() => this.capture());
    } catch (e) {
      this.channel.release();
      throw e;
    }
  }

  /**
   * Stage one, in turn: the session's settings and fds as the front-end gave them (they hold
   * still: no message is read). The rings keep running until stop().
   */
  private async capture(): Promise<LiveCapture> {
    if (this.closed) throw new LiveHandoverBusy('the front-end disconnected');
    if (this.state.current !== null) throw new LiveHandoverBusy('a device state transfer (migration) is in progress or not yet collected (CHECK_DEVICE_STATE)');
    if (this.needsReset !== null) throw new LiveHandoverRefused(`the device needs a reset (${this.needsReset})`);
    if (this.worker.dead) throw new LiveHandoverRefused(`the device's worker is gone (${this.worker.dead})`);
    const worker = this.worker;
    const [before, identity] = await Promise.all([worker.ringSnapshot(), stateIdentity(worker)]);
    const fds: number[] = [];
    const ref = (fd: number): FdRef => fds.push(fd) - 1;
    const info = worker.info;
    const record: LiveSessionRecord = {
      version: LIVE_RECORD_VERSION,
      device: { deviceId: info.deviceId, numQueues: info.numQueues, name: identity.name, version: identity.version },
      features: this.featuresSet ? this.ackedFeatures.toString(16) : null,
      protocolFeatures: this.protocolFeatures.toString(16),
      status: this.status,
      frontEnd: ref(this.channel.fd),
      backendChannel: this.backend.fd === null ? null : ref(this.backend.fd),
      memory: this.memory.current.map((r) => ({ guestPhysAddr: r.guestPhysAddr, size: r.size, userspaceAddr: r.userspaceAddr, mmapOffset: r.mmapOffset, fd: ref(r.fd) })),
      logArea: this.logArea === null ? null : { fd: ref(this.logArea.fd), size: this.logArea.size, offset: this.logArea.offset },
      logFd: this.memory.logEventFd === null ? null : ref(this.memory.logEventFd),
      inflightArea: this.inflightArea === null ? null : { ...this.inflightArea, fd: ref(this.inflightArea.fd) },
      rings: before.map((r) => ({
        num: r.num,
        addr: r.addr,
        base: r.base,
        kick: r.kickFd === -1 ? null : r.kickFd === null ? 'inband' : ref(r.kickFd),
        call: r.callFd === null ? null : ref(r.callFd),
        err: r.errFd === null ? null : ref(r.errFd),
        enabled: r.enabled,
        started: r.started,
      })),
    };
    let stopped: Awaited<ReturnType<typeof stopForHandover>> | null = null;
    let stateFd: number | null = null;
    // The worker's duplicates of the lock-holding fds (carryLocks): ours until resume or letGo.
    let lockFds: number[] = [];
    const closeLockFds = () => {
      this.closeFds(lockFds);
      lockFds = [];
    };
    const capture: LiveCapture = {
      record,
      fds,
      stoppedAt: null,
      stop: async () => {
        const t0 = performance.now();
        capture.stoppedAt = t0;
        // A guest over the carried-locks bounds is refused before its rings stop.
        const stop = await stopForHandover(worker, this.log, () => checkLockBounds(worker));
        const tStopped = performance.now();
        let state: { fd: number; bytes: number } | null = null;
        let carried: Awaited<ReturnType<typeof carryLocks>> = null;
        try {
          state = await saveStateToMemfd(worker, identity, this.log);
          // A virtio-fs guest's locks: their descriptions go beside the state (the share keeps its fds).
          carried = await carryLocks(worker, (fds) => this.closeFds(fds));
          // The back-end request channel moves too: nothing may be half sent on it, nor a reply awaited.
          await this.backend.hold(1000);
        } catch (e) {
          if (state) this.closeFds([state.fd]);
          if (carried) this.closeFds(carried.fds);
          this.backend.release();
          await stop.resume();
          throw e;
        }
        stopped = stop;
        stateFd = state.fd;
        lockFds = carried?.fds ?? [];
        this.log.info(
          `session stopped for a host handover: rings ${stop.paused.join(', ') || '(none running)'} stopped, ${state.bytes} state bytes saved ` +
            `(${(performance.now() - t0).toFixed(1)} ms: rings ${(tStopped - t0).toFixed(1)}, state ${(performance.now() - tStopped).toFixed(1)})`,
        );
        const locks = carried === null ? {} : { locks: carried.locks };
        return { stop: { bases: before.map((_, i) => stop.bases.get(i) ?? null), stateBytes: state.bytes, ...locks }, stateFd: state.fd, lockFds: carried?.fds ?? [] };
      },
      resume: async () => {
        this.closeFds([stateFd]);
        stateFd = null;
        closeLockFds();
        this.backend.release();
        await stopped?.resume();
        stopped = null;
        this.channel.release();
        this.log.info('host handover undone: the session runs on in this host');
      },
      letGo: () => {
        // Our copies go; the connection, its fds and the front-end's memory are the new host's.
        // Nothing is said to the front-end. The device worker is reset and unmaps the memory as
        // after a disconnect: its rings are stopped, and a reset writes nothing the front-end
        // shares (the inflight area is unmapped, not cleared), so the new host is not disturbed.
        this.closed = true;
        this.closeFds([stateFd]);
        stateFd = null;
        closeLockFds();
        this.backend.close();
        this.channel.close('handed over to a new host process');
        this.log.info('session handed over to the new host process');
        void this.release().then(() => this.opts.onClosed?.(null));
      },
    };
    return capture;
  }

  /**
   * New host: carries on a session a previous host process stopped and handed over, applying
   * the record through the same handlers the front-end's messages go through (the session
   * starts with its socket unread: opts.restoring). Everything but starting the rings happens
   * first; then `commit` asks the old host to let go, and only if it did do the rings start
   * here. Takes every fd in `fds`. On a failure before the commit the session closes (its fds
   * are copies: the old host's run on) and the error is thrown.
   */
  restore(rec: LiveSessionRecord, fds: number[], wire: RestoreWire): Promise<void> {
    return this.inTurn(() => this.restoreInTurn(rec, fds, wire));
  }

  private async restoreInTurn(rec: LiveSessionRecord, fds: number[], wire: RestoreWire): Promise<void> {
    const unused = new Set(fds.keys());
    unused.delete(rec.frontEnd); // the channel's already
    const take = (i: FdRef): number => {
      unused.delete(i);
      return fds[i];
    };
    // The record is hostile input: each request it stands for passes the message loop's feature
    // gate too (a log area without LOG_SHMFD negotiated, a back-end channel without BACKEND_REQ),
    // refused before the old host stops its rings. `gate` runs before a request's fds are taken.
    const gate = (code: number): void => {
      const why = this.unnegotiated(code);
      if (why !== null) throw new RequestError(`the session record is refused: ${why} in it`);
    };
    const apply = (r: FrontendRequest) => {
      try {
        gate(r.code);
      } catch (e) {
        this.closeFds(requestFds(r));
        return Promise.reject(e);
      }
      return this.handle({ ...r, flags: 0, needReply: false, fds: [], unknown: false } as DecodedRequest);
    };
    const kicks: (number | null | undefined)[] = [];
    /** The rings' enables go as SET_VRING_ENABLE would (protocol features negotiated), not left to their kicks. */
    let byRequest = true;
    const t0 = performance.now();
    let tState = t0;
    let tCommit = t0;
    try {
      const info = this.worker.info;
      if (rec.device.deviceId !== info.deviceId || rec.device.numQueues !== info.numQueues || rec.rings.length !== info.numQueues) {
        throw new RequestError(
          `the session is for virtio device ${rec.device.deviceId} with ${rec.device.numQueues} queue(s) and ${rec.rings.length} ring(s); this host's device is ${info.deviceId} with ${info.numQueues}`,
        );
      }
      if (!native.fstat(this.channel.fd).isSocket) throw new RequestError('the front-end connection handed over is not a socket');
      // Kick fds are set only after the old host let go (the rings start with them): one that is
      // not an eventfd must be refused now, while the old host can still serve on, not break
      // the device after the point of no return.
      for (const [index, r] of rec.rings.entries()) {
        if (typeof r.kick !== 'number') continue;
        const kind = native.fdKind(fds[r.kick]);
        if (kind !== 'eventfd') throw new RequestError(`ring ${index}: the kick fd handed over is a ${kind}, not an eventfd (the old host's record is wrong)`);
      }
      await apply({ code: Req.SET_PROTOCOL_FEATURES, features: BigInt(`0x${rec.protocolFeatures}`) });
      if (rec.features !== null) {
        const acked = BigInt(`0x${rec.features}`);
        const lost = acked & ~this.offeredFeatures;
        if (lost !== 0n) throw new RequestError(`this host's device does not offer feature bits 0x${lost.toString(16)} the front-end acked`);
        await apply({ code: Req.SET_FEATURES, features: acked });
      }
      // A ring the record says is enabled is enabled here by SET_VRING_ENABLE's effect, so it
      // passes that request's gate too; without PROTOCOL_FEATURES only a started ring is enabled
      // (by its kick, as the old host's runner did), and the enable below is left to the kick.
      const enableRefused = this.enableRefusal();
      byRequest = enableRefused === null;
      if (!byRequest) {
        const bad = rec.rings.flatMap((r, i) => (r.enabled && !r.started ? [i] : []));
        if (bad.length > 0) throw new RequestError(`the session record is refused: ring(s) ${bad.join(', ')} enabled without running: ${enableRefused} in it`);
      }
      if (rec.memory.length > 0) {
        const regions = rec.memory.map((m) => ({
          guestPhysAddr: BigInt(m.guestPhysAddr),
          memorySize: BigInt(m.size),
          userspaceAddr: BigInt(m.userspaceAddr),
          mmapOffset: BigInt(m.mmapOffset),
          fd: take(m.fd),
        }));
        await apply({ code: Req.SET_MEM_TABLE, regions });
      }
      if (rec.logArea !== null) gate(Req.SET_LOG_BASE);
      if (rec.logArea !== null && !(await this.applyLogBase(BigInt(rec.logArea.size), BigInt(rec.logArea.offset), take(rec.logArea.fd)))) {
        throw new RequestError('the dirty log area was refused (see the line before)');
      }
      if (rec.logFd !== null) await apply({ code: Req.SET_LOG_FD, fd: take(rec.logFd) });
      if (rec.backendChannel !== null) await apply({ code: Req.SET_BACKEND_REQ_FD, fd: take(rec.backendChannel) });
      for (const [index, r] of rec.rings.entries()) {
        if (r.num > 0) await apply({ code: Req.SET_VRING_NUM, state: { index, num: r.num } });
        if (r.addr !== null) {
          const a = r.addr;
          await apply({
            code: Req.SET_VRING_ADDR,
            addr: {
              index,
              flags: a.log ? VHOST_VRING_F_LOG : 0,
              descUserAddr: BigInt(a.descUserAddr),
              availUserAddr: BigInt(a.availUserAddr),
              usedUserAddr: BigInt(a.usedUserAddr),
              logGuestAddr: BigInt(a.logGuestAddr),
            },
          });
        }
        if (r.base !== null && !r.started) await apply({ code: Req.SET_VRING_BASE, state: { index, num: r.base } });
        if (r.call !== null) await apply({ code: Req.SET_VRING_CALL, index, fd: take(r.call) });
        if (r.err !== null) await apply({ code: Req.SET_VRING_ERR, index, fd: take(r.err) });
      }
      // The inflight area is mapped and checked now (its regions are consistent at every instant
      // by design: the old host's updates are ordered for a crash at any point); the rings read
      // it when they start, after the stop.
      if (rec.inflightArea !== null) {
        const a = rec.inflightArea;
        await apply({
          code: Req.SET_INFLIGHT_FD,
          inflight: { mmapSize: BigInt(a.size), mmapOffset: BigInt(a.offset), numQueues: a.numQueues, queueSize: a.queueSize },
          fd: take(a.fd),
        });
      }
      const identity = await stateIdentity(this.worker);
      // Everything else is in place: only now does the old host stop its rings (the pause starts).
      tState = performance.now();
      const { stop, stateFd, lockFds = [] } = await wire.stop();
      try {
        for (const [index, base] of stop.bases.entries()) {
          if (base === null && rec.rings[index].started) throw new RequestError(`ring ${index} ran in the old host, which did not say where it stopped`);
        }
        // Sent together: calls to a worker thread run in the order sent.
        await Promise.all(stop.bases.flatMap((base, index) => (base === null ? [] : [apply({ code: Req.SET_VRING_BASE, state: { index, num: base } })])));
      } catch (e) {
        this.closeFds([stateFd, ...lockFds]);
        throw e;
      }
      try {
        await loadStateFromMemfd(this.worker, identity, stateFd, stop.stateBytes, this.log);
      } catch (e) {
        this.closeFds(lockFds);
        throw e;
      }
      // After the finish-load (the share reopened the files), before the old host lets go.
      if (stop.locks) await takeLocks(this.worker, stop.locks, lockFds, (f) => this.closeFds(f));
      else this.closeFds(lockFds);
      this.status = rec.status;
      for (const r of rec.rings) kicks.push(r.kick === null ? undefined : r.kick === 'inband' ? null : take(r.kick));
      tCommit = performance.now();
      if (!(await wire.commit())) throw new RequestError('the old host did not let go of the session (it went away or refused)');
    } catch (e) {
      this.closeFds([...unused].map((i) => fds[i]));
      this.closeFds(kicks.filter((k) => k !== undefined));
      throw e;
    }
    // The old host has let go: from here nothing is undone. A ring that will not start breaks
    // the device (the front-end resets it), as a bad SET_VRING_KICK would.
    const started: number[] = [];
    // Each ring's calls are sent together (they go to its worker thread, which runs them in the
    // order sent), and the rings at once: enable, the kick fd (the ring starts), and one look (a
    // request made available while the rings were stopped may have come without a kick).
    await Promise.all(
      rec.rings.map(async (r, index) => {
        const k = kicks[index];
        try {
          await Promise.all([
            r.enabled && byRequest ? this.worker.ringEnable(index, true) : null,
            k !== undefined ? this.setRingFd('kick', index, k) : null,
            r.started && r.enabled ? this.worker.ringInbandKick(index) : null,
          ]);
          if (r.started && r.enabled) started.push(index);
        } catch (e) {
          const why = `ring ${index} did not start after the host handover: ${errorText(e)}`;
          this.needsReset ??= why;
          this.log.error(`device needs a reset (DEVICE_NEEDS_RESET set): ${why}`);
        }
      }),
    );
    started.sort((a, b) => a - b);
    this.channel.release();
    const t1 = performance.now();
    this.log.info(
      `session taken over from the previous host process: rings ${started.join(', ') || '(none running)'} run here, the front-end's connection carries on ` +
        `(settings ${(tState - t0).toFixed(1)} ms while the old host ran; then stop, bases and state ${(tCommit - tState).toFixed(1)} ms, ready/go and ring start ${(t1 - tCommit).toFixed(1)} ms)`,
    );
  }

  // --- message loop --------------------------------------------------------------------------

  private async onMessage(m: RawMessage): Promise<void> {
    let req;
    try {
      req = decodeRequest(m.header, m.payload, m.fds);
    } catch (e) {
      this.closeFds(m.fds);
      const why = errorText(e);
      if (e instanceof ProtocolError && !hasReply(m.header.request) && this.wantsAck(m.header.needReply)) {
        this.log.error(`rejected a malformed message: ${why}`);
        await this.ack(m.header.request, false);
        return;
      }
      // Without a way to report failure the connection's state is now unknown: end it.
      throw new Error(`malformed message: ${why}`);
    }
    if (req.unknown && isRfcStateReqCode(req.code) && this.hasProtocol(RFC_STATE_SHM_PROTOCOL_FEATURE)) {
      let rfc;
      try {
        rfc = decodeRfcStateRequest(m.header, m.payload, m.fds);
      } catch (e) {
        this.closeFds(m.fds);
        // Every extension request has a reply: without one the front-end would wait forever.
        throw new Error(`malformed message: ${errorText(e)}`);
      }
      if (this.log.enabled('debug')) this.log.debug(`<- ${requestName(rfc.code)}${describeRequest(rfc)}`);
      return this.rfcState.handle(rfc);
    }
    if (req.unknown) {
      this.closeFds(req.fds);
      const ack = this.wantsAck(req.needReply);
      this.log.warn(`${requestName(req.code)} is not a request this back-end knows; ignored${ack ? ' (failure reply sent)' : ''}`);
      if (ack) await this.ack(req.code, false);
      return;
    }
    const code = req.code;
    const why = this.unnegotiated(code);
    if (why !== null) {
      this.closeFds(req.fds);
      if (hasReply(code)) return this.refuseWithReply(req, why);
      this.log.error(`${why}; refused`);
      if (this.wantsAck(req.needReply)) await this.ack(code, false);
      return;
    }
    if (this.log.enabled('debug')) this.log.debug(`<- ${requestName(code)}${describeRequest(req)}`);
    try {
      await this.handle(req);
      if (!hasReply(code) && this.wantsAck(req.needReply)) await this.ack(code, true);
    } catch (e) {
      const why = `${requestName(code)} failed: ${errorText(e)}`;
      if (hasReply(code)) return this.refuseWithReply(req, why);
      this.log.error(why);
      if (this.wantsAck(req.needReply)) await this.ack(code, false);
    }
  }

  /**
   * Why `code` may not be handled on this connection: the protocol feature it belongs to was not
   * negotiated (null: it may). The message loop and a restored session's record (restoreInTurn)
   * both ask this.
   */
  private unnegotiated(code: number): string | null {
    const gate = requiredFeature(code);
    if (gate === undefined || this.hasProtocol(gate)) return null;
    return `${requestName(code)} needs protocol feature ${protocolFeatureName(gate)} (bit ${gate}), which was not negotiated`;
  }

  /**
   * Why SET_VRING_ENABLE may not be handled on this connection (null: it may): with features
   * acked but not VHOST_USER_F_PROTOCOL_FEATURES, a ring is enabled only by starting (its kick
   * fd). The message loop and a restored session's record both ask this.
   */
  private enableRefusal(): string | null {
    return this.featuresSet && !this.hasFeature(VirtioFeature.PROTOCOL_FEATURES) ? 'SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated' : null;
  }

  private async handle(req: DecodedRequest): Promise<void> {
    switch (req.code) {
      case Req.GET_FEATURES:
        if (this.log.enabled('debug')) this.log.debug(`-> features 0x${this.offeredFeatures.toString(16)}`);
        return this.reply(encodeU64Reply(req.code, this.offeredFeatures));
      case Req.SET_FEATURES:
        return this.setFeatures(req.features);
      case Req.SET_OWNER:
        // Nothing to record: one connection is one owner, and nothing here depends on it.
        return;
      case Req.RESET_OWNER:
        // Deprecated and ambiguous in the spec; treated as RESET_DEVICE.
        return this.resetDevice();
      case Req.GET_PROTOCOL_FEATURES:
        return this.reply(encodeU64Reply(req.code, this.offeredProtocolFeatures));
      case Req.SET_PROTOCOL_FEATURES: {
        const extra = req.features & ~this.offeredProtocolFeatures;
        if (extra !== 0n) throw new RequestError(`front-end set protocol features 0x${extra.toString(16)} that were not offered`);
        this.protocolFeatures = req.features;
        return;
      }
      case Req.GET_QUEUE_NUM:
        return this.reply(encodeU64Reply(req.code, this.worker.info.numQueues));
      case Req.SET_MEM_TABLE:
        return this.memory.set(this.worker, req.regions);
      case Req.GET_MAX_MEM_SLOTS:
        return this.reply(encodeMemSlotsReply(MAX_MEM_SLOTS));
      case Req.ADD_MEM_REG:
        return this.memory.add(this.worker, req.region);
      case Req.REM_MEM_REG:
        this.closeFds(req.fds); // the spec allows a stray fd here; it is never used
        return this.memory.remove(this.worker, req.region);
      case Req.SET_VRING_NUM:
        this.rings.check(req.state.index);
        return this.worker.ringNum(req.state.index, req.state.num);
      case Req.SET_VRING_ADDR: {
        const a = req.addr;
        this.rings.check(a.index);
        return this.worker.ringAddr(a.index, {
          descUserAddr: toNumber(a.descUserAddr, 'descriptor table address'),
          availUserAddr: toNumber(a.availUserAddr, 'avail ring address'),
          usedUserAddr: toNumber(a.usedUserAddr, 'used ring address'),
          log: (a.flags & VHOST_VRING_F_LOG) !== 0,
          logGuestAddr: toNumber(a.logGuestAddr, 'log guest address'),
        });
      }
      case Req.SET_VRING_BASE:
        this.rings.check(req.state.index);
        return this.worker.ringBase(req.state.index, req.state.num);
      case Req.GET_VRING_BASE: {
        const index = req.state.index;
        this.rings.check(index);
        const base = await this.worker.ringStop(index);
        // The kick fd is spent: a restart comes with a new SET_VRING_KICK.
        this.rings.replace(index, 'kick', null);
        this.kickedRings.delete(index);
        // Every ring stopped in order: a front-end that stops the device after a hand-over is
        // one whose migration completed (a failed one closes the connection and resumes the source).
        if (this.kickedRings.size === 0) this.adoptionUnconfirmed = false;
        return this.reply(encodeVringStateReply({ index, num: base }));
      }
      case Req.SET_VRING_KICK:
        if (this.state.running) {
          this.closeFds([req.fd]);
          throw new RequestError(`ring ${req.index} cannot start while a device state transfer runs (answer CHECK_DEVICE_STATE first)`);
        }
        if (this.slot.memoryDiskGivenAway) {
          this.closeFds([req.fd]);
          throw new RequestError(`ring ${req.index} cannot start: ${this.slot.memoryDiskUnusable ?? 'the memory disk was handed over to another host'}`);
        }
        if (this.slot.memoryDiskUnusable !== null) {
          // Never a half-loaded disk served as if good (precopy.ts, DiskCondition).
          this.closeFds([req.fd]);
          throw new RequestError(`ring ${req.index} cannot start: the memory disk is not served: ${this.slot.memoryDiskUnusable}; LOAD a state that checks out, or restart the host on a fresh disk`);
        }
        await this.setRingFd('kick', req.index, req.fd);
        // Only once the ring runs (a kick refused changes nothing): a source that saved a
        // DISK_FINAL state serves on (the migration did not happen); a destination that loaded
        // one serves the adopted disk from now on, and until this connection has stopped its
        // rings in order (GET_VRING_BASE) the start may still fail and the source resume
        // (release()).
        this.state.ringStarting();
        if (this.slot.adoptingDisk) {
          this.slot.commitAdoptedDisk((m) => this.log.warn(m));
          this.adoptionUnconfirmed = true;
        }
        this.kickedRings.add(req.index);
        return;
      case Req.SET_VRING_CALL:
        return this.setRingFd('call', req.index, req.fd);
      case Req.SET_VRING_ERR:
        return this.setRingFd('err', req.index, req.fd);
      case Req.SET_VRING_ENABLE: {
        const { index, num } = req.state;
        this.rings.check(index);
        const refused = this.enableRefusal();
        if (refused !== null) throw new RequestError(refused);
        if (num > 1) throw new RequestError(`SET_VRING_ENABLE value ${num} is neither 0 nor 1`);
        if (num === 1 && this.state.running) {
          throw new RequestError(`ring ${index} cannot be enabled while a device state transfer runs (answer CHECK_DEVICE_STATE first)`);
        }
        return this.worker.ringEnable(index, num === 1);
      }
      case Req.VRING_KICK:
        this.rings.check(req.state.index);
        return this.worker.ringInbandKick(req.state.index);
      case Req.GET_CONFIG: {
        const { offset, data } = req.config;
        const size = this.worker.info.configSize;
        try {
          // Front-ends read the whole struct they know (QEMU 7.2's vhost-user-blk asks for 57
          // bytes whatever the device has): bytes past the device's config space read as zero,
          // as they do on a virtio-pci transport.
          const inside = Math.max(0, Math.min(data.length, size - offset));
          const bytes = new Uint8Array(data.length);
          if (inside > 0) bytes.set(await this.worker.readConfig(offset, inside));
          if (inside < data.length) this.log.debug(`GET_CONFIG [${offset}, +${data.length}) extends past the ${size}-byte config space; padded with zeros`);
          return this.reply(encodeConfigReply({ offset, flags: req.config.flags, data: bytes }));
        } catch (e) {
          // An empty payload is the spec's failure answer for GET_CONFIG.
          this.log.error(`GET_CONFIG [${offset}, +${data.length}) failed: ${errorText(e)}`);
          return this.reply(encodeConfigReply(null));
        }
      }
      case Req.SET_CONFIG:
        return this.worker.writeConfig(req.config.offset, req.config.data);
      case Req.SET_BACKEND_REQ_FD:
        return this.backend.set(req.fd);
      case Req.RESET_DEVICE:
        return this.resetDevice();
      case Req.SET_STATUS: {
        const s = Number(req.status & 0xffn);
        if (req.status > 0xffn) throw new RequestError(`status 0x${req.status.toString(16)} does not fit the 8-bit device status`);
        this.status = s;
        // Status 0 is a virtio reset, but QEMU 7.2 sends it while stopping a device BEFORE
        // GET_VRING_BASE (and QEMU 8.2+ may stop, then save the device state): wiping the rings
        // or the device here would answer GET_VRING_BASE with 0 (the destination then refuses
        // the migration: "VQ 0 size 0x80 < last_avail_idx 0x0 - used_idx 0x21") and lose the
        // state a SAVE is about to read. Rings restart from SET_VRING_BASE anyway, and
        // RESET_DEVICE resets. Only a device that needs a reset gets one here.
        if (s === 0 && (this.needsReset !== null || this.worker.dead)) await this.resetDevice();
        return;
      }
      case Req.GET_STATUS:
        return this.reply(encodeU64Reply(req.code, this.status | (this.needsReset ? STATUS_NEEDS_RESET : 0)));
      case Req.SET_LOG_BASE: {
        const ok = await this.applyLogBase(req.log.mmapSize, req.log.mmapOffset, req.fd);
        // The spec's reply for the LOG_SHMFD form is a u64 (QEMU only checks it arrived).
        return this.reply(encodeU64Reply(Req.SET_LOG_BASE, ok ? 0 : 1));
      }
      case Req.SET_LOG_FD:
        return this.memory.setLogFd(req.fd);
      case Req.GET_INFLIGHT_FD: {
        if (!this.hasProtocol(ProtocolFeature.INFLIGHT_SHMFD)) throw new RequestError('GET_INFLIGHT_FD needs INFLIGHT_SHMFD, which was not negotiated');
        const { reply, fd } = createInflightArea(req.inflight, this.worker.info.numQueues, this.worker.info.maxQueueSize, this.log, this.hasFeature(VirtioFeature.RING_PACKED));
        try {
          return await this.reply(reply, [fd]);
        } finally {
          this.closeFds([fd]); // the front-end has its own copy now
        }
      }
      case Req.SET_INFLIGHT_FD:
        if (!this.hasProtocol(ProtocolFeature.INFLIGHT_SHMFD)) {
          this.closeFds([req.fd]);
          throw new RequestError('SET_INFLIGHT_FD needs INFLIGHT_SHMFD, which was not negotiated');
        }
        {
          // Refused or not, it replaces the earlier area (the runner drops that one either way).
          const copy = this.dupOrClose(req.fd);
          this.setInflightCopy(null);
          try {
            await setInflightArea(this.worker, req.inflight, req.fd, this.worker.info.numQueues, this.log, this.hasFeature(VirtioFeature.RING_PACKED));
          } catch (e) {
            this.closeFds([copy]);
            throw e;
          }
          const d = req.inflight;
          this.setInflightCopy({ fd: copy, size: Number(d.mmapSize), offset: Number(d.mmapOffset), numQueues: d.numQueues, queueSize: d.queueSize });
          return;
        }
      case Req.SET_DEVICE_STATE_FD:
        return this.state.setFd(req.params.direction, req.params.phase, req.fd);
      case Req.CHECK_DEVICE_STATE:
        return this.state.check();
      default:
        this.closeFds(req.fds);
        throw new RequestError(`${requestName(req.code)} is not supported by this back-end (the protocol feature it belongs to is not offered)`);
    }
  }

  /** SET_LOG_BASE without its reply (a restored session applies it too): whether the worker mapped the area. */
  private async applyLogBase(size: bigint, offset: bigint, fd: number): Promise<boolean> {
    const copy = this.dupOrClose(fd);
    const ok = await this.memory.setLogBase(this.worker, size, offset, fd);
    if (ok) this.setLogArea({ fd: copy, size: Number(size), offset: Number(offset) });
    else this.closeFds([copy]);
    return ok;
  }

  private setRingFd(kind: RingFdKind, index: number, fd: number | null): Promise<void> {
    return this.rings.set(this.worker, kind, index, fd, this.hasProtocol(ProtocolFeature.INBAND_NOTIFICATIONS));
  }

  // --- feature negotiation -------------------------------------------------------------------

  private async setFeatures(features: bigint): Promise<void> {
    const offered = this.offeredFeatures;
    const extra = features & ~offered;
    let acked = features;
    if (extra !== 0n) {
      // QEMU 7.2's vhost-user-rng passes the guest's features through unmasked; refusing would
      // leave it with a half-configured device, so the stray bits are dropped, loudly.
      this.log.warn(`front-end acked features the back-end never offered (${describeBits(extra)}); ignoring them`);
      acked = features & offered;
    }
    if ((acked & bit(VirtioFeature.VERSION_1)) === 0n) {
      throw new RequestError('VIRTIO_F_VERSION_1 was not acked: this back-end only implements virtio 1.x (little-endian) rings');
    }
    const logAll = bit(VirtioFeature.LOG_ALL);
    const onlyLogChanged = this.featuresSet && ((this.ackedFeatures ^ acked) & ~logAll) === 0n;
    const wasLogging = (this.ackedFeatures & logAll) !== 0n;
    const logging = (acked & logAll) !== 0n;
    this.ackedFeatures = acked;
    this.featuresSet = true;
    // QEMU switches dirty logging on and off with SET_FEATURES on a running device: that must
    // not re-activate the device, only start or stop marking pages.
    if (!onlyLogChanged) await this.worker.setFeatures(acked, (acked & bit(VirtioFeature.PROTOCOL_FEATURES)) !== 0n);
    if (!onlyLogChanged || wasLogging !== logging) {
      await this.worker.setLogAll(logging);
      if (wasLogging !== logging) this.log.info(`dirty logging ${logging ? 'on' : 'off'} (VHOST_F_LOG_ALL ${logging ? 'set' : 'cleared'})`);
    }
  }

  // --- device lifecycle ----------------------------------------------------------------------

  private async resetDevice(): Promise<void> {
    this.slot.meter.reset();
    this.state.abort('the device was reset');
    await this.state.settle();
    if (this.worker.dead) {
      // The old instance was killed (watchdog, crash): a reset brings a fresh one, with the
      // memory table the front-end already sent (its fds are still ours).
      if (await this.worker.exitedWithin()) this.rings.closeAll();
      else this.rings.abandon();
      this.worker = await this.slot.acquire();
      this.worker.onEvent = (e) => this.onDeviceEvent(e);
      await this.worker.setMemTable(this.memory.current);
      this.log.info('device restarted with a fresh instance after reset');
    } else {
      await this.worker.reset();
      this.rings.closeAll();
    }
    // The worker dropped its log and inflight areas.
    this.setLogArea(null);
    this.setInflightCopy(null);
    this.ackedFeatures = 0n;
    this.featuresSet = false;
    this.needsReset = null;
    this.status = 0;
  }

  private onDeviceEvent(e: DeviceEvent): void {
    if (e.type !== 'inband-call') this.slot.meter.fault(e.type);
    const replyAck = this.hasProtocol(ProtocolFeature.REPLY_ACK);
    if (e.type === 'memory-fault') {
      // The worker halted every ring; the pages it touched are no longer the guest's. Nothing
      // this connection does can be trusted to reach the guest now: end it (release() resets
      // the device and unmaps the table, as for any disconnect).
      this.channel.close(e.reason);
      return;
    }
    if (e.type === 'inband-call') {
      void this.backend.send({ code: BackendReq.VRING_CALL, state: { index: e.index, num: 0 } }, replyAck);
      return;
    }
    const reason = e.type === 'ring-broken' ? `ring ${e.index}: ${e.reason}` : e.reason;
    if (this.needsReset === null) {
      this.needsReset = reason;
      this.log.error(`device needs a reset (DEVICE_NEEDS_RESET set): ${reason}`);
      // Drivers re-read status on a config-change interrupt: that is how they learn of it.
      void this.backend.send({ code: BackendReq.CONFIG_CHANGE_MSG }, replyAck);
    }
  }

  // --- teardown ------------------------------------------------------------------------------

  private onChannelClosed(reason: string | null): void {
    if (this.closed) return;
    this.closed = true;
    if (reason === 'host shutting down') this.log.info('connection closed: host shutting down');
    else if (reason) this.log.error(`connection closed: ${reason}`);
    else this.log.info('front-end disconnected');
    this.backend.close();
    this.state.abort('the front-end disconnected');
    // After an upgrade in progress: it completes or is undone first, then its outcome is released.
    void (this.upgrading ?? Promise.resolve()).then(() => this.release()).then(() => this.opts.onClosed?.(reason));
  }

  /** Stops the device's use of every borrowed fd, then closes them all. */
  private async release(): Promise<void> {
    await this.state.settle();
    this.memory.closeLogFd();
    if (this.worker.dead) {
      // A killed worker's fd watchers close as its thread exits; closing the fds first could
      // pull them out from under libuv.
      if (!(await this.worker.exitedWithin())) this.rings.abandon();
    } else {
      try {
        await this.worker.reset();
        await this.worker.setMemTable([]);
      } catch (e) {
        this.log.warn(`device reset after disconnect failed: ${errorText(e)}`);
        // Killed during the reset: its watchers go with its thread, then the fds can close.
        if (this.worker.dead) await this.worker.exited;
      }
    }
    this.rings.closeAll();
    this.memory.closeRegions();
    this.setLogArea(null);
    this.setInflightCopy(null);
    // Disk hand-over: a source whose disk went away serves it no more; a destination whose
    // migration did not complete goes back to its own disk.
    if (this.state.diskGivenAway) {
      this.slot.giveAwayMemoryDisk();
      this.log.info('memory disk handed over to another host by a migration: this device serves, saves or loads it no more (device-del, or restart the host)');
    }
    this.endDiskLend?.();
    if (this.adoptionUnconfirmed) {
      this.slot.distrustAdoptedDisk();
      this.log.error(`disk hand-over: the front-end went away with the adopted disk's rings started and never stopped in order; the migration may have failed and its source resumed on the same memfd, so this device serves, saves or loads it no more (${ADOPTION_UNCONFIRMED_ADVICE})`);
    }
    if (this.slot.adoptingDisk) {
      await this.slot.revertAdoptedDisk();
      this.log.info('disk hand-over not completed: the adopted memfd is let go, the device\'s own memory disk is back');
    }
  }
}

/** The fds a request built from a handover record carries (closed when it is refused unapplied). */
function requestFds(r: FrontendRequest): number[] {
  const fds: number[] = [];
  if ('fd' in r && typeof r.fd === 'number') fds.push(r.fd);
  if ('regions' in r) for (const m of r.regions) fds.push(m.fd);
  return fds;
}
