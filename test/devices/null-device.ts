// A TypeScript device for exercising the host core: device id 2 shape (one queue), answers
// every request at once: by default with the request's readable bytes echoed back (so tests
// can check data moved both ways; it sees the first PREFIX_LEN of them, which is what it can
// echo), or zeros of the writable length ("zero"), or nothing ("none").
import type { DeviceAction, DeviceEvent, DeviceFactory, DeviceRequest, Piece, VirtioDevice } from '../../host/device/device.ts';

/** Readable bytes the device sees of each request, and so the most it echoes. */
export const PREFIX_LEN = 4096;

export interface NullDeviceOptions {
  mode?: 'echo' | 'zero' | 'none';
  numQueues?: number;
  maxQueueSize?: number;
  /** Milliseconds to spin inside process() (watchdog tests). */
  spinMs?: number;
  /** Throw from handle() (device-failure tests). */
  throwOnProcess?: boolean;
  /** Answer with more bytes than the writable space (validation tests). */
  overflow?: boolean;
}

/**
 * VHOST_WASM_TEST_HANG_ON=TEXT: process() never returns for a batch holding a request whose
 * readable bytes start with TEXT (a back-end to kill with requests in flight; the CLI passes a
 * module no options, so it comes from the environment).
 */
const hangOn = process.env.VHOST_WASM_TEST_HANG_ON ? new TextEncoder().encode(process.env.VHOST_WASM_TEST_HANG_ON) : null;

function startsWith(r: DeviceRequest, prefix: Uint8Array): boolean {
  return r.prefix.length >= prefix.length && prefix.every((b, i) => r.prefix[i] === b);
}

export const answer = (id: number, reply: Piece[]): DeviceAction => ({
  kind: 'answer',
  answer: { id, transfers: [], ops: [], reply, lengthAt: null, barrier: false },
});

const factory: DeviceFactory = (raw) => {
  const o = raw as NullDeviceOptions;
  const mode = o.mode ?? 'echo';
  const config = new Uint8Array(16);
  new DataView(config.buffer).setUint32(0, 0xc0ffee, true);
  let processed = 0;
  const dev: VirtioDevice = {
    info: {
      deviceId: 2,
      name: 'null-test',
      numQueues: o.numQueues ?? 1,
      maxQueueSize: o.maxQueueSize ?? 1024,
      features: 0n,
      configSize: config.length,
      prefixLen: mode === 'echo' ? PREFIX_LEN : 0,
      queuesIndependent: true,
    },
    readConfig: (offset, size) => config.slice(offset, offset + size),
    writeConfig: (offset, data) => config.set(data, offset),
    activate: () => {},
    reset: () => {
      processed = 0;
    },
    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      const reqs: DeviceRequest[] = [];
      for (const e of events) if (e.kind === 'request') reqs.push(e.request);
      if (o.spinMs) {
        const until = Date.now() + o.spinMs;
        while (Date.now() < until) {
          // burn CPU like a plugin stuck in a loop
        }
      }
      if (hangOn !== null && reqs.some((r) => startsWith(r, hangOn))) {
        for (;;) {
          // stuck until the process is killed
        }
      }
      if (o.throwOnProcess) throw new Error('null-test device was told to fail');
      processed += reqs.length;
      return reqs.map((r) => {
        if (o.overflow) return answer(r.id, [{ kind: 'zeroes', len: r.writableLen + 1 }]);
        if (mode === 'none') return answer(r.id, []);
        if (mode === 'zero') return answer(r.id, r.writableLen > 0 ? [{ kind: 'zeroes', len: r.writableLen }] : []);
        // The prefix is a view of guest memory for this call only: the host copies it into the
        // writable buffers before it returns to the ring.
        return answer(r.id, [{ kind: 'bytes', bytes: r.prefix.subarray(0, Math.min(r.prefix.length, r.writableLen)) }]);
      });
    },
    getState: (offset, size) => {
      const all = new Uint8Array(8);
      new DataView(all.buffer).setUint32(0, processed, true);
      const bytes = all.slice(offset, offset + size);
      return { bytes, remaining: Math.max(0, all.length - offset - bytes.length) };
    },
    setState: () => {},
    finishLoad: () => null,
  };
  return dev;
};

export default factory;
