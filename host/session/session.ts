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
  decodeRequest, encodeBackendRequest, encodeConfigReply, encodeMemSlotsReply, encodeU64Reply,
  encodeVringStateReply,
} from '../protocol/codec.ts';
import {
  BackendReq, MAX_MEM_SLOTS, ProtocolFeature, Req, VHOST_VRING_F_LOG, featureBit, requestName,
} from '../protocol/constants.ts';
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
].reduce((m, b) => m | featureBit(b), 0n);

/** Transport/ring features the host implements for every device. */
export const HOST_VIRTIO_FEATURES =
  bit(VirtioFeature.VERSION_1) |
  bit(VirtioFeature.RING_INDIRECT_DESC) |
  bit(VirtioFeature.RING_EVENT_IDX) |
  bit(VirtioFeature.PROTOCOL_FEATURES);

/** Requests that carry their own reply: NEED_REPLY changes nothing for them (spec). */
const HAS_REPLY = new Set<number>([
  Req.GET_FEATURES, Req.GET_PROTOCOL_FEATURES, Req.GET_VRING_BASE, Req.GET_QUEUE_NUM, Req.GET_CONFIG,
  Req.GET_INFLIGHT_FD, Req.GET_MAX_MEM_SLOTS, Req.GET_STATUS, Req.SET_DEVICE_STATE_FD,
  Req.CHECK_DEVICE_STATE, Req.GET_SHARED_OBJECT, Req.POSTCOPY_ADVISE, Req.CREATE_CRYPTO_SESSION,
]);

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
};

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
  private owned = false;
  private ackedFeatures = 0n;
  private featuresSet = false;
  private protocolFeatures = 0n;
  private status = 0;
  private needsReset: string | null = null;
  private regions: OwnedRegion[] = [];
  private ringFds: RingFds[];
  private backendChannel: MessageChannel | null = null;
  private closed = false;

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
      if (e instanceof ProtocolError && m.header.needReply && !HAS_REPLY.has(m.header.request)) {
        this.log.error(`rejected a malformed message: ${why}`);
        await this.ack(m.header.request, false);
        return;
      }
      // Without a way to report failure the connection's state is now unknown: end it.
      throw new Error(`malformed message: ${why}`);
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
      if (HAS_REPLY.has(code)) throw new Error(why);
      this.log.error(`${why}; refused`);
      if (req.needReply) await this.ack(code, false);
      return;
    }
    if (this.log.enabled('debug')) this.log.debug(`<- ${requestName(code)}`);
    try {
      await this.handle(req);
      if (req.needReply && !HAS_REPLY.has(code)) await this.ack(code, true);
    } catch (e) {
      const why = `${requestName(code)} failed: ${errorText(e)}`;
      if (HAS_REPLY.has(code)) throw new Error(why); // no defined failure reply: drop the connection
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
        return this.reply(encodeU64Reply(req.code, this.offeredFeatures));
      case Req.SET_FEATURES:
        return this.setFeatures(req.features);
      case Req.SET_OWNER:
        this.owned = true;
        return;
      case Req.RESET_OWNER:
        // Deprecated and ambiguous in the spec; treated as RESET_DEVICE minus ownership.
        this.owned = false;
        return this.resetDevice();
      case Req.GET_PROTOCOL_FEATURES:
        return this.reply(encodeU64Reply(req.code, SUPPORTED_PROTOCOL_FEATURES));
      case Req.SET_PROTOCOL_FEATURES: {
        const extra = req.features & ~SUPPORTED_PROTOCOL_FEATURES;
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
        return this.worker.ringEnable(index, num === 1);
      }
      case Req.VRING_KICK:
        this.checkRing(req.state.index);
        return this.worker.ringInbandKick(req.state.index);
      case Req.GET_CONFIG: {
        const { offset, data } = req.config;
        try {
          const bytes = await this.worker.readConfig(offset, data.length);
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
        if (s === 0) await this.resetDevice();
        return;
      }
      case Req.GET_STATUS:
        return this.reply(encodeU64Reply(req.code, this.status | (this.needsReset ? STATUS_NEEDS_RESET : 0)));
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
    this.ackedFeatures = acked;
    this.featuresSet = true;
    await this.worker.setFeatures(acked, (acked & bit(VirtioFeature.PROTOCOL_FEATURES)) !== 0n);
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
    void this.release().then(() => this.opts.onClosed?.(reason));
  }

  /** Stops the device's use of every borrowed fd, then closes them all. */
  private async release(): Promise<void> {
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
    void this.owned;
  }
}
