// A request the front-end got wrong: its reply (if any) reports failure, and the connection
// stays up.

import { VhostWasmError } from '../errors.ts';

export class RequestError extends VhostWasmError {
  static override readonly code = 'ERR_REQUEST_REFUSED';
  override name = 'RequestError';
}

/** A guest address or size as a number, refused past 2^53 (no mapping can reach it). */
export function toNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RequestError(`${what} 0x${v.toString(16)} is beyond 2^53, outside any memory this host can map`);
  return Number(v);
}
