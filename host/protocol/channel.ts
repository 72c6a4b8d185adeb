// Message framing over a connected, non-blocking AF_UNIX stream socket.
//
// Reads exactly one header (12 bytes) and then exactly its payload, never more: the kernel
// attaches SCM_RIGHTS fds to the bytes they were sent with, so reading no further than the
// current message is what keeps each message's fds with that message. Incoming requests go to
// one async handler at a time, and the socket is not read while it runs (backpressure: a slow
// handler stalls the peer instead of queueing unbounded messages in memory).

import { native } from '../native/index.ts';
import type { Watcher, WatchEvents } from '../native/api.ts';
import { HEADER_SIZE, MAX_FDS, MAX_PAYLOAD_SIZE } from './constants.ts';
import { backendRequestName, requestName } from './requests.ts';
import { decodeHeader, type CodeSpace } from './codec.ts';
import { ProtocolError } from './errors.ts';
import { LE, view } from './layout.ts';
import type { Header, RawMessage } from './messages.ts';

export interface ChannelOptions {
  /**
   * Receives every incoming message that is not a reply (REPLY flag clear), strictly in order.
   * The next message is not read until the returned promise settles. The handler owns the
   * message's fds. A handler that throws or rejects closes the channel with the error as reason.
   */
  onMessage?: (msg: RawMessage) => void | Promise<void>;
  /** Called once when the channel closes: null for a clean close, else what went wrong. */
  onClose?: (reason: string | null) => void;
  /** Bound on a message's payload size (default MAX_PAYLOAD_SIZE). */
  maxPayload?: number;
  /** Numbering of the codes this channel receives, for error messages (default 'frontend'). */
  codes?: CodeSpace;
  /** Names the channel in close reasons, e.g. 'front-end socket'. */
  label?: string;
  /** Do not read until release() (a session restored from a host handover reads only once it runs). */
  startHeld?: boolean;
}

interface Outgoing {
  bytes: Uint8Array;
  offset: number;
  fds: number[];
  resolve: () => void;
  reject: (e: Error) => void;
}

interface ReplyWaiter {
  code: number;
  resolve: (msg: RawMessage) => void;
  reject: (e: Error) => void;
}

const noop = () => {};

export class MessageChannel {
  readonly fd: number;
  private readonly opts: ChannelOptions;
  private readonly maxPayload: number;
  private readonly label: string;

  private watcher: Watcher | null = null;
  private events: WatchEvents | null = null;
  private isClosed = false;
  private handlerRunning = false;

  // The message being received.
  private readonly headerBuf = new Uint8Array(HEADER_SIZE);
  private headerGot = 0;
  private header: Header | null = null;
  private payload: Uint8Array | null = null;
  private payloadGot = 0;
  private fds: number[] = [];

  private readonly outq: Outgoing[] = [];
  private readonly waiters: ReplyWaiter[] = [];

  /** hold(): no message is started; waiters resolve once the channel is quiet (see hold()). */
  private held = false;
  private quietWaiters: (() => void)[] = [];

  /** Takes ownership of `fd` (closed by close()). */
  constructor(fd: number, opts: ChannelOptions = {}) {
    this.fd = fd;
    this.opts = opts;
    this.maxPayload = opts.maxPayload ?? MAX_PAYLOAD_SIZE;
    this.label = opts.label ?? 'vhost-user socket';
    this.held = opts.startHeld ?? false;
    this.updateInterest();
  }

  /** No part of a message is read, no handler runs, nothing waits to be sent or for a reply. */
  private get quiet(): boolean {
    return this.header === null && this.headerGot === 0 && !this.handlerRunning && this.outq.length === 0 && this.waiters.length === 0;
  }

  /**
   * Stops reading at the next message boundary (a host handover passes the socket on): a
   * message already begun is read whole and its handler runs; no new one is started. Resolves
   * once the channel is quiet (also nothing left to send and no reply awaited), or rejects if
   * it closes first. What the peer sends meanwhile stays in the socket for whoever reads next.
   */
  hold(): Promise<void> {
    this.held = true;
    this.updateInterest();
    return new Promise<void>((resolve, reject) => {
      const check = () => {
        if (this.isClosed) reject(new Error(`${this.label} closed while it was being held`));
        else if (this.quiet) resolve();
        else this.quietWaiters.push(check);
      };
      check();
    });
  }

  /** Reads again after hold() (or startHeld). */
  release(): void {
    if (!this.held) return;
    this.held = false;
    if (this.isClosed) return;
    this.updateInterest();
    if (!this.handlerRunning) this.readLoop();
    this.updateInterest();
  }

  private wakeQuiet(): void {
    if (this.quietWaiters.length === 0 || (!this.quiet && !this.isClosed)) return;
    for (const w of this.quietWaiters.splice(0)) w();
  }

