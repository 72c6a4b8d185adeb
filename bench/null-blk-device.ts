// The host core alone, for bench/blk-c.ts: the TypeScript null test device in "zero" mode as a
// --device-module (the CLI passes a module no options). It answers every request with zeros
// of its writable length, so a virtio-blk request's status byte reads 0 (OK) and the host does
// no storage work: what is measured is the ring path (pop, batch, used-ring update, notify).
import type { DeviceFactory } from '../host/device/device.ts';
import nullDevice from '../test/devices/null-device.ts';

const factory: DeviceFactory = (raw) => nullDevice({ ...(raw as object), mode: 'zero' });
export default factory;
