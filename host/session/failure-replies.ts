// The answer a back-end gives when it refuses a request that always has a reply (one the
// front-end waits for whatever the flags say). Where the spec defines a failure form we send
// it: the front-end learns "no" and stays connected. Where it does not (GET_FEATURES,
// GET_VRING_BASE, ...: a bare value with no error encoding), any value we made up would be taken
// as the truth, so there is no reply and the session ends the connection instead.

import { deviceStateReplyValue, encodeConfigReply, encodeInflightReply, encodeReply, encodeU64Reply } from '../protocol/codec.ts';
import { Req } from '../protocol/requests.ts';
import type { DecodedRequest } from '../protocol/messages.ts';

/** Non-zero: the REPLY_ACK convention for "failed", used by every u64 status reply. */
const FAILED = 1;

/** SET_DEVICE_STATE_FD's "unsupported" error code (bits 0-7), with the no-fd bit. */
const DEVICE_STATE_UNSUPPORTED = 1;

export interface FailureReply {
  bytes: Uint8Array;
  /** How the front-end reads it, for the log line. */
  meaning: string;
}

/**
 * The failure reply to `req`, or null when its reply has no failure form. `req` must be a
 * request for which hasReply() is true.
 */
export function failureReply(req: DecodedRequest): FailureReply | null {
  switch (req.code) {
    case Req.SET_LOG_BASE:
    case Req.IOTLB_MSG:
    case Req.POSTCOPY_END:
    case Req.CHECK_DEVICE_STATE:
      // Spec: a u64 "zero on success, non-zero otherwise" (IOTLB_MSG, CHECK_DEVICE_STATE), an
      // acknowledgement (POSTCOPY_END, the LOG_SHMFD form of SET_LOG_BASE).
      return { bytes: encodeU64Reply(req.code, FAILED), meaning: 'u64 1 (failure)' };
    case Req.GET_SHARED_OBJECT:
      // Spec: the dma-buf fd "when the operation is successful, or no fd otherwise".
      return { bytes: encodeU64Reply(req.code, FAILED), meaning: 'no dma-buf fd (failure), u64 1' };
    case Req.GET_CONFIG:
      // Spec: an empty payload is the error answer.
      return { bytes: encodeConfigReply(null), meaning: 'empty config payload (failure)' };
    case Req.SET_DEVICE_STATE_FD:
      return { bytes: encodeU64Reply(req.code, deviceStateReplyValue(DEVICE_STATE_UNSUPPORTED, false)), meaning: 'error 1, no fd' };
    case Req.POSTCOPY_ADVISE:
      // The reply is the userfaultfd alone: a reply without it is how the front-end sees
      // failure (QEMU: "failed to get PostCopyAdvise reply fd"), and the VM keeps running.
      return { bytes: encodeReply(req.code), meaning: 'no userfaultfd (failure)' };
    case Req.GET_INFLIGHT_FD:
      // mmap size 0 and no fd: "this back-end keeps no inflight area". QEMU then runs the
      // device without inflight tracking, which is the truth for a back-end without it.
      return {
        bytes: encodeInflightReply({ mmapSize: 0n, mmapOffset: 0n, numQueues: req.inflight.numQueues, queueSize: req.inflight.queueSize }),
        meaning: 'inflight area of size 0, no fd',
      };
    case Req.CREATE_CRYPTO_SESSION: {
      // Spec: the session id, "0 or positive for success, negative for failure". QEMU up to 7.2
      // puts session_id first; 8.0+ puts op_code first and session_id last. The request's own
      // bytes come back with -1 in both places, so either layout reads a negative id.
      const out = req.session.slice();
      const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
      dv.setBigInt64(0, -1n, true);
      dv.setBigInt64(out.length - 8, -1n, true);
      return { bytes: encodeReply(req.code, out), meaning: 'session id -1 (failure)' };
    }
    default:
      return null;
  }
}
