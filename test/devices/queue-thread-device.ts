// A TypeScript device (the WIT 0.2 seam) for --queue-threads: it tells the front-end which
// thread and which instance served each request, so a test sees the rings spread over threads.
// Every answer is 12 literal bytes (cut to the writable length): the worker thread's id (u32
// LE), the queue (u32), and how many requests this instance has served since it was built
// (u32; a reset does not clear it, so a fresh instance is told from a reset one). Its state is
// that count.
// Triggered by the request's first readable bytes:
// - "fail": handle() throws: the device fails, its thread stays.
// - "crash": an exception nothing catches, from a timer: the thread dies.
// - "spin": loops for ever (the thread's watchdog kills it).
// - "hold" (with VHOST_WASM_TEST_HOLD=1): held, never answered (in flight until the host dies).
// The CLI passes a module no options: VHOST_WASM_TEST_QUEUES (default 4) and
// VHOST_WASM_TEST_INDEPENDENT ("0": the queues share state, --queue-threads must not split it).
import { threadId } from 'node:worker_threads';
import type { DeviceAction, DeviceEvent, DeviceFactory } from '../../host/device/device.ts';

const startsWith = (prefix: Uint8Array, word: string) => Buffer.from(prefix.subarray(0, word.length)).toString() === word;

const factory: DeviceFactory = () => {
  const numQueues = Number(process.env.VHOST_WASM_TEST_QUEUES ?? 4);
  const queuesIndependent = process.env.VHOST_WASM_TEST_INDEPENDENT !== '0';
  const hold = process.env.VHOST_WASM_TEST_HOLD === '1';
  let served = 0;
  let loading = new Uint8Array(0);
  return {
    info: { deviceId: 2, name: 'queue-threads-test', numQueues, maxQueueSize: 256, features: 0n, configSize: 4, prefixLen: 16, queuesIndependent },
    readConfig: (_offset, size) => new Uint8Array(size),
    writeConfig: () => {},
    activate: () => {},
    reset: () => {},
    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      const actions: DeviceAction[] = [];
      for (const e of events) {
        if (e.kind !== 'request') continue;
        const r = e.request;
        if (startsWith(r.prefix, 'fail')) throw new Error(`queue-threads-test was told to fail on queue ${r.queue}`);
        if (hold && startsWith(r.prefix, 'hold')) {
          actions.push({ kind: 'hold', id: r.id });
          continue;
        }
        if (startsWith(r.prefix, 'spin')) {
          for (;;) {
            // a device stuck in a loop: the watchdog's to end
          }
        }
        if (startsWith(r.prefix, 'crash')) {
          setTimeout(() => {
            throw new Error(`queue-threads-test crashed its thread on queue ${r.queue}`);
          });
        }
        served++;
        const out = new Uint8Array(12);
        const v = new DataView(out.buffer);
        v.setUint32(0, threadId, true);
        v.setUint32(4, r.queue, true);
        v.setUint32(8, served, true);
        actions.push({
          kind: 'answer',
          answer: { id: r.id, transfers: [], ops: [], reply: [{ kind: 'bytes', bytes: out.subarray(0, Math.min(12, r.writableLen)) }], lengthAt: null, barrier: false },
        });
      }
      return actions;
    },
    // State: the served count (u32 LE); a loaded one carries on from it.
    getState: (offset, size) => {
      const all = new Uint8Array(4);
      new DataView(all.buffer).setUint32(0, served, true);
      const bytes = all.slice(offset, offset + size);
      return { bytes, remaining: Math.max(0, all.length - offset - bytes.length) };
    },
    setState: (offset, chunk) => {
      const grown = new Uint8Array(offset + chunk.length);
      grown.set(loading.subarray(0, offset));
      grown.set(chunk, offset);
      loading = grown;
    },
    finishLoad: () => {
      if (loading.length !== 4) return `queue-threads-test state is 4 bytes, not ${loading.length}`;
      served = new DataView(loading.buffer, loading.byteOffset).getUint32(0, true);
      loading = new Uint8Array(0);
      return null;
    },
  };
};

export default factory;
