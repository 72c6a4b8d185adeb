// One error type for everything a peer can get wrong on the wire, so the session can tell a
// protocol violation (reply error / close the connection) from a bug in our own code.

import { VhostWasmError } from '../errors.ts';

export class ProtocolError extends VhostWasmError {
  static override readonly code = 'ERR_PROTOCOL';
  /** The request code of the offending message, when the header got that far. */
  readonly request: number | undefined;

  constructor(message: string, request?: number) {
    super(message);
    this.name = 'ProtocolError';
    this.request = request;
  }
}