  /** Not at a boundary while held: the message begun is finished first. */
  private get mayRead(): boolean {
    return !this.handlerRunning && !(this.held && this.header === null && this.headerGot === 0);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Queues bytes (one or more whole messages) with fds attached to their first byte. Resolves
   * once the kernel has taken all the bytes; only then may the caller close the fds it sent.
   * Rejects if the channel closes first.
   */
  send(bytes: Uint8Array, fds: readonly number[] = []): Promise<void> {
    if (fds.length > MAX_FDS) throw new RangeError(`send: ${fds.length} fds exceed the ${MAX_FDS} a message may carry`);
    if (bytes.length === 0) throw new RangeError('send: empty message');
    let p: Promise<void>;
    if (this.isClosed) {
      p = Promise.reject(new Error(`${this.label} is closed`));
    } else {
      p = new Promise<void>((resolve, reject) => {
        this.outq.push({ bytes, offset: 0, fds: fds.slice(), resolve, reject });
      });
      this.flush();
      this.updateInterest();
    }
    // Fire-and-forget sends are normal (a reply nobody awaits): never an unhandled rejection.
    p.catch(noop);
    return p;
  }

  /**
   * Sends a request; with expectReply resolves with the reply message (same request code,
   * REPLY flag), else with null once sent. Replies are matched in order, so requests may be
   * pipelined. A reply with the wrong code closes the channel (as QEMU does).
   */
  request(bytes: Uint8Array, fds: readonly number[] = [], expectReply = true): Promise<RawMessage | null> {
    if (bytes.length < HEADER_SIZE) throw new RangeError(`request: ${bytes.length} bytes is shorter than a header`);
    if (!expectReply) return this.send(bytes, fds).then(() => null);
    const code = view(bytes).getUint32(0, LE);
    if (this.isClosed) return Promise.reject(new Error(`${this.label} is closed; cannot send ${this.nameOf(code)}`));
    const p = new Promise<RawMessage>((resolve, reject) => this.waiters.push({ code, resolve, reject }));
    void this.send(bytes, fds);
    return p;
  }

  /** Idempotent. Closes the socket, any fds of a half-received message, and fails pending work. */
  close(reason: string | null = null): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.setEvents(null);
    try {
      native.close(this.fd);
    } catch {
      // Already gone (EBADF) is still closed.
    }
    this.closeFds(this.fds);
    this.fds = [];
    const why = reason === null ? `${this.label} closed` : `${this.label} closed: ${reason}`;
    for (const w of this.waiters.splice(0)) {
      w.reject(new Error(`${why} before the reply to ${this.nameOf(w.code)} arrived`));
    }
    for (const o of this.outq.splice(0)) o.reject(new Error(`${why} before the message was sent`));
    this.wakeQuiet();
    this.opts.onClose?.(reason);
  }

  // --- internals ----------------------------------------------------------------------------

  private nameOf(code: number): string {
    return this.opts.codes === 'backend' ? backendRequestName(code) : requestName(code);
  }

  private fail(reason: string): void {
    this.close(reason);
  }

  private closeFds(fds: number[]): void {
    for (const fd of fds) {
      try {
        native.close(fd);
      } catch {
        // Closing is best effort; an fd we cannot close is not ours to report.
      }
    }
  }

  private updateInterest(): void {
    if (this.isClosed) return;
    const r = this.mayRead;
    const w = this.outq.length > 0;
    this.setEvents(r && w ? 'rw' : r ? 'r' : w ? 'w' : null);
    this.wakeQuiet();
  }

  // uv_poll is level-triggered: an fd we do not want to read right now must not be watched
  // for reading at all, or the loop spins. With no interest the watcher is released.
  private setEvents(ev: WatchEvents | null): void {
    if (ev === this.events) return;
    this.events = ev;
    if (ev === null) {
      this.watcher?.close();
      this.watcher = null;
    } else if (this.watcher === null) {
      this.watcher = native.watch(this.fd, ev, (r, w, e) => this.onPoll(r, w, e));
    } else {
      this.watcher.update(ev);
    }
  }

  private onPoll(readable: boolean, writable: boolean, error: boolean): void {
    if (this.isClosed) return;
    if (writable || error) this.flush();
    if ((readable || error) && this.mayRead) this.readLoop();
    if (error && !this.isClosed && !this.handlerRunning && !this.held) {
      this.fail('poll reported an error on the socket');
      return;
    }
    this.updateInterest();
  }

  private flush(): void {
    while (!this.isClosed && this.outq.length > 0) {
      const o = this.outq[0];
      let n: number;
      try {
        n = native.sendMsg(this.fd, o.offset === 0 ? o.bytes : o.bytes.subarray(o.offset), o.fds);
      } catch (e) {
        this.fail(`sendmsg failed: ${errText(e)}`);
        return;
      }
      if (n < 0) return;
      // The fds left with the first byte(s); the rest of the message must not carry them again.
      if (n > 0) o.fds = [];
      o.offset += n;
      if (o.offset >= o.bytes.length) {
        this.outq.shift();
        o.resolve();
      }
    }
    this.wakeQuiet();
  }

