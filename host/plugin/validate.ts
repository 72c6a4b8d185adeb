// Checks on what a plugin says about itself. A plugin is untrusted code: nothing it
// returns reaches the session unchecked.
import type { DeviceInfo } from '../device/device.ts';

export interface PluginIdentity {
  readonly name: string;
  readonly version: string;
}

/** Readable bytes of each request a device may see (WIT device-info.prefix-len). */
export const MAX_PREFIX_LEN = 4096;
/** vhost-user's GET_CONFIG carries at most 256 bytes. */
export const MAX_CONFIG_SIZE = 256;
/** Virtio transport and vhost bits (24-49) belong to the host, never to a device. */
const TRANSPORT_BITS = ((1n << 50n) - 1n) & ~((1n << 24n) - 1n);

function fail(what: string): never {
  throw new Error(what);
}

export function checkIdentity(raw: unknown): PluginIdentity {
  const id = raw as { name?: unknown; version?: unknown };
  if (typeof id?.name !== 'string' || !/^[a-z0-9][a-z0-9._-]{0,63}$/.test(id.name)) {
    fail(`identity name ${JSON.stringify(id?.name)} is not 1-64 of [a-z0-9._-]`);
  }
  if (typeof id.version !== 'string' || !/^[\x21-\x7e]{1,64}$/.test(id.version)) {
    fail(`identity version ${JSON.stringify(id.version)} is not 1-64 printable characters`);
  }
  return { name: id.name, version: id.version };
}

export function checkInfo(raw: unknown, name: string): DeviceInfo {
  const i = raw as Record<string, unknown>;
  const { deviceId, numQueues, maxQueueSize, features, configSize, prefixLen, queuesIndependent } = i;
  if (typeof deviceId !== 'number' || deviceId < 1 || deviceId > 0xffff) fail(`device id ${deviceId} out of range`);
  if (typeof numQueues !== 'number' || numQueues < 1) fail(`queue count ${numQueues} must be at least 1`);
  if (
    typeof maxQueueSize !== 'number' ||
    maxQueueSize < 1 ||
    maxQueueSize > 32768 ||
    (maxQueueSize & (maxQueueSize - 1)) !== 0
  ) {
    fail(`max queue size ${maxQueueSize} is not a power of two in 1..32768`);
  }
  if (typeof features !== 'bigint') fail('features are not a u64');
  if (features & TRANSPORT_BITS) {
    fail(`offers transport feature bits 0x${(features & TRANSPORT_BITS).toString(16)} (24-49 are the host's)`);
  }
  if (typeof configSize !== 'number' || configSize > MAX_CONFIG_SIZE) {
    fail(`config size ${configSize} exceeds ${MAX_CONFIG_SIZE}`);
  }
  if (typeof prefixLen !== 'number' || !Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > MAX_PREFIX_LEN) {
    fail(`prefix length ${prefixLen} is not in 0..${MAX_PREFIX_LEN}`);
  }
  if (typeof queuesIndependent !== 'boolean') fail('queues-independent is not a bool');
  return { deviceId, name, numQueues, maxQueueSize, features, configSize, prefixLen, queuesIndependent };
}
