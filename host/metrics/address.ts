// Where the metrics endpoint listens, as an operator writes it (`serve --metrics`, the config's
// "metrics"): an IP address and port, or a Unix socket path.

import { isIP } from 'node:net';
import { VhostWasmError } from '../errors.ts';

export type MetricsAddress = { host: string; port: number } | { path: string };

export class MetricsAddressError extends VhostWasmError {
  static override readonly code = 'ERR_METRICS_ADDRESS';
  override name = 'MetricsAddressError';
}

const SYNTAX = 'give IP:PORT (such as 127.0.0.1:9464 or [::1]:9464; port 0 picks a free one, logged) or unix:PATH (an absolute path)';

/** `127.0.0.1:9464`, `[::1]:9464` or `unix:/run/vhost-wasm/metrics.sock`. */
export function parseMetricsAddress(text: string): MetricsAddress {
  if (text.includes('\0')) throw new MetricsAddressError(`"${JSON.stringify(text).slice(1, -1)}" contains a NUL byte: ${SYNTAX}`);
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (!path.startsWith('/')) throw new MetricsAddressError(`"${text}": the socket path must be absolute: ${SYNTAX}`);
    // sun_path holds 108 bytes with the terminating NUL.
    if (Buffer.byteLength(path) > 107) throw new MetricsAddressError(`"${text}": the socket path is ${Buffer.byteLength(path)} bytes, a Unix socket path can have at most 107`);
    return { path };
  }
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(text);
  if (m === null) throw new MetricsAddressError(`"${text}" is not an address: ${SYNTAX}`);
  const host = m[1] ?? m[2];
  const version = isIP(host);
  if (version === 0) throw new MetricsAddressError(`"${host}" is not an IP address (a host name is not resolved here): ${SYNTAX}`);
  if (m[1] !== undefined && version !== 6) throw new MetricsAddressError(`"${text}": brackets are for IPv6 addresses: ${SYNTAX}`);
  if (m[1] === undefined && version === 6) throw new MetricsAddressError(`"${text}": write an IPv6 address in brackets ([${host}]:PORT): ${SYNTAX}`);
  const port = Number(m[3]);
  if (port > 65535) throw new MetricsAddressError(`"${text}": port ${port} is above 65535`);
  return { host, port };
}

