// The host core alone, for bench/blk-c.ts: the TypeScript null test device in "zero" mode as a
// --device-module (the CLI passes a module no options). It answers every request with zeros
// of its writable length, so a virtio-blk request's status byte reads 0 (OK) and the host does
// no storage work: what is measured is the ring path (pop, batch, used-ring update, notify).
// Its answers are a `zeroes` piece each (the host fills the buffers), built without the test
// device's per-request closures; the empty transfer and op lists are shared, as the plugin
// adapter's are (host/plugin/direct-handle.ts).
import type { DeviceAction, DeviceEvent, DeviceFactory } from '../host/device/device.ts';
import nullDevice from '../test/devices/null-device.ts';

const NONE = Object.freeze([]) as readonly never[];

const factory: DeviceFactory = (raw) => {
  const dev = nullDevice({ ...(raw as object), mode: 'zero' });
  dev.handle = (events: readonly DeviceEvent[]): DeviceAction[] => {
    const out: DeviceAction[] = new Array(events.length);
    let n = 0;
    for (let i = 0; i < events.length; i++) {
      const e = events[i];
      if (e.kind !== 'request') continue;
      const len = e.request.writableLen;
      out[n++] = { kind: 'answer', answer: { id: e.request.id, transfers: NONE, ops: NONE, reply: len > 0 ? [{ kind: 'zeroes', len }] : [], lengthAt: null, barrier: false } };
    }
    out.length = n;
    return out;
  };
  return dev;
};
export default factory;
