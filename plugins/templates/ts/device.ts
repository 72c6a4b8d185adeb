// A minimal device to start from: one queue; each request is answered with its first bytes
// (up to 256, the prefix the host shows the device) reversed. It counts the requests it
// served, shows the count in its 8-byte config space and saves it as its state. Device id 42
// has no QEMU device; pick a real virtio id (docs/writing-a-ts-plugin.md) to run under QEMU.
import { answer, bytes, defineDevice, log } from '@vhost-wasm/sdk';

const PREFIX = 256;
let served = 0n;

function counter(): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, served, true);
  return out;
}

export const device = defineDevice({
  name: 'my-device',
  version: '0.1.0',
  info: { deviceId: 42, numQueues: 1, maxQueueSize: 256, prefixLen: PREFIX, configSize: 8 },
  config: counter,
  activate() {
    log.info('my-device activated');
  },
  reset() {
    served = 0n;
  },
  request(r) {
    // The host shows at most min(readableLen, PREFIX) bytes; the reply must fit writableLen.
    const reply = r.prefix.slice(0, r.writableLen).reverse();
    served++;
    return answer(r.id, [bytes(reply)]);
  },
  state: {
    save: counter,
    load(s) {
      if (s.length !== 8) throw new Error(`state is ${s.length} bytes, expected 8`);
      served = new DataView(s.buffer, s.byteOffset).getBigUint64(0, true);
    },
    maxBytes: 8,
  },
});
