// One vhost-user connection, back-end side: feature negotiation, the memory table, ring
// lifecycle, config space and status, and the back-end request channel. Requests are handled
// strictly one at a time (the channel does not read the next message until the previous
// handler settled), which is what makes "GET_VRING_BASE replies after the ring stopped" hold.
//
// Fd ownership: every fd a front-end sends is owned here. The device worker only borrows
// memory, kick, call and err fds; they are closed here once the worker stopped using them,
// or when the session ends (also when the worker died).

import { native } from '../native/index.ts';
import { MessageChannel } from '../protocol/channel.ts';
import {
  decodeRequest, decodeRfcStateRequest, deviceStateReplyValue, encodeBackendRequest, encodeConfigReply,
  encodeMemSlotsReply, encodeRfcGetStateReply, encodeU64Reply, encodeVringStateReply, type RfcStateRequest,
} from '../protocol/codec.ts';
import {
  BackendReq, DeviceStateDirection, DeviceStatePhase, MAX_MEM_SLOTS, ProtocolFeature, RFC_STATE_SHM_PROTOCOL_FEATURE,
  Req, RfcStateReq, VHOST_VRING_F_LOG, featureBit, hasReply, isRfcStateReqCode, requestName,
} from '../protocol/constants.ts';
import { StateTransfer, WorkerSectionProxy, type TransferContext } from '../migration/transfer.ts';
import { RfcShmLoad, RfcShmSave, RfcShmTransfer, StateArea } from '../migration/rfc-shm.ts';
import type { StateSection } from '../migration/section.ts';
import { ProtocolError } from '../protocol/errors.ts';
import type { DecodedRequest, MemoryRegion, RawMessage } from '../protocol/messages.ts';
import type { DeviceWorker, DeviceEvent } from '../device/worker-client.ts';
import type { DeviceSlot } from '../server/device-slot.ts';
import type { RegionMsg } from '../device/rpc.ts';
import { VirtioFeature, bit, describeBits, DEVICE_FEATURE_MASK } from '../device/features.ts';
import { createLogger, errorText, type Logger } from '../log/logger.ts';

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
].reduce((m, b) => m | featureBit(b), 0n);

/** Transport/ring features the host implements for every device. */
export const HOST_VIRTIO_FEATURES =
  bit(VirtioFeature.VERSION_1) |
  bit(VirtioFeature.RING_INDIRECT_DESC) |
  bit(VirtioFeature.RING_EVENT_IDX) |
  bit(VirtioFeature.RING_PACKED) |
  bit(VirtioFeature.PROTOCOL_FEATURES) |
  bit(VirtioFeature.LOG_ALL);

/** SET_DEVICE_STATE_FD error codes (bits 0-7 of the reply; any non-zero value is an error). */
export const DeviceStateError = {
  /** Direction or phase this back-end does not implement. */
  UNSUPPORTED: 1,
  /** Rings still run, or the device is not in a state to transfer. */
  BUSY: 2,
  /** The fd or the device failed before the transfer could start. */
  FAILED: 3,
} as const;

/** Which protocol feature a request depends on (sent without it = a front-end bug). */
const NEEDS_PROTOCOL_FEATURE: Partial<Record<number, number>> = {
  [Req.GET_QUEUE_NUM]: ProtocolFeature.MQ,
  [Req.SET_BACKEND_REQ_FD]: ProtocolFeature.BACKEND_REQ,
  [Req.GET_CONFIG]: ProtocolFeature.CONFIG,
  [Req.SET_CONFIG]: ProtocolFeature.CONFIG,
  [Req.RESET_DEVICE]: ProtocolFeature.RESET_DEVICE,
  [Req.VRING_KICK]: ProtocolFeature.INBAND_NOTIFICATIONS,
  [Req.GET_MAX_MEM_SLOTS]: ProtocolFeature.CONFIGURE_MEM_SLOTS,
  [Req.ADD_MEM_REG]: ProtocolFeature.CONFIGURE_MEM_SLOTS,
  [Req.REM_MEM_REG]: ProtocolFeature.CONFIGURE_MEM_SLOTS,
  [Req.SET_STATUS]: ProtocolFeature.STATUS,
  [Req.GET_STATUS]: ProtocolFeature.STATUS,
  [Req.SET_LOG_BASE]: ProtocolFeature.LOG_SHMFD,
  [Req.SET_DEVICE_STATE_FD]: ProtocolFeature.DEVICE_STATE,
  [Req.CHECK_DEVICE_STATE]: ProtocolFeature.DEVICE_STATE,
};

