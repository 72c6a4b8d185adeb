// One vhost-user control connection seen from the front-end: typed request helpers, REPLY_ACK
// handling, and the back-end request socket. Requests are sent one at a time, as QEMU does, so
// a failure is always attributable to the request that caused it.

import { native } from '../native/index.ts';
import { MessageChannel } from '../protocol/channel.ts';
import { decodeReply, encodeRequest } from '../protocol/codec.ts';
import { RfcStateReq, decodeRfcStateReply, encodeRfcStateRequest, type RfcStateRequest } from '../protocol/rfc-state-shm.ts';
import { ProtocolFeature, featureBit } from '../protocol/constants.ts';
import { Req, hasReply, requestName } from '../protocol/requests.ts';
import type {
  FrontendRequest, MemoryRegion, MemoryRegionWithFd, RawMessage, Reply, VringAddr,
} from '../protocol/messages.ts';
import { BackendChannel } from './backend-channel.ts';
import { VhostWasmError } from '../errors.ts';

export class VhostUserError extends VhostWasmError {
  static override readonly code = 'ERR_FRONTEND_REQUEST_FAILED';
  override name = 'VhostUserError';
  constructor(message: string, readonly request: number) {
    super(message);
  }
}

export class VhostUserConnection {
  private readonly channel: MessageChannel;
  /** Serialises requests: the next one is sent only after the previous one completed. */
  private tail: Promise<unknown> = Promise.resolve();
  private negotiated = 0n;
  private closeReason: string | null | undefined = undefined;
  private readonly closedP: Promise<string | null>;
  /** Every request code sent, in order (handshake-order tests, debugging). */
  readonly history: number[] = [];
  backend: BackendChannel | null = null;

  private constructor(fd: number, label: string) {
    let onClosed!: (r: string | null) => void;
    this.closedP = new Promise((r) => (onClosed = r));
    this.channel = new MessageChannel(fd, {
      label,
      onClose: (reason) => {
        this.closeReason = reason;
        onClosed(reason);
      },
    });
  }

  static connect(path: string): VhostUserConnection {
    return new VhostUserConnection(native.connectUnix(path), `vhost-user socket ${path}`);
  }

  /** Wraps an already-connected socket (tests with a socketpair); takes ownership of fd. */
  static fromFd(fd: number, label = 'vhost-user socket'): VhostUserConnection {
    return new VhostUserConnection(fd, label);
  }

  /** Resolves when the socket closes: null when we closed it, else why the channel closed. */
  get closed(): Promise<string | null> {
    return this.closedP;
  }

  get isClosed(): boolean {
    return this.closeReason !== undefined || this.channel.closed;
  }

  /** Protocol features in effect (after setProtocolFeatures). */
  get protocolFeatures(): bigint {
    return this.negotiated;
  }

  hasProtocol(bit: number): boolean {
    return (this.negotiated & featureBit(bit)) !== 0n;
  }

