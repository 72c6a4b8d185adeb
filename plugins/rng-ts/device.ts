// virtio-rng (device id 4) in TypeScript: the same device as plugins/rng/rng.c, for the SDK's
// first real device and for comparing call costs with C (docs/BENCHMARKS.md). Each request is
// answered with random bytes from the host's entropy grant, as many as it can hold (capped
// so one greedy driver buffer cannot make the plugin allocate without bound); prefix-len 0,
// so the host copies nothing of the request into the plugin.
//
// State: rng.c's layout: "VRNG", a format version byte, 3 reserved zero bytes, then the
// number of requests served as a little-endian u64.
import { answer, bytes, defineDevice, entropy, log, type Action, type Event } from '@vhost-wasm/sdk';

const STATE_VERSION = 1;
const STATE_SIZE = 16;
const MAX_RESPONSE = 64 * 1024;
/** One entropy call per batch, in blocks under the host's 1 MiB per-call cap. */
const ENTROPY_BLOCK = 256 * 1024;

let served = 0n;

function answerAll(events: Event[]): Action[] {
  let total = 0;
  for (const e of events) {
    if (e.tag !== 'request') throw new Error(`virtio-rng got a ${e.tag} event: it holds nothing and does no I/O`);
    if (e.val.queue !== 0) throw new Error(`virtio-rng has only queue 0 (request on queue ${e.val.queue})`);
    total += Math.min(e.val.writableLen, MAX_RESPONSE);
  }
  const out: Action[] = [];
  let block: Uint8Array = new Uint8Array(0);
  let used = 0;
  for (const e of events) {
    const r = (e as Extract<Event, { tag: 'request' }>).val;
    const len = Math.min(r.writableLen, MAX_RESPONSE);
    if (block.length - used < len) {
      // Whatever the rest of the batch needs, up to one block (a request is at most 64 KiB).
      block = entropy.fill(Math.min(total, ENTROPY_BLOCK));
      used = 0;
    }
    out.push(answer(r.id, len === 0 ? [] : [bytes(block.subarray(used, used + len))]));
    used += len;
    total -= len;
    served++;
  }
  return out;
}

export const device = defineDevice({
  name: 'rng-ts',
  version: '0.2.0',
  info: { deviceId: 4, numQueues: 1, maxQueueSize: 1024, prefixLen: 0, queuesIndependent: true },
  activate(acked) {
    if (acked !== 0n) throw new Error('virtio-rng has no device features to ack');
    log.info('virtio-rng (TypeScript) activated');
  },
  reset() {
    served = 0n;
  },
  handle: answerAll,
  state: {
    save() {
      const s = new Uint8Array(STATE_SIZE);
      s.set([0x56, 0x52, 0x4e, 0x47, STATE_VERSION]); // "VRNG", version
      new DataView(s.buffer).setBigUint64(8, served, true);
      return s;
    },
    load(s) {
      if (s.length !== STATE_SIZE) throw new Error(`state is ${s.length} bytes, expected ${STATE_SIZE}`);
      if (String.fromCharCode(s[0], s[1], s[2], s[3]) !== 'VRNG') throw new Error('state does not start with VRNG');
      if (s[4] !== STATE_VERSION) throw new Error(`state version ${s[4]}, this device reads ${STATE_VERSION}`);
      served = new DataView(s.buffer, s.byteOffset).getBigUint64(8, true);
    },
    maxBytes: STATE_SIZE,
  },
});
