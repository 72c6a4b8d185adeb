// The front-end's end of the SET_BACKEND_REQ_FD socket: back-end-initiated requests arrive here
// and are surfaced as events. We answer CONFIG_CHANGE_MSG (success); everything else we do not
// implement (IOTLB, host notifiers, shared objects) is answered with a failure when the
// back-end asked for a reply, so it never waits on us.

import { EventEmitter } from 'node:events';
import { native } from '../native/index.ts';
import { MessageChannel } from '../protocol/channel.ts';
import { decodeBackendRequest, encodeU64Reply } from '../protocol/codec.ts';
import { BackendReq, backendRequestName } from '../protocol/requests.ts';
import type { AnyDecodedBackendRequest, RawMessage } from '../protocol/messages.ts';

export interface BackendChannelEvents {
  /** Every request, decoded; its fds are closed after the listeners return (dup to keep one). */
  request: [req: AnyDecodedBackendRequest];
  'config-change': [];
  close: [reason: string | null];
}

export class BackendChannel extends EventEmitter<BackendChannelEvents> {
  private readonly channel: MessageChannel;
  /** Requests seen, by code: lets tests wait for a count without racing the event. */
  readonly counts = new Map<number, number>();

  /** Takes ownership of `fd` (our end of the socketpair). */
  constructor(fd: number) {
    super();
    this.channel = new MessageChannel(fd, {
      codes: 'backend',
      label: 'back-end request socket',
      onMessage: (m) => this.onMessage(m),
      onClose: (reason) => this.emit('close', reason),
    });
  }

  get closed(): boolean {
    return this.channel.closed;
  }

  private onMessage(m: RawMessage): Promise<void> | void {
    let req: AnyDecodedBackendRequest;
    try {
      req = decodeBackendRequest(m.header, m.payload, m.fds);
    } catch (e) {
      closeAll(m.fds);
      throw e;
    }
    const code = req.code;
    this.counts.set(code, (this.counts.get(code) ?? 0) + 1);
    try {
      this.emit('request', req);
      if (!req.unknown && code === BackendReq.CONFIG_CHANGE_MSG) this.emit('config-change');
    } finally {
      closeAll(m.fds);
    }
    if (!m.header.needReply) return;
    const ok = !req.unknown && code === BackendReq.CONFIG_CHANGE_MSG;
    return this.channel.send(encodeU64Reply(code, ok ? 0 : 1)).catch((e: Error) => {
      throw new Error(`reply to ${backendRequestName(code)}: ${e.message}`);
    });
  }

  close(): void {
    this.channel.close();
  }
}

function closeAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // Already closed by a listener that kept it is the listener's business.
    }
  }
}
