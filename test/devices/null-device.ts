// A TypeScript device for exercising the host core: device id 2 shape (one queue), answers
// every request with `reply` bytes: by default the request's readable bytes echoed back (so
// tests can check data moved both ways), or zeros of the writable length ("null").
import type { DeviceFactory, DeviceRequest, DeviceResponse, VirtioDevice } from '../../host/device/device.ts';

export interface NullDeviceOptions {
  mode?: 'echo' | 'zero' | 'none';
  numQueues?: number;
  maxQueueSize?: number;
  /** Milliseconds to spin inside process() (watchdog tests). */
  spinMs?: number;
  /** Throw from process() (device-failure tests). */
  throwOnProcess?: boolean;
  /** Return more bytes than the writable space (validation tests). */
  overflow?: boolean;
  /** getState answers with a Buffer view of state the device keeps (as a device may). */
  stateView?: boolean;
}

/**
 * VHOST_WASM_TEST_HANG_ON=TEXT: process() never returns for a batch holding a request whose
 * readable bytes start with TEXT (a back-end to kill with requests in flight; the CLI passes a
 * module no options, so it comes from the environment).
 */
const hangOn = process.env.VHOST_WASM_TEST_HANG_ON ? new TextEncoder().encode(process.env.VHOST_WASM_TEST_HANG_ON) : null;

function startsWith(r: DeviceRequest, prefix: Uint8Array): boolean {
  const first = r.readable[0];
  return first !== undefined && first.length >= prefix.length && prefix.every((b, i) => first[i] === b);
}

const factory: DeviceFactory = (raw) => {
  const o = raw as NullDeviceOptions;
  const mode = o.mode ?? 'echo';
  const config = new Uint8Array(16);
  new DataView(config.buffer).setUint32(0, 0xc0ffee, true);
  let processed = 0;
  const kept = Buffer.alloc(8);
  const dev: VirtioDevice = {
    info: {
      deviceId: 2,
      name: 'null-test',
      numQueues: o.numQueues ?? 1,
      maxQueueSize: o.maxQueueSize ?? 1024,
      features: 0n,
      configSize: config.length,
    },
    readConfig: (offset, size) => config.slice(offset, offset + size),
    writeConfig: (offset, data) => config.set(data, offset),
    activate: () => {},
    reset: () => {
      processed = 0;
    },
    process(_q: number, reqs: readonly DeviceRequest[]): DeviceResponse[] {
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
        if (o.overflow) return { data: new Uint8Array(r.writableLen + 1) };
        if (mode === 'none') return { data: new Uint8Array(0) };
        if (mode === 'zero') return { data: new Uint8Array(r.writableLen) };
        const out = new Uint8Array(r.writableLen);
        let off = 0;
        for (const b of r.readable) {
          if (off >= out.length) break;
          const n = Math.min(b.length, out.length - off);
          out.set(b.subarray(0, n), off);
          off += n;
        }
        return { data: out.subarray(0, Math.min(off, out.length)) };
      });
    },
    getState: (offset, size) => {
      const all = o.stateView ? kept : new Uint8Array(8);
      new DataView(all.buffer, all.byteOffset).setUint32(0, processed, true);
      const bytes = o.stateView ? kept.subarray(offset, offset + size) : all.slice(offset, offset + size);
      return { bytes, remaining: Math.max(0, all.length - offset - bytes.length) };
    },
    setState: () => {},
    finishLoad: () => null,
  };
  return dev;
};

export default factory;
