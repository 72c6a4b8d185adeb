import { VhostWasmError } from '../errors.ts';

/** A network grant that cannot be served: a bad name, an MTU clash, a TAP interface that cannot be opened. */
export class NetworkConfigError extends VhostWasmError {
  static override readonly code = 'ERR_NETWORK_CONFIG';
  override readonly name = 'NetworkConfigError';
}
