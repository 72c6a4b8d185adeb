// The back-end request channel (SET_BACKEND_REQ_FD): how this back-end speaks first, for
// config-change notifications and in-band calls. Best effort: a front-end that closed it or
// answers badly costs a warning, never the connection.

import { native } from '../native/index.ts';
import { MessageChannel } from '../protocol/channel.ts';
import { encodeBackendRequest } from '../protocol/codec.ts';
import type { BackendRequest } from '../protocol/messages.ts';
import { errorText, type Logger } from '../log/logger.ts';
import { closeFds } from './fds.ts';
import { RequestError } from './request-error.ts';

export class BackendChannel {
  private channel: MessageChannel | null = null;

  constructor(
    private readonly label: string,
    private readonly log: Logger,
  ) {}

  /** SET_BACKEND_REQ_FD: `fd` (ours) replaces the previous channel if it is a usable socket. */
  set(fd: number): void {
    let ch: MessageChannel;
    try {
      // Refused before the old channel goes: anything but a socket (a memfd, a regular file,
      // a directory, /dev/null, a pipe) cannot carry back-end requests and their replies.
      const st = native.fstat(fd);
      if (!st.isSocket) {
        const what = st.isFile ? 'a regular file or memfd' : st.isFifo ? 'a pipe or FIFO' : 'a directory or device';
        throw new Error(`it is ${what}`);
      }
      ch = new MessageChannel(fd, {
        label: `back-end request channel (${this.label})`,
        codes: 'frontend',
        onClose: (reason) => {
          if (reason) this.log.warn(`back-end request channel closed: ${reason}`);
        },
      });
    } catch (e) {
      closeFds([fd], this.log);
      throw new RequestError(`the back-end request fd is not a socket it can use: ${errorText(e)}`);
    }
    this.channel?.close('replaced by a new SET_BACKEND_REQ_FD');
    this.channel = ch;
  }

  /** Sends `req` if there is a channel; `replyAck`: REPLY_ACK was negotiated, so ask for one. */
  async send(req: BackendRequest, replyAck: boolean): Promise<void> {
    const ch = this.channel;
    if (!ch || ch.closed) return;
    const enc = encodeBackendRequest(req, replyAck);
    try {
      await ch.request(enc.bytes, enc.fds, replyAck);
    } catch (e) {
      this.log.warn(`back-end request ${req.code} failed: ${errorText(e)}`);
    }
  }

  /** The channel's socket (a host handover passes it on), or null without one. */
  get fd(): number | null {
    return this.channel && !this.channel.closed ? this.channel.fd : null;
  }

  /** Stops it at a message boundary with nothing in flight (a host handover), within `ms`. */
  async hold(ms: number): Promise<void> {
    const ch = this.channel;
    if (!ch || ch.closed) return;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        ch.hold(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new RequestError(`the back-end request channel did not fall quiet within ${ms} ms (a request to the front-end awaits its reply)`)), ms);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  release(): void {
    this.channel?.release();
  }

  close(reason?: string): void {
    this.channel?.close(reason);
    this.channel = null;
  }
}