const hex = (v: bigint | number) => `0x${v.toString(16)}`;

/** The values of a request, for debug logs (operators and tests read what the front-end sent). */
function describeRequest(req: DecodedRequest): string {
  switch (req.code) {
    case Req.SET_FEATURES:
    case Req.SET_PROTOCOL_FEATURES:
      return ` ${hex(req.features)}`;
    case Req.SET_MEM_TABLE:
      return ' ' + req.regions.map((r) => `[gpa ${hex(r.guestPhysAddr)} size ${hex(r.memorySize)} uva ${hex(r.userspaceAddr)} off ${hex(r.mmapOffset)}]`).join(' ');
    case Req.ADD_MEM_REG:
    case Req.REM_MEM_REG:
      return ` [gpa ${hex(req.region.guestPhysAddr)} size ${hex(req.region.memorySize)} uva ${hex(req.region.userspaceAddr)} off ${hex(req.region.mmapOffset)}]`;
    case Req.SET_VRING_NUM:
    case Req.SET_VRING_BASE:
    case Req.GET_VRING_BASE:
    case Req.SET_VRING_ENABLE:
    case Req.VRING_KICK:
      return ` ring ${req.state.index} num ${req.state.num}`;
    case Req.SET_VRING_ADDR:
      return ` ring ${req.addr.index} desc ${hex(req.addr.descUserAddr)} avail ${hex(req.addr.availUserAddr)} used ${hex(req.addr.usedUserAddr)} flags ${req.addr.flags} log ${hex(req.addr.logGuestAddr)}`;
    case Req.SET_VRING_KICK:
    case Req.SET_VRING_CALL:
    case Req.SET_VRING_ERR:
      return ` ring ${req.index} ${req.fd === null ? 'no fd' : 'fd'}`;
    case Req.GET_CONFIG:
    case Req.SET_CONFIG:
      return ` offset ${req.config.offset} size ${req.config.data.length}`;
    case Req.SET_STATUS:
      return ` ${hex(req.status)}`;
    case Req.SET_DEVICE_STATE_FD:
      return ` direction ${req.params.direction} phase ${req.params.phase}`;
    default:
      return '';
  }
}

/** A request the front-end got wrong; the reply (if any) reports failure. */
class RequestError extends Error {}

interface RingFds {
  kick: number | null;
  call: number | null;
  err: number | null;
}

interface OwnedRegion {
  msg: RegionMsg;
}

export interface SessionOptions {
  label: string;
  /** Called once the connection is gone and everything it held is released. */
  onClosed?: (reason: string | null) => void;
  /**
   * SAVE into a memfd of our own and return it (reply bit 8 clear) instead of writing into the
   * front-end's fd. The reply then waits until the state is complete (a front-end reads a
   * returned fd to EOF at once). Also on with env VHOST_WASM_STATE_RETURN_MEMFD=1.
   */
  stateReturnMemfd?: boolean;
  /** Host-held resources (storage backings) saved and loaded next to the device's own bytes. */
  stateSections?: () => StateSection[];
  /**
   * Experimental: offer the 2023 RFC's shared-memory state protocol (protocol feature bit 63,
   * requests 1000-1002; docs/migration.md). CLI flag: --experimental-rfc-state-shm. Also on with
   * env VHOST_WASM_EXPERIMENTAL_RFC_STATE_SHM=1; off otherwise.
   */
  experimentalRfcStateShm?: boolean;
}

function toNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RequestError(`${what} 0x${v.toString(16)} is beyond 2^53, outside any memory this host can map`);
  return Number(v);
}

function regionMsg(r: MemoryRegion & { fd: number }): RegionMsg {
  return {
    guestPhysAddr: toNumber(r.guestPhysAddr, 'guest physical address'),
    size: toNumber(r.memorySize, 'region size'),
    userspaceAddr: toNumber(r.userspaceAddr, 'userspace address'),
    mmapOffset: toNumber(r.mmapOffset, 'mmap offset'),
    fd: r.fd,
  };
}