  private readLoop(): void {
    while (!this.isClosed && this.mayRead) {
      const inHeader = this.header === null;
      const target = inHeader ? this.headerBuf.subarray(this.headerGot) : this.payload!.subarray(this.payloadGot);
      let r;
      try {
        r = native.recvMsg(this.fd, target, MAX_FDS);
      } catch (e) {
        // A peer that exits with unread data in its queue resets the connection instead of
        // closing it (QEMU does when killed): at a message boundary that is just a hang-up.
        if ((e as { code?: string }).code === 'ECONNRESET') {
          this.onEof();
          return;
        }
        this.fail(`recvmsg failed: ${errText(e)}`);
        return;
      }
      if (r === null) return;
      if (r.fds.length > 0 || r.fdsTruncated) {
        const atStart = inHeader && this.headerGot === 0;
        if (r.fdsTruncated) {
          this.closeFds(r.fds);
          const at = atStart ? '' : ` (${this.where()})`;
          this.fail(`a message carried more than ${MAX_FDS} fds${at}; the ones received were closed`);
          return;
        }
        if (!atStart) {
          this.closeFds(r.fds);
          this.fail(`${r.fds.length} fd(s) arrived ${this.where()}, not with the first byte of a message`);
          return;
        }
        this.fds.push(...r.fds);
      }
      if (r.bytes === 0) {
        this.onEof();
        return;
      }
      if (inHeader) {
        this.headerGot += r.bytes;
        if (this.headerGot < HEADER_SIZE) continue;
        try {
          this.header = decodeHeader(this.headerBuf, this.maxPayload, this.opts.codes ?? 'frontend');
        } catch (e) {
          this.fail(e instanceof ProtocolError ? e.message : `bad header: ${errText(e)}`);
          return;
        }
        this.payload = new Uint8Array(this.header.size);
        this.payloadGot = 0;
      } else {
        this.payloadGot += r.bytes;
      }
      if (this.payloadGot === this.payload!.length) this.complete();
    }
  }

  private where(): string {
    if (this.header === null) return `mid-header (${this.headerGot} of ${HEADER_SIZE} bytes)`;
    return `mid-payload of ${this.nameOf(this.header.request)} (${this.payloadGot} of ${this.header.size} bytes)`;
  }

  private onEof(): void {
    if (this.header === null && this.headerGot === 0) {
      this.close(null);
    } else {
      this.fail(`peer closed the connection ${this.where()}`);
    }
  }

  private complete(): void {
    const msg: RawMessage = { header: this.header!, payload: this.payload!, fds: this.fds };
    this.header = null;
    this.payload = null;
    this.headerGot = 0;
    this.payloadGot = 0;
    this.fds = [];
    if (msg.header.reply) this.deliverReply(msg);
    else this.deliverRequest(msg);
  }

  private deliverReply(msg: RawMessage): void {
    const w = this.waiters.shift();
    const code = msg.header.request;
    if (w === undefined) {
      this.closeFds(msg.fds);
      this.fail(`unexpected reply to ${this.nameOf(code)}: no request is waiting for one`);
      return;
    }
    if (w.code !== code) {
      this.closeFds(msg.fds);
      this.waiters.unshift(w);
      this.fail(`expected the reply to ${this.nameOf(w.code)}, got a reply to ${this.nameOf(code)}`);
      return;
    }
    w.resolve(msg);
    this.wakeQuiet();
  }

  private deliverRequest(msg: RawMessage): void {
    const handler = this.opts.onMessage;
    if (handler === undefined) {
      this.closeFds(msg.fds);
      this.fail(`unexpected ${this.nameOf(msg.header.request)}: this channel accepts only replies`);
      return;
    }
    let result: void | Promise<void>;
    try {
      result = handler(msg);
    } catch (e) {
      this.fail(`handler for ${this.nameOf(msg.header.request)} failed: ${errText(e)}`);
      return;
    }
    if (!isThenable(result)) return;
    this.handlerRunning = true;
    this.updateInterest();
    result.then(
      () => this.resume(),
      (e: unknown) => {
        this.handlerRunning = false;
        this.fail(`handler for ${this.nameOf(msg.header.request)} failed: ${errText(e)}`);
      },
    );
  }

  private resume(): void {
    this.handlerRunning = false;
    if (this.isClosed) return;
    this.updateInterest();
    this.readLoop();
    this.updateInterest();
    this.wakeQuiet();
  }
}

function isThenable(v: unknown): v is Promise<void> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

function errText(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    return code && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}
