// A front-end with none of the driver's manners, for hostile-input tests: a bare message
// channel on the host's socket, so a test can send what no well-behaved front-end would.
import { native } from '../../host/native/index.ts';
import { MessageChannel } from '../../host/protocol/channel.ts';
import { encodeRequest } from '../../host/protocol/codec.ts';
import type { FrontendRequest, RawMessage } from '../../host/protocol/messages.ts';
import { hasReply } from '../../host/protocol/requests.ts';

export interface RawFrontend {
  ch: MessageChannel;
  /** Resolves with the channel's close reason once the host hangs up. */
  closed: Promise<string | null>;
  send(bytes: Uint8Array, fds?: number[]): Promise<void>;
  /**
   * Sends `req`; waits for a reply when `expectReply`: by default when NEED_REPLY is set or
   * the request always has one (GET_FEATURES, GET_VRING_BASE, ...).
   */
  request(req: FrontendRequest, needReply?: boolean, expectReply?: boolean): Promise<RawMessage | null>;
}

export function connectRaw(path: string): RawFrontend {
  const fd = native.connectUnix(path);
  let onClose!: (r: string | null) => void;
  const closed = new Promise<string | null>((r) => (onClose = r));
  const ch = new MessageChannel(fd, { codes: 'backend', onClose: (r) => onClose(r) });
  return {
    ch,
    closed,
    send: (bytes, fds = []) => ch.send(bytes, fds),
    request(req, needReply = false, expectReply = needReply || hasReply(req.code)) {
      const e = encodeRequest(req, needReply);
      return ch.request(e.bytes, e.fds, expectReply);
    },
  };
}
