// A TypeScript device that takes its worker down in the two ways no plugin call deadline
// covers, triggered by the first bytes of a request:
// - "boom": it opens `fifo` for reading, which blocks in open() until a writer comes (none
//   does), as a plugin could through a host import that blocks (the fs share opening a FIFO,
//   say); worker.terminate() cannot interrupt that.
// - "crash": it throws from a timer, an exception nothing in the worker catches, which ends
//   the worker thread (as a native callback that throws would).
// Otherwise it answers every request with its writable length of 0x5a, like the plugin
// fixtures (test/fixtures/plugins/bad.c).
import { openSync } from 'node:fs';
import type { DeviceAction, DeviceEvent, DeviceFactory, DeviceRequest } from '../../host/device/device.ts';

const factory: DeviceFactory = (raw) => {
  // From the options (multi-device-host.ts), or the environment (the CLI passes modules none).
  const fifo = (raw as { fifo?: unknown }).fifo ?? process.env.VHOST_WASM_TEST_FIFO;
  if (typeof fifo !== 'string') throw new Error('hostile-device needs options.fifo or VHOST_WASM_TEST_FIFO, the path of a FIFO');
  const starts = (r: DeviceRequest, word: string) => Buffer.from(r.prefix.subarray(0, word.length)).toString() === word;
  return {
    info: { deviceId: 42, name: 'hostile', numQueues: 1, maxQueueSize: 256, features: 1n, configSize: 4, prefixLen: 8, queuesIndependent: false },
    readConfig: (_offset, size) => new Uint8Array(size),
    writeConfig: () => {},
    activate: () => {},
    reset: () => {},
    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      const reqs = events.flatMap((e) => (e.kind === 'request' ? [e.request] : []));
      if (reqs.some((r) => starts(r, 'boom'))) openSync(fifo, 'r'); // blocks in open(2): no writer ever comes
      if (reqs.some((r) => starts(r, 'crash'))) {
        setTimeout(() => {
          throw new Error('hostile device crashed its worker');
        });
      }
      return reqs.map((r) => ({
        kind: 'answer',
        answer: { id: r.id, transfers: [], ops: [], reply: [{ kind: 'bytes', bytes: new Uint8Array(r.writableLen).fill(0x5a) }], lengthAt: null, barrier: false },
      }));
    },
    getState: () => ({ bytes: new Uint8Array(0), remaining: 0 }),
    setState: () => {},
    finishLoad: () => null,
  };
};

export default factory;
