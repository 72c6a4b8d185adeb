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
  return { type, features: FEATURES[type] ?? [] };
}

/**
 * What each feature promises, and why we may claim it:
 * - block 'read-only' (VHostUserBackendBlockFeature): a --read-only option exists. Not
 *   'blk-file': it promises a --blk-file option, and ours is spelled --storage.
 * - fs 'migrate-precopy' (VHostUserBackendFsFeature): the back-end's internal state migrates
 *   with precopy through SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE (docs/migration.md; the fs
 *   plugin saves its inode and file-handle tables). libvirt refuses to migrate a VM with a
 *   vhost-user-fs device whose back-end does not say this.
 * - fs 'separate-options': the back-end takes virtiofsd-rs's separate options
 *   (`--fd=N --shared-dir DIR`, `--xattr`, `--log-level debug`) instead of the C
 *   virtiofsd's `-o source=DIR,...`; without it libvirt writes `-o`, which we reject. Those
 *   of libvirt's separate options we lack (--cache, --sandbox, --thread-pool-size,
 *   --rlimit-nofile, --uid-map/--gid-map; only passed when the domain XML asks for them) stop
 *   start-up with a usage error naming the option, rather than being ignored.
 */
const FEATURES: Record<string, string[]> = {
  block: ['read-only'],
  fs: ['migrate-precopy', 'separate-options'],
};