  /**
   * Sends a request and returns its decoded reply; for requests without one, waits for the
   * REPLY_ACK when negotiated and returns null. The caller owns any fds in the reply.
   */
  request(req: FrontendRequest): Promise<Reply | null> {
    const run = () => this.send(req);
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => {});
    return p;
  }

  private async send(req: FrontendRequest): Promise<Reply | null> {
    const code = req.code;
    // A request with a reply of its own never sets NEED_REPLY (QEMU does not either).
    const own = hasReply(code);
    const ack = !own && this.hasProtocol(ProtocolFeature.REPLY_ACK);
    const enc = encodeRequest(req, ack);
    // MessageChannel.request() on a closed channel never settles when a reply is expected
    // (its waiter is queued after close() ran), so fail here instead of hanging.
    this.throwIfClosed(code);
    this.history.push(code);
    const raw = await this.channel.request(enc.bytes, enc.fds, own || ack);
    if (raw === null) return null;
    let reply: Reply;
    try {
      reply = decodeReply(code, raw.header, raw.payload, raw.fds);
    } catch (e) {
      closeAll(raw.fds);
      // A reply we cannot parse leaves the stream in an unknown state: QEMU drops the connection too.
      this.channel.close(`bad reply to ${requestName(code)}: ${(e as Error).message}`);
      throw new VhostUserError(`${requestName(code)}: ${(e as Error).message}`, code);
    }
    if (ack) {
      const v = reply.kind === 'u64' ? reply.value : -1n;
      if (v !== 0n) throw new VhostUserError(`${requestName(code)} failed: the back-end acked with ${v}`, code);
      return null;
    }
    return reply;
  }

  private throwIfClosed(code: number): void {
    if (this.channel.closed) {
      const why = this.closeReason ? `: ${this.closeReason}` : '';
      throw new VhostUserError(`${requestName(code)}: the connection is closed${why}`, code);
    }
  }

  private async u64(req: FrontendRequest): Promise<bigint> {
    const r = await this.request(req);
    if (r === null || r.kind !== 'u64') throw new VhostUserError(`${requestName(req.code)}: no u64 reply`, req.code);
    closeAll(r.fds);
    return r.value;
  }

  private async noReply(req: FrontendRequest): Promise<void> {
    const r = await this.request(req);
    if (r !== null) closeAll(r.fds);
  }

  getFeatures(): Promise<bigint> {
    return this.u64({ code: Req.GET_FEATURES });
  }
  setFeatures(features: bigint): Promise<void> {
    return this.noReply({ code: Req.SET_FEATURES, features });
  }
  setOwner(): Promise<void> {
    return this.noReply({ code: Req.SET_OWNER });
  }
  getProtocolFeatures(): Promise<bigint> {
    return this.u64({ code: Req.GET_PROTOCOL_FEATURES });
  }
  /** Takes effect for the requests after this one (QEMU sends this one without NEED_REPLY). */
  async setProtocolFeatures(features: bigint): Promise<void> {
    await this.noReply({ code: Req.SET_PROTOCOL_FEATURES, features });
    this.negotiated = features;
  }
  async getQueueNum(): Promise<number> {
    return Number(await this.u64({ code: Req.GET_QUEUE_NUM }));
  }
  /** The fds stay the caller's; they may be closed once this resolves. */
  setMemTable(regions: MemoryRegionWithFd[]): Promise<void> {
    return this.noReply({ code: Req.SET_MEM_TABLE, regions });
  }
  async getMaxMemSlots(): Promise<number> {
    return Number(await this.u64({ code: Req.GET_MAX_MEM_SLOTS }));
  }
  addMemReg(region: MemoryRegionWithFd): Promise<void> {
    return this.noReply({ code: Req.ADD_MEM_REG, region });
  }
  remMemReg(region: MemoryRegion): Promise<void> {
    return this.noReply({ code: Req.REM_MEM_REG, region });
  }
  setVringNum(index: number, num: number): Promise<void> {
    return this.noReply({ code: Req.SET_VRING_NUM, state: { index, num } });
  }
  setVringAddr(addr: VringAddr): Promise<void> {
    return this.noReply({ code: Req.SET_VRING_ADDR, addr });
  }
  setVringBase(index: number, base: number): Promise<void> {
    return this.noReply({ code: Req.SET_VRING_BASE, state: { index, num: base } });
  }
  /** Stops the ring; resolves with the next avail index the back-end would have processed. */
  async getVringBase(index: number): Promise<number> {
    const r = await this.request({ code: Req.GET_VRING_BASE, state: { index, num: 0 } });
    if (r === null || r.kind !== 'vring-state') throw new VhostUserError('GET_VRING_BASE: no vring state reply', Req.GET_VRING_BASE);
    if (r.state.index !== index) {
      throw new VhostUserError(`GET_VRING_BASE: asked for ring ${index}, the reply is for ring ${r.state.index}`, Req.GET_VRING_BASE);
    }
    return r.state.num;
  }
  /** fd null sets the no-fd bit (the back-end polls). */
  setVringKick(index: number, fd: number | null): Promise<void> {
    return this.noReply({ code: Req.SET_VRING_KICK, index, fd });
  }
  setVringCall(index: number, fd: number | null): Promise<void> {
    return this.noReply({ code: Req.SET_VRING_CALL, index, fd });
  }
  setVringErr(index: number, fd: number | null): Promise<void> {
    return this.noReply({ code: Req.SET_VRING_ERR, index, fd });
  }
  setVringEnable(index: number, enabled: boolean): Promise<void> {
    return this.noReply({ code: Req.SET_VRING_ENABLE, state: { index, num: enabled ? 1 : 0 } });
  }
  /** The config bytes [offset, offset+size); an empty reply (the spec's error answer) throws. */
  async getConfig(offset: number, size: number, flags = 0): Promise<Uint8Array> {
    const r = await this.request({ code: Req.GET_CONFIG, config: { offset, flags, data: new Uint8Array(size) } });
    if (r === null || r.kind !== 'config') throw new VhostUserError('GET_CONFIG: no config reply', Req.GET_CONFIG);
    if (r.config === null) throw new VhostUserError(`GET_CONFIG failed: the back-end refused offset ${offset} size ${size}`, Req.GET_CONFIG);
    if (r.config.data.length !== size) {
      throw new VhostUserError(`GET_CONFIG: asked for ${size} bytes, got ${r.config.data.length}`, Req.GET_CONFIG);
    }
    return r.config.data;
  }
  setConfig(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    return this.noReply({ code: Req.SET_CONFIG, config: { offset, flags, data } });
  }
  setStatus(status: number): Promise<void> {
    return this.noReply({ code: Req.SET_STATUS, status: BigInt(status) });
  }
  async getStatus(): Promise<number> {
    return Number(await this.u64({ code: Req.GET_STATUS }));
  }
  resetDevice(): Promise<void> {
    return this.noReply({ code: Req.RESET_DEVICE });
  }

  /**
   * SET_DEVICE_STATE_FD: the caller keeps its fd. Resolves with the back-end's own fd when it
   * returned one (the caller owns it), else null. A non-zero error code throws.
   */
  async setDeviceStateFd(direction: number, phase: number, fd: number): Promise<number | null> {
    const r = await this.request({ code: Req.SET_DEVICE_STATE_FD, params: { direction, phase }, fd });
    if (r === null || r.kind !== 'u64') throw new VhostUserError('SET_DEVICE_STATE_FD: no u64 reply', Req.SET_DEVICE_STATE_FD);
    const err = r.value & 0xffn;
    if (err !== 0n) throw new VhostUserError(`SET_DEVICE_STATE_FD failed: error ${err}`, Req.SET_DEVICE_STATE_FD);
    return r.fd;
  }
  /** SET_LOG_BASE (LOG_SHMFD form): the back-end maps [offset, offset+size) of fd; the caller keeps fd. */
  async setLogBase(size: number, offset: number, fd: number): Promise<void> {
    const v = await this.u64({ code: Req.SET_LOG_BASE, log: { mmapSize: BigInt(size), mmapOffset: BigInt(offset) }, fd });
    if (v !== 0n) throw new VhostUserError(`SET_LOG_BASE failed: the back-end answered ${v}`, Req.SET_LOG_BASE);
  }
  /**
   * GET_INFLIGHT_FD for `numQueues` rings of `queueSize`: the back-end's area (the caller owns
   * fd; null with size 0: the back-end keeps none).
   */
  async getInflightFd(numQueues: number, queueSize: number): Promise<{ fd: number | null; size: number; offset: number }> {
    const r = await this.request({ code: Req.GET_INFLIGHT_FD, inflight: { mmapSize: 0n, mmapOffset: 0n, numQueues, queueSize } });
    if (r === null || r.kind !== 'inflight') throw new VhostUserError('GET_INFLIGHT_FD: no inflight reply', Req.GET_INFLIGHT_FD);
    return { fd: r.fd, size: Number(r.inflight.mmapSize), offset: Number(r.inflight.mmapOffset) };
  }
  /** SET_INFLIGHT_FD: hands the area back (after a back-end restart); the caller keeps fd. */
  setInflightFd(fd: number, size: number, offset: number, numQueues: number, queueSize: number): Promise<void> {
    return this.noReply({ code: Req.SET_INFLIGHT_FD, inflight: { mmapSize: BigInt(size), mmapOffset: BigInt(offset), numQueues, queueSize }, fd });
  }
  setLogFd(fd: number): Promise<void> {
    return this.noReply({ code: Req.SET_LOG_FD, fd });
  }

  async checkDeviceState(): Promise<void> {
    const v = await this.u64({ code: Req.CHECK_DEVICE_STATE });
    if (v !== 0n) throw new VhostUserError(`CHECK_DEVICE_STATE failed: the back-end answered ${v}`, Req.CHECK_DEVICE_STATE);
  }

  // --- experimental: the RFC's shared-memory state chunks (protocol feature 63) -------------

  private async rfcRequest(req: RfcStateRequest): Promise<ReturnType<typeof decodeRfcStateReply>> {
    const enc = encodeRfcStateRequest(req);
    const raw = await this.sendRaw(enc.bytes, enc.fds, true);
    if (raw === null) throw new VhostUserError(`${requestName(req.code)}: no reply`, req.code);
    try {
      return decodeRfcStateReply(req.code, raw.header, raw.payload, raw.fds);
    } catch (e) {
      closeAll(raw.fds);
      this.channel.close(`bad reply to ${requestName(req.code)}: ${(e as Error).message}`);
      throw new VhostUserError(`${requestName(req.code)}: ${(e as Error).message}`, req.code);
    }
  }

  /** RFC_SET_STATE_AREA: attach `fd` (the caller keeps it) as the state area for `direction`. */
  async rfcSetStateArea(direction: number, size: number, fd: number, mmapOffset = 0): Promise<void> {
    const v = await this.rfcRequest({ code: RfcStateReq.SET_STATE_AREA, size: BigInt(size), mmapOffset: BigInt(mmapOffset), direction, flags: 0, fd });
    if (v !== 0n) throw new VhostUserError(`RFC_SET_STATE_AREA failed: error ${v}`, RfcStateReq.SET_STATE_AREA);
  }

  /** RFC_SET_STATE_AREA size 0: detach; throws when the back-end reports the transfer failed. */
  async rfcDetachStateArea(): Promise<void> {
    const v = await this.rfcRequest({ code: RfcStateReq.SET_STATE_AREA, size: 0n, mmapOffset: 0n, direction: 0, flags: 0, fd: null });
    if (v !== 0n) throw new VhostUserError(`RFC_SET_STATE_AREA (detach) failed: the back-end answered ${v}`, RfcStateReq.SET_STATE_AREA);
  }

  /** RFC_GET_STATE: the back-end put `length` bytes at area offset 0; `remaining` are left after them. */
  async rfcGetState(offset: number, size: number): Promise<{ length: number; remaining: number }> {
    const r = await this.rfcRequest({ code: RfcStateReq.GET_STATE, offset: BigInt(offset), size: BigInt(size) });
    if (typeof r === 'bigint') throw new VhostUserError('RFC_GET_STATE: no chunk reply', RfcStateReq.GET_STATE);
    if (r.status !== 0n) throw new VhostUserError(`RFC_GET_STATE failed: error ${r.status}`, RfcStateReq.GET_STATE);
    if (r.length > BigInt(size) || r.remaining > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new VhostUserError(`RFC_GET_STATE: length ${r.length} / remaining ${r.remaining} make no sense for a ${size}-byte request`, RfcStateReq.GET_STATE);
    }
    return { length: Number(r.length), remaining: Number(r.remaining) };
  }

  /** RFC_SET_STATE: the back-end consumes area[0, size) as state bytes [offset, offset+size). */
  async rfcSetState(offset: number, size: number): Promise<void> {
    const v = await this.rfcRequest({ code: RfcStateReq.SET_STATE, offset: BigInt(offset), size: BigInt(size) });
    if (v !== 0n) throw new VhostUserError(`RFC_SET_STATE failed: error ${v}`, RfcStateReq.SET_STATE);
  }

  /**
   * Creates the back-end request socketpair, hands the back-end its end, and services ours.
   * The back-end's end is closed here once sent (it holds its own copy).
   */
  async setBackendReqFd(): Promise<BackendChannel> {
    if (this.backend !== null) throw new Error('SET_BACKEND_REQ_FD: a back-end request socket is already set up');
    const [ours, theirs] = native.socketpair();
    const channel = new BackendChannel(ours);
    try {
      await this.noReply({ code: Req.SET_BACKEND_REQ_FD, fd: theirs });
    } catch (e) {
      channel.close();
      throw e;
    } finally {
      native.close(theirs);
    }
    this.backend = channel;
    return channel;
  }

  /**
   * Bytes straight onto the socket (bad-input tests). With expectReply, resolves with the next
   * reply, which must carry the same request code as `bytes`; the caller owns its fds.
   */
  sendRaw(bytes: Uint8Array, fds: number[] = [], expectReply = false): Promise<RawMessage | null> {
    const run = () => {
      this.throwIfClosed(bytes.length >= 4 ? new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true) : 0);
      return this.channel.request(bytes, fds, expectReply);
    };
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => {});
    return p;
  }

  /** Closes the control socket and the back-end request socket. Idempotent. */
  close(): void {
    this.backend?.close();
    this.channel.close();
  }
}

function closeAll(fds: number[]): void {
  for (const fd of fds) native.close(fd);
}
