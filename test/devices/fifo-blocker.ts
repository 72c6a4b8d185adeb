// A TypeScript device that gets its worker stuck in a system call, as a plugin could through a
// host import that blocks (the fs share opening a FIFO, say): on a request whose bytes start
// with "boom" it opens `fifo` for reading, which blocks in open() until a writer comes, and
// worker.terminate() cannot interrupt that. Otherwise it answers every request with its
// writable length of 0x5a, like the plugin fixtures (test/fixtures/plugins/bad.c).
import { openSync } from 'node:fs';
import type { DeviceFactory, DeviceRequest, DeviceResponse } from '../../host/device/device.ts';

const factory: DeviceFactory = (raw) => {
  const fifo = (raw as { fifo?: unknown }).fifo;
  if (typeof fifo !== 'string') throw new Error('fifo-blocker needs options.fifo, the path of a FIFO');
  const boom = (r: DeviceRequest) => r.readable.length > 0 && Buffer.from(r.readable[0].subarray(0, 4)).toString() === 'boom';
  return {
    info: { deviceId: 42, name: 'fifo-blocker', numQueues: 1, maxQueueSize: 256, features: 1n, configSize: 4 },
    readConfig: (_offset, size) => new Uint8Array(size),
    writeConfig: () => {},
    activate: () => {},
    reset: () => {},
    process(_q: number, reqs: readonly DeviceRequest[]): DeviceResponse[] {
      if (reqs.some(boom)) openSync(fifo, 'r'); // blocks in open(2): no writer ever comes
      return reqs.map((r) => ({ data: new Uint8Array(r.writableLen).fill(0x5a) }));
    },
    getState: () => ({ bytes: new Uint8Array(0), remaining: 0 }),
    setState: () => {},
    finishLoad: () => null,
  };
};

export default factory;
