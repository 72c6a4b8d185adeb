// --print-capabilities: the JSON object the vhost-user "back-end program conventions" define
// (QEMU docs/interop/vhost-user.json), so libvirt can match this binary to a device type.
import type { DeviceInfo } from '../device/device.ts';

/** VHostUserBackendType names by virtio device id. */
const TYPES: Record<number, string> = {
  1: 'net',
  2: 'block',
  3: 'console',
  4: 'rng',
  5: 'balloon',
  7: 'rproc-serial',
  9: '9p',
  16: 'gpu',
  18: 'input',
  19: 'vsock',
  20: 'crypto',
  26: 'fs',
};

export interface Capabilities {
  type: string;
  features: string[];
}

export function capabilitiesFor(info: DeviceInfo): Capabilities {
  const type = TYPES[info.deviceId];
  if (type === undefined) {
    throw new Error(`virtio device id ${info.deviceId} (${info.name}) has no vhost-user back-end type name to report`);
  }
  // Features name command-line options (VHostUserBackendBlockFeature): we have --read-only;
  // 'blk-file' would promise a --blk-file option, and ours is spelled --storage.
  return { type, features: type === 'block' ? ['read-only'] : [] };
}