export class BackendSession {
  private readonly channel: MessageChannel;
  private readonly log: Logger;
  private ackedFeatures = 0n;
  private featuresSet = false;
  private protocolFeatures = 0n;
  private status = 0;
  private needsReset: string | null = null;
  private regions: OwnedRegion[] = [];
  private ringFds: RingFds[];
  private backendChannel: MessageChannel | null = null;
  private closed = false;
  /**
   * The device-state transfer SET_DEVICE_STATE_FD started, until CHECK_DEVICE_STATE collects it;
   * or the experimental RFC shm transfer RFC_SET_STATE_AREA started, until the area is detached.
   */
  private transfer: StateTransfer | RfcShmTransfer | null = null;
  /** SET_LOG_FD's eventfd (kept, never signalled: QEMU reads the log on its own schedule). */
  private logFd: number | null = null;

  constructor(
    fd: number,
    private worker: DeviceWorker,
    private readonly slot: DeviceSlot,
    private readonly opts: SessionOptions,
  ) {
    this.log = createLogger(`session ${opts.label}`);
    this.ringFds = Array.from({ length: worker.info.numQueues }, () => ({ kick: null, call: null, err: null }));
    worker.onEvent = (e) => this.onDeviceEvent(e);
    this.channel = new MessageChannel(fd, {
      label: `front-end connection (${opts.label})`,
      onMessage: (m) => this.onMessage(m),
      onClose: (reason) => this.onChannelClosed(reason),
    });
  }

