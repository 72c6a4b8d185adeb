// The host core alone, for bench/blk-c.ts: the TypeScript null test device in "zero" mode as a
// --device-module (the CLI passes a module no options). It answers every request with zeros
// of its writable length, so a virtio-blk request's status byte reads 0 (OK) and the host does
// no storage work: what is measured is the ring path (pop, batch, used-ring update, notify).
// The zeros are one shared buffer per length (the host only reads responses): the test device
// allocates a fresh one per request, ~0.5 us of the measured CPU that is no part of the host.
import type { DeviceFactory, DeviceRequest, DeviceResponse } from '../host/device/device.ts';
import nullDevice from '../test/devices/null-device.ts';

const factory: DeviceFactory = (raw) => {
  const dev = nullDevice({ ...(raw as object), mode: 'zero' });
  const zeros = new Map<number, DeviceResponse>();
  dev.process = (_q: number, reqs: readonly DeviceRequest[]): DeviceResponse[] => {
    const out: DeviceResponse[] = new Array(reqs.length);
    for (let i = 0; i < reqs.length; i++) {
      const n = reqs[i].writableLen;
      let r = zeros.get(n);
      if (r === undefined) {
        r = { data: new Uint8Array(n) };
        if (zeros.size < 64) zeros.set(n, r);
      }
      out[i] = r;
    }
    return out;
  };
  return dev;
};
export default factory;
