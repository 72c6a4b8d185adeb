// A block-shaped TypeScript device for QEMU-facing tests: the null test device in 'zero' mode
// (every read returns zeros, every request's status byte is 0 = VIRTIO_BLK_S_OK) with a config
// space big enough for QEMU's vhost-user-blk, which reads the whole struct virtio_blk_config
// (57 bytes in QEMU 7.2) at realize and refuses to start on a shorter answer.
// Capacity: ZERO_BLK_SECTORS 512-byte sectors.
import type { DeviceFactory } from '../../host/device/device.ts';
import nullDevice from '../devices/null-device.ts';

export const ZERO_BLK_SECTORS = 8192; // 4 MiB
export const ZERO_BLK_CONFIG_SIZE = 64;

const factory: DeviceFactory = (options) => {
  const inner = nullDevice({ ...options, mode: 'zero' });
  const config = new Uint8Array(ZERO_BLK_CONFIG_SIZE);
  new DataView(config.buffer).setBigUint64(0, BigInt(ZERO_BLK_SECTORS), true);
  return {
    ...inner,
    info: { ...inner.info, name: 'zero-blk-test', configSize: config.length },
    readConfig: (offset, size) => config.slice(offset, offset + size),
    writeConfig: (offset, data) => config.set(data, offset),
  };
};

export default factory;