  /** CONFIG only for a device that has a config space: QEMU warns about it otherwise. */
  get offeredProtocolFeatures(): bigint {
    const base = this.worker.info.configSize > 0 ? SUPPORTED_PROTOCOL_FEATURES : SUPPORTED_PROTOCOL_FEATURES & ~featureBit(ProtocolFeature.CONFIG);
    return this.rfcStateShmEnabled ? base | featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE) : base;
  }

  private get rfcStateShmEnabled(): boolean {
    return this.opts.experimentalRfcStateShm === true || process.env.VHOST_WASM_EXPERIMENTAL_RFC_STATE_SHM === '1';
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

  // --- dispatch ------------------------------------------------------------------------------

  private async onMessage(m: RawMessage): Promise<void> {
    let req;
    try {
      req = decodeRequest(m.header, m.payload, m.fds);
    } catch (e) {
      this.closeFds(m.fds);
      const why = errorText(e);
      if (e instanceof ProtocolError && m.header.needReply && !hasReply(m.header.request)) {
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
      if (this.log.enabled('debug')) this.log.debug(`<- ${requestName(rfc.code)}${rfc.code === RfcStateReq.SET_STATE_AREA ? ` size ${rfc.size} direction ${rfc.direction}` : ` offset ${rfc.offset} size ${rfc.size}`}`);
      return this.handleRfcState(rfc);
    }
    if (req.unknown) {
      this.closeFds(req.fds);
      this.log.warn(`${requestName(req.code)} is not a request this back-end knows; ignored${req.needReply ? ' (failure reply sent)' : ''}`);
      if (req.needReply) await this.ack(req.code, false);
      return;
    }
    const code = req.code;
    const gate = NEEDS_PROTOCOL_FEATURE[code];
    if (gate !== undefined && !this.hasProtocol(gate)) {
      this.closeFds(req.fds);
      const name = Object.entries(ProtocolFeature).find(([, v]) => v === gate)?.[0];
      const why = `${requestName(code)} needs protocol feature ${name} (bit ${gate}), which was not negotiated`;
      if (hasReply(code)) throw new Error(why);
      this.log.error(`${why}; refused`);
      if (req.needReply) await this.ack(code, false);
      return;
    }
    if (this.log.enabled('debug')) this.log.debug(`<- ${requestName(code)}${describeRequest(req)}`);
    try {
      await this.handle(req);
      if (req.needReply && !hasReply(code)) await this.ack(code, true);
    } catch (e) {
      const why = `${requestName(code)} failed: ${errorText(e)}`;
      if (hasReply(code)) throw new Error(why); // no defined failure reply: drop the connection
      this.log.error(why);
      if (req.needReply) await this.ack(code, false);
    }
  }

  private ack(code: number, ok: boolean): Promise<void> {
    return this.channel.send(encodeU64Reply(code, ok ? 0 : 1));
  }

  private reply(bytes: Uint8Array, fds: number[] = []): Promise<void> {
    return this.channel.send(bytes, fds);
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
        return this.setMemTable(req.regions);
      case Req.GET_MAX_MEM_SLOTS:
        return this.reply(encodeMemSlotsReply(MAX_MEM_SLOTS));
      case Req.ADD_MEM_REG:
        return this.addMemRegion(req.region);
      case Req.REM_MEM_REG:
        this.closeFds(req.fds); // the spec allows a stray fd here; it is never used
        return this.removeMemRegion(req.region);
      case Req.SET_VRING_NUM:
        this.checkRing(req.state.index);
        return this.worker.ringNum(req.state.index, req.state.num);
      case Req.SET_VRING_ADDR: {
        const a = req.addr;
        this.checkRing(a.index);
        return this.worker.ringAddr(a.index, {
          descUserAddr: toNumber(a.descUserAddr, 'descriptor table address'),
          availUserAddr: toNumber(a.availUserAddr, 'avail ring address'),
          usedUserAddr: toNumber(a.usedUserAddr, 'used ring address'),
          log: (a.flags & VHOST_VRING_F_LOG) !== 0,
          logGuestAddr: toNumber(a.logGuestAddr, 'log guest address'),
        });
      }
      case Req.SET_VRING_BASE:
        this.checkRing(req.state.index);
        return this.worker.ringBase(req.state.index, req.state.num);
      case Req.GET_VRING_BASE: {
        const index = req.state.index;
        this.checkRing(index);
        const base = await this.worker.ringStop(index);
        // The kick fd is spent: a restart comes with a new SET_VRING_KICK.
        this.replaceRingFd(index, 'kick', null);
        return this.reply(encodeVringStateReply({ index, num: base }));
      }
      case Req.SET_VRING_KICK:
        if (this.transferRunning()) {
          if (req.fd !== null) this.closeFds([req.fd]);
          throw new RequestError(`ring ${req.index} cannot start while a device state transfer runs (answer CHECK_DEVICE_STATE first)`);
        }
        return this.setRingFd(req.code, req.index, req.fd);
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR:
        return this.setRingFd(req.code, req.index, req.fd);
      case Req.SET_VRING_ENABLE: {
        const { index, num } = req.state;
        this.checkRing(index);
        if (!this.hasFeature(VirtioFeature.PROTOCOL_FEATURES) && this.featuresSet) {
          throw new RequestError('SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated');
        }
        if (num > 1) throw new RequestError(`SET_VRING_ENABLE value ${num} is neither 0 nor 1`);
        if (num === 1 && this.transferRunning()) {
          throw new RequestError(`ring ${index} cannot be enabled while a device state transfer runs (answer CHECK_DEVICE_STATE first)`);
        }
        return this.worker.ringEnable(index, num === 1);
      }
      case Req.VRING_KICK:
        this.checkRing(req.state.index);
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
        return this.setBackendChannel(req.fd);
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
      case Req.SET_LOG_BASE:
        return this.setLogBase(req.log.mmapSize, req.log.mmapOffset, req.fd);
      case Req.SET_LOG_FD:
        if (this.logFd !== null) this.closeFds([this.logFd]);
        this.logFd = req.fd;
        return;
      case Req.SET_DEVICE_STATE_FD:
        return this.setDeviceStateFd(req.params.direction, req.params.phase, req.fd);
      case Req.CHECK_DEVICE_STATE:
        return this.checkDeviceState();
      default:
        this.closeFds(req.fds);
        throw new RequestError(`${requestName(req.code)} is not supported by this back-end (the protocol feature it belongs to is not offered)`);
    }
  }

  private hasFeature(bitNo: number): boolean {
    return (this.ackedFeatures & bit(bitNo)) !== 0n;
  }

  private checkRing(index: number): void {
    if (index >= this.ringFds.length) {
      throw new RequestError(`ring index ${index} is out of range: the device has ${this.ringFds.length} queue(s)`);
    }
  }

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

  // --- dirty log -----------------------------------------------------------------------------

  /** SET_LOG_BASE (LOG_SHMFD form): map the area in the worker, reply u64 0 (1 on failure). */
  private async setLogBase(size: bigint, offset: bigint, fd: number): Promise<void> {
    let ok = false;
    try {
      const sz = toNumber(size, 'log size');
      const off = toNumber(offset, 'log offset');
      if (sz === 0) throw new RequestError('log size is 0');
      await this.worker.setLogBase(fd, sz, off);
      ok = true;
      this.log.info(`dirty log area: ${sz} bytes at offset ${off} (covers ${(sz * 8 * 4096) / 2 ** 20} MiB of guest memory)`);
    } catch (e) {
      this.log.error(`SET_LOG_BASE failed: ${errorText(e)}`);
    } finally {
      // The worker's mapping keeps the area alive; the fd itself is no longer needed.
      this.closeFds([fd]);
    }
    // The spec's reply for the LOG_SHMFD form is a u64 (QEMU only checks it arrived).
    return this.reply(encodeU64Reply(Req.SET_LOG_BASE, ok ? 0 : 1));
  }

  // --- device state ------------------------------------------------------------------------

  private transferRunning(): boolean {
    return this.transfer !== null && !this.transfer.finished;
  }

  private async replyDeviceState(error: number, fd: number | null = null): Promise<void> {
    const value = deviceStateReplyValue(error, fd !== null);
    try {
      await this.reply(encodeU64Reply(Req.SET_DEVICE_STATE_FD, value), fd === null ? [] : [fd]);
    } finally {
      if (fd !== null) this.closeFds([fd]);
    }
  }

  /**
   * SET_DEVICE_STATE_FD: checks, then replies at once and runs the transfer in the background
   * (the front-end keeps talking to us meanwhile); CHECK_DEVICE_STATE collects the outcome.
   */
  private async setDeviceStateFd(direction: number, phase: number, fd: number): Promise<void> {
    const refuse = (code: number, why: string) => {
      this.closeFds([fd]);
      this.log.error(`SET_DEVICE_STATE_FD refused: ${why}`);
      return this.replyDeviceState(code);
    };
    if (direction !== DeviceStateDirection.SAVE && direction !== DeviceStateDirection.LOAD) {
      return refuse(DeviceStateError.UNSUPPORTED, `direction ${direction} is neither SAVE (0) nor LOAD (1)`);
    }
    if (phase !== DeviceStatePhase.STOPPED) {
      return refuse(DeviceStateError.UNSUPPORTED, `phase ${phase} is not STOPPED (0), the only phase this back-end implements`);
    }
    const ctx = await this.beginTransfer('SET_DEVICE_STATE_FD');
    if ('refuse' in ctx) return refuse(ctx.refuse, ctx.why);
    const dir = direction === DeviceStateDirection.SAVE ? 'save' : 'load';
    // The CLI always passes its flag (false when absent): the env variable still switches it on.
    const returnMemfd = this.opts.stateReturnMemfd === true || process.env.VHOST_WASM_STATE_RETURN_MEMFD === '1';
    if (dir === 'save' && returnMemfd) {
      // Our own channel: a memfd filled before the reply, so the front-end can read it to EOF at
      // once; the front-end's fd is not used.
      this.closeFds([fd]);
      let memfd: number;
      let transfer: StateTransfer;
      try {
        memfd = native.memfdCreate('vhost-wasm-device-state', false);
        transfer = StateTransfer.save(native.dup(memfd), ctx);
      } catch (e) {
        return refuse(DeviceStateError.FAILED, errorText(e));
      }
      this.transfer = transfer;
      const err = await transfer.done;
      if (err !== null) {
        this.closeFds([memfd]);
        this.log.error(`device state save failed: ${err}`);
        return this.replyDeviceState(DeviceStateError.FAILED);
      }
      return this.replyDeviceState(0, memfd);
    }
    let transfer: StateTransfer;
    try {
      transfer = dir === 'save' ? StateTransfer.save(fd, ctx) : StateTransfer.load(fd, ctx);
    } catch (e) {
      // save()/load() closed fd.
      this.log.error(`SET_DEVICE_STATE_FD refused: ${errorText(e)}`);
      return this.replyDeviceState(DeviceStateError.FAILED);
    }
    this.transfer = transfer;
    void transfer.done.then((err) => {
      if (err !== null) this.log.error(`device state ${dir} failed: ${err}`);
    });
    this.log.info(`device state ${dir} started (${ctx.identity.name} ${ctx.identity.version})`);
    return this.replyDeviceState(0);
  }

  // --- experimental: the RFC's shared-memory state chunks ---------------------------------

  /** Checks and the transfer context shared by both channels; a string is the refusal. */
  private async beginTransfer(what = 'transfer'): Promise<TransferContext | { refuse: number; why: string }> {
    if (this.transfer !== null) {
      // A front-end that gave up on a transfer without CHECK_DEVICE_STATE starts another one.
      const old = this.transfer;
      this.transfer = null;
      if (!old.finished) {
        this.log.warn(`a new ${what} replaces a ${old.direction} still in progress: aborting it`);
        old.abort(`replaced by a new ${what}`);
      }
      await old.done;
    }
    let begin;
    try {
      begin = await this.worker.stateBegin();
    } catch (e) {
      return { refuse: DeviceStateError.FAILED, why: `the device is not available: ${errorText(e)}` };
    }
    if (begin.started.length > 0) {
      return { refuse: DeviceStateError.BUSY, why: `ring(s) ${begin.started.join(', ')} still run: rings must be stopped with GET_VRING_BASE first` };
    }
    return {
      worker: this.worker,
      identity: { deviceId: this.worker.info.deviceId, name: begin.name, version: begin.version },
      extraSections: [
        ...begin.sections.map((s) => new WorkerSectionProxy(this.worker, s.id, s.name, s.size)),
        ...(this.opts.stateSections?.() ?? []),
      ],
      log: this.log,
    };
  }

  private async handleRfcState(req: RfcStateRequest): Promise<void> {
    const u64 = (v: number) => this.reply(encodeU64Reply(req.code, v));
    if (req.code === RfcStateReq.SET_STATE_AREA) {
      if (req.fd === null) {
        // Detach: ends the transfer; the answer is its outcome (the RFC's final check).
        const t = this.transfer;
        if (!(t instanceof RfcShmTransfer)) {
          this.log.error('RFC_SET_STATE_AREA detach without an attached state area: reporting failure');
          return u64(DeviceStateError.FAILED);
        }
        const err = await t.detach();
        this.transfer = null;
        if (err !== null) this.log.error(`RFC state ${t.direction} failed: ${err}`);
        else this.log.info(`device state ${t.direction === 'save' ? 'saved' : 'loaded'}: ${t.stats.bytes} bytes through the RFC shm area in ${t.stats.ms.toFixed(1)} ms`);
        return u64(err === null ? 0 : DeviceStateError.FAILED);
      }
      const fd = req.fd;
      const refuse = (code: number, why: string) => {
        this.log.error(`RFC_SET_STATE_AREA refused: ${why}`);
        return u64(code);
      };
      if (req.direction !== DeviceStateDirection.SAVE && req.direction !== DeviceStateDirection.LOAD) {
        this.closeFds([fd]);
        return refuse(DeviceStateError.UNSUPPORTED, `direction ${req.direction} is neither SAVE (0) nor LOAD (1)`);
      }
      const ctx = await this.beginTransfer();
      if ('refuse' in ctx) {
        this.closeFds([fd]);
        return refuse(ctx.refuse, ctx.why);
      }
      const save = req.direction === DeviceStateDirection.SAVE;
      let area: StateArea;
      try {
        area = new StateArea(fd, toNumber(req.size, 'state area size'), toNumber(req.mmapOffset, 'state area offset'), save);
      } catch (e) {
        return refuse(DeviceStateError.FAILED, errorText(e)); // StateArea closed fd
      }
      this.transfer = save ? new RfcShmSave(area, ctx) : new RfcShmLoad(area, ctx);
      this.log.info(`device state ${save ? 'save' : 'load'} started through an RFC shm area of ${area.size} bytes (${ctx.identity.name} ${ctx.identity.version})`);
      return u64(0);
    }
    const t = this.transfer;
    const offset = Number(req.offset);
    const size = Number(req.size);
    if (req.code === RfcStateReq.GET_STATE) {
      try {
        if (!(t instanceof RfcShmSave)) throw new Error('no SAVE state area is attached');
        const r = await t.getState(offset, size);
        return this.reply(encodeRfcGetStateReply({ status: 0n, length: BigInt(r.length), remaining: BigInt(r.remaining) }));
      } catch (e) {
        this.log.error(`RFC_GET_STATE offset ${req.offset} size ${req.size} failed: ${errorText(e)}`);
        return this.reply(encodeRfcGetStateReply({ status: BigInt(DeviceStateError.FAILED), length: 0n, remaining: 0n }));
      }
    }
    try {
      if (!(t instanceof RfcShmLoad)) throw new Error('no LOAD state area is attached');
      await t.setState(offset, size);
      return u64(0);
    } catch (e) {
      this.log.error(`RFC_SET_STATE offset ${req.offset} size ${req.size} failed: ${errorText(e)}`);
      return u64(DeviceStateError.FAILED);
    }
  }

  /** Answers once the outcome is known: 0 when the transfer (and on LOAD, the apply) succeeded. */
  private async checkDeviceState(): Promise<void> {
    const t = this.transfer;
    if (t instanceof RfcShmTransfer) {
      this.log.error('CHECK_DEVICE_STATE during an RFC shm transfer: its outcome is the answer to the detach (RFC_SET_STATE_AREA size 0); reporting failure');
      return this.reply(encodeU64Reply(Req.CHECK_DEVICE_STATE, 1));
    }
    if (t === null) {
      this.log.error('CHECK_DEVICE_STATE without a transfer (no SET_DEVICE_STATE_FD before it): reporting failure');
      return this.reply(encodeU64Reply(Req.CHECK_DEVICE_STATE, 1));
    }
    const err = await t.done;
    this.transfer = null;
    if (err !== null) this.log.error(`CHECK_DEVICE_STATE: the ${t.direction} failed: ${err}`);
    return this.reply(encodeU64Reply(Req.CHECK_DEVICE_STATE, err === null ? 0 : 1));
  }

  // --- memory ------------------------------------------------------------------------------

  private async setMemTable(regions: (MemoryRegion & { fd: number })[]): Promise<void> {
    let msgs: RegionMsg[];
    try {
      msgs = regions.map(regionMsg);
      for (const r of msgs) if (r.size === 0) throw new RequestError(`region at GPA 0x${r.guestPhysAddr.toString(16)} has size 0`);
      await this.worker.setMemTable(msgs);
    } catch (e) {
      this.closeFds(regions.map((r) => r.fd));
      throw e;
    }
    // The worker holds mappings now; the old regions' fds can go.
    this.closeFds(this.regions.map((r) => r.msg.fd));
    this.regions = msgs.map((msg) => ({ msg }));
  }

  private async addMemRegion(region: MemoryRegion & { fd: number }): Promise<void> {
    try {
      const msg = regionMsg(region);
      if (msg.size === 0) throw new RequestError('ADD_MEM_REG region has size 0');
      await this.worker.addMemRegion(msg);
      this.regions.push({ msg });
    } catch (e) {
      this.closeFds([region.fd]);
      throw e;
    }
  }

  private async removeMemRegion(region: MemoryRegion): Promise<void> {
    const gpa = toNumber(region.guestPhysAddr, 'guest physical address');
    const size = toNumber(region.memorySize, 'region size');
    const uva = toNumber(region.userspaceAddr, 'userspace address');
    await this.worker.removeMemRegion(gpa, size, uva);
    const i = this.regions.findIndex((r) => r.msg.guestPhysAddr === gpa && r.msg.size === size && r.msg.userspaceAddr === uva);
    if (i >= 0) {
      this.closeFds([this.regions[i].msg.fd]);
      this.regions.splice(i, 1);
    }
  }

  // --- rings -------------------------------------------------------------------------------

  private async setRingFd(code: number, index: number, fd: number | null): Promise<void> {
    try {
      this.checkRing(index);
    } catch (e) {
      if (fd !== null) this.closeFds([fd]);
      throw e;
    }
    const kind = code === Req.SET_VRING_KICK ? 'kick' : code === Req.SET_VRING_CALL ? 'call' : 'err';
    if (kind === 'kick' && fd === null && !this.hasProtocol(ProtocolFeature.INBAND_NOTIFICATIONS)) {
      // Polling mode is not implemented: without a kick fd and without in-band kicks nothing
      // would ever tell us about new buffers.
      throw new RequestError(`SET_VRING_KICK for ring ${index} without an fd needs INBAND_NOTIFICATIONS, which was not negotiated`);
    }
    try {
      if (kind === 'kick') await this.worker.ringKick(index, fd);
      else if (kind === 'call') await this.worker.ringCall(index, fd);
      else await this.worker.ringErr(index, fd);
    } catch (e) {
      if (fd !== null) this.closeFds([fd]);
      throw e;
    }
    this.replaceRingFd(index, kind, fd);
  }

  /** The worker has switched to `fd`: the previous fd of that kind is ours to close. */
  private replaceRingFd(index: number, kind: keyof RingFds, fd: number | null): void {
    const slot = this.ringFds[index];
    const old = slot[kind];
    slot[kind] = fd;
    if (old !== null && old !== fd) this.closeFds([old]);
  }

  private async resetDevice(): Promise<void> {
    if (this.transfer !== null) {
      this.transfer.abort('the device was reset');
      await this.transfer.done;
      this.transfer = null;
    }
    if (this.worker.dead) {
      // The old instance was killed (watchdog, crash): a reset brings a fresh one, with the
      // memory table the front-end already sent (its fds are still ours).
      await this.worker.exited;
      this.closeRingFds();
      this.worker = await this.slot.acquire();
      this.worker.onEvent = (e) => this.onDeviceEvent(e);
      await this.worker.setMemTable(this.regions.map((r) => r.msg));
      this.log.info('device restarted with a fresh instance after reset');
    } else {
      await this.worker.reset();
      this.closeRingFds();
    }
    this.ackedFeatures = 0n;
    this.featuresSet = false;
    this.needsReset = null;
    this.status = 0;
  }

  private closeRingFds(): void {
    for (let i = 0; i < this.ringFds.length; i++) {
      for (const k of ['kick', 'call', 'err'] as const) this.replaceRingFd(i, k, null);
    }
  }

  // --- back-end -> front-end ---------------------------------------------------------------

  private setBackendChannel(fd: number): void {
    this.backendChannel?.close('replaced by a new SET_BACKEND_REQ_FD');
    this.backendChannel = new MessageChannel(fd, {
      label: `back-end request channel (${this.opts.label})`,
      codes: 'frontend',
      onClose: (reason) => {
        if (reason) this.log.warn(`back-end request channel closed: ${reason}`);
      },
    });
  }

  private async sendBackendRequest(code: number, build: () => ReturnType<typeof encodeBackendRequest>): Promise<void> {
    const ch = this.backendChannel;
    if (!ch || ch.closed) return;
    const needReply = this.hasProtocol(ProtocolFeature.REPLY_ACK);
    const enc = build();
    try {
      await ch.request(enc.bytes, enc.fds, needReply);
    } catch (e) {
      this.log.warn(`back-end request ${code} failed: ${errorText(e)}`);
    }
  }

  private notifyConfigChange(): void {
    void this.sendBackendRequest(BackendReq.CONFIG_CHANGE_MSG, () =>
      encodeBackendRequest({ code: BackendReq.CONFIG_CHANGE_MSG }, this.hasProtocol(ProtocolFeature.REPLY_ACK)),
    );
  }

  private onDeviceEvent(e: DeviceEvent): void {
    if (e.type === 'inband-call') {
      void this.sendBackendRequest(BackendReq.VRING_CALL, () =>
        encodeBackendRequest({ code: BackendReq.VRING_CALL, state: { index: e.index, num: 0 } }, this.hasProtocol(ProtocolFeature.REPLY_ACK)),
      );
      return;
    }
    const reason = e.type === 'ring-broken' ? `ring ${e.index}: ${e.reason}` : e.reason;
    if (this.needsReset === null) {
      this.needsReset = reason;
      this.log.error(`device needs a reset (DEVICE_NEEDS_RESET set): ${reason}`);
      // Drivers re-read status on a config-change interrupt: that is how they learn of it.
      this.notifyConfigChange();
    }
  }

  // --- teardown ----------------------------------------------------------------------------

  private closeFds(fds: readonly (number | null)[]): void {
    for (const fd of fds) {
      if (fd === null || fd < 0) continue;
      try {
        native.close(fd);
      } catch (e) {
        this.log.warn(`closing fd ${fd}: ${errorText(e)}`);
      }
    }
  }

  private onChannelClosed(reason: string | null): void {
    if (this.closed) return;
    this.closed = true;
    if (reason === 'host shutting down') this.log.info('connection closed: host shutting down');
    else if (reason) this.log.error(`connection closed: ${reason}`);
    else this.log.info('front-end disconnected');
    this.backendChannel?.close();
    this.backendChannel = null;
    this.transfer?.abort('the front-end disconnected');
    void this.release().then(() => this.opts.onClosed?.(reason));
  }

  /** Stops the device's use of every borrowed fd, then closes them all. */
  private async release(): Promise<void> {
    if (this.transfer !== null) {
      await this.transfer.done;
      this.transfer = null;
    }
    if (this.logFd !== null) this.closeFds([this.logFd]);
    this.logFd = null;
    if (this.worker.dead) {
      // A killed worker's fd watchers close as its thread exits; closing the fds first could
      // pull them out from under libuv.
      await this.worker.exited;
    } else {
      try {
        await this.worker.reset();
        await this.worker.setMemTable([]);
      } catch (e) {
        this.log.warn(`device reset after disconnect failed: ${errorText(e)}`);
      }
    }
    for (const r of this.ringFds) this.closeFds([r.kick, r.call, r.err]);
    this.ringFds = this.ringFds.map(() => ({ kick: null, call: null, err: null }));
    this.closeFds(this.regions.map((r) => r.msg.fd));
    this.regions = [];
  }
}
