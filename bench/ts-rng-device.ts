// virtio-rng written in plain TypeScript behind the same seam as the rng plugin
// (plugins/rng/rng.c): same info, same per-request cap, same entropy source shape (one draw
// per batch from the host's own entropy pool), same state format.
// bench/plugin-call.ts compares the two; it also loads as a --device-module.
import { EntropyPool } from '../host/plugin/entropy-pool.ts';
import type { DeviceAction, DeviceEvent, DeviceFactory, StateChunk, VirtioDevice } from '../host/device/device.ts';

const MAX_RESPONSE = 64 * 1024;
const STATE_SIZE = 16;

const factory: DeviceFactory = () => {
  const pool = new EntropyPool();
  let served = 0n;
  let loading = new Uint8Array(0);

  const encode = (): Uint8Array => {
    const s = new Uint8Array(STATE_SIZE);
    s.set([0x56, 0x52, 0x4e, 0x47, 1]); // "VRNG", version 1
    new DataView(s.buffer).setBigUint64(8, served, true);
    return s;
  };

  const dev: VirtioDevice = {
    info: { deviceId: 4, name: 'rng-ts', numQueues: 1, maxQueueSize: 1024, features: 0n, configSize: 0, prefixLen: 0, queuesIndependent: true },
    readConfig: () => new Uint8Array(0),
    writeConfig: () => {},
    // The runner passes transport bits too (VERSION_1, EVENT_IDX, ...); only device bits matter.
    activate: (acked) => {
      if ((acked & 0xffffffn) !== 0n) throw new Error('virtio-rng has no device features to ack');
    },
    reset: () => {
      served = 0n;
      loading = new Uint8Array(0);
    },
    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      let total = 0;
      for (const e of events) {
        if (e.kind !== 'request') continue;
        if (e.request.queue !== 0) throw new Error('virtio-rng has only queue 0');
        total += Math.min(e.request.writableLen, MAX_RESPONSE);
      }
      const block = pool.take(total);
      let off = 0;
      const out: DeviceAction[] = [];
      for (const e of events) {
        if (e.kind !== 'request') continue;
        const len = Math.min(e.request.writableLen, MAX_RESPONSE);
        out.push({ kind: 'answer', answer: { id: e.request.id, transfers: [], ops: [], reply: [{ kind: 'bytes', bytes: block.slice(off, off + len) }], lengthAt: null, barrier: false } });
        off += len;
      }
      served += BigInt(out.length);
      return out;
    },
    getState(offset: number, size: number): StateChunk {
      const all = encode();
      const bytes = all.slice(offset, offset + size);
      return { bytes, remaining: Math.max(0, STATE_SIZE - offset - bytes.length) };
    },
    setState(offset: number, chunk: Uint8Array): void {
      if (offset === 0) loading = new Uint8Array(0);
      if (offset + chunk.length > STATE_SIZE) throw new Error('state longer than the rng state format');
      const next = new Uint8Array(offset + chunk.length);
      next.set(loading);
      next.set(chunk, offset);
      loading = next;
    },
    finishLoad(): string | null {
      if (loading.length !== STATE_SIZE) return 'state truncated';
      if (String.fromCharCode(...loading.subarray(0, 4)) !== 'VRNG' || loading[4] !== 1) return 'not an rng state';
      served = new DataView(loading.buffer, loading.byteOffset).getBigUint64(8, true);
      return null;
    },
  };
  return dev;
};

export default factory;
