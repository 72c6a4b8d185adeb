// Typed request -> typed reply over a MessageChannel, for the side that sends requests (the
// front-end on the main socket, the back-end on the back-end request socket).

import type { MessageChannel } from './channel.ts';
import { decodeBackendReply, decodeReply, encodeBackendRequest, encodeRequest, type DecodeOptions } from './codec.ts';
import { backendHasReply, hasReply } from './requests.ts';
import type { BackendRequest, FrontendRequest, RawMessage, Reply } from './messages.ts';
import { native } from '../native/index.ts';

/**
 * Sends `req` (the fds named in it ride along; the caller still owns and closes them after).
 * Resolves with the decoded reply when the request has one or `needReply` asked for an ack,
 * else with null once sent. A malformed reply rejects with ProtocolError after closing the
 * fds it carried; the fds of a good reply belong to the caller.
 */
export async function call(channel: MessageChannel, req: FrontendRequest, needReply = false, opts: DecodeOptions = {}): Promise<Reply | null> {
  const { bytes, fds } = encodeRequest(req, needReply, opts);
  const msg = await channel.request(bytes, fds, needReply || hasReply(req.code));
  return msg === null ? null : decoded(msg, (m) => decodeReply(req.code, m.header, m.payload, m.fds, opts));
}

/** The back-end's side of the back-end request socket. */
export async function callBackend(channel: MessageChannel, req: BackendRequest, needReply = false): Promise<Reply | null> {
  const { bytes, fds } = encodeBackendRequest(req, needReply);
  const msg = await channel.request(bytes, fds, needReply || backendHasReply(req.code));
  return msg === null ? null : decoded(msg, (m) => decodeBackendReply(req.code, m.header, m.payload, m.fds));
}

function decoded(msg: RawMessage, decode: (m: RawMessage) => Reply): Reply {
  try {
    return decode(msg);
  } catch (e) {
    for (const fd of msg.fds) {
      try {
        native.close(fd);
      } catch {
        // Best effort: the error being reported is the malformed reply.
      }
    }
    throw e;
  }
}
