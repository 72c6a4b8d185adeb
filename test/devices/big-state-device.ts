// A TypeScript device with a large serialized state, for migration tests and benchmarks. It
// answers each request with an 8-byte sequence number (requests processed so far, counting from
// the loaded state) followed by the request's readable bytes, so a test can see which back-end
// served a request and that the count carried over.
//
// State = 32-byte header (magic "BIGS", version 1, processed u64, pattern length u64) + a pattern
// of N bytes: 4 KiB blocks of seeded pseudo-random bytes whose first 8 bytes are the block
// number ^ seed. It is generated on the fly by getState and checked on the fly by setState, so
// neither side ever holds the whole state. A mismatch is only reported by finishLoad (the host's
// container checksum must be what catches corruption first).
//
// Configured by environment (device modules get no command-line options):
//   VHOST_WASM_TEST_STATE_BYTES   pattern size (default 4 MiB)
//   VHOST_WASM_TEST_DEVICE_NAME   identity name (default big-state-test)
//   VHOST_WASM_TEST_DEVICE_VERSION identity version (default 1.0.0)
//   VHOST_WASM_TEST_DEVICE_ID     virtio device id (default 2)
//   VHOST_WASM_TEST_SEED          pattern seed (default 1)
//   VHOST_WASM_TEST_EXTRA_SECTION_BYTES  if set, a host-held-resource-style worker section
//                                 "scratch" (id 0x100) of that many pattern bytes (seed + 1000)
import type { DeviceAction, DeviceEvent, DeviceFactory, StateChunk, VirtioDevice } from '../../host/device/device.ts';
import type { WorkerStateSection } from '../../host/migration/section.ts';
import { BackingTable, storageIoBacking } from '../../host/io/backing-table.ts';
import { MemoryBacking } from '../../host/storage/memory.ts';

/** Readable bytes the device sees of a request; longer payloads are echoed through its scratch disk. */
const PREFIX = 4096;
/** Scratch disk bytes per request id (and so the most it echoes); ids stay below the ring size, 256. */
const SLOT = 64 * 1024;

const HEADER = 32;
const BLOCK = 4096;
const MAGIC = 0x53474942; // "BIGS"

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${v} is not a byte count`);
  return n;
}

/** Pattern bytes [offset, offset+out.length) for a seed (offset relative to the pattern start). */
export function patternInto(out: Uint8Array, offset: number, seed: number, base: Buffer, scratch: Buffer): void {
  let o = 0;
  while (o < out.length) {
    const pos = offset + o;
    const blk = Math.floor(pos / BLOCK);
    const inBlk = pos - blk * BLOCK;
    base.copy(scratch, 0, 0, BLOCK);
    scratch.writeUInt32LE((blk ^ seed) >>> 0, 0);
    scratch.writeUInt32LE(Math.floor(blk / 2 ** 32) >>> 0, 4);
    const n = Math.min(BLOCK - inBlk, out.length - o);
    out.set(scratch.subarray(inBlk, inBlk + n), o);
    o += n;
  }
}

export function patternBase(seed: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < BLOCK; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

const factory: DeviceFactory = () => {
  const patternLen = envInt('VHOST_WASM_TEST_STATE_BYTES', 4 << 20);
  const seed = envInt('VHOST_WASM_TEST_SEED', 1);
  const base = patternBase(seed);
  const scratch = Buffer.alloc(BLOCK);
  let processed = 0;

  // Load in progress.
  let loadHeader = Buffer.alloc(HEADER);
  let loadNext = 0;
  let loadMismatch = 0;
  let loadPatternLen = -1;

  const header = (): Buffer => {
    const h = Buffer.alloc(HEADER);
    h.writeUInt32LE(MAGIC, 0);
    h.writeUInt32LE(1, 4);
    h.writeBigUInt64LE(BigInt(processed), 8);
    h.writeBigUInt64LE(BigInt(patternLen), 16);
    return h;
  };

  const resetLoad = () => {
    loadHeader = Buffer.alloc(HEADER);
    loadNext = 0;
    loadMismatch = 0;
    loadPatternLen = -1;
  };

  const extraBytes = process.env.VHOST_WASM_TEST_EXTRA_SECTION_BYTES === undefined ? -1 : envInt('VHOST_WASM_TEST_EXTRA_SECTION_BYTES', 0);
  const xSeed = seed + 1000;
  const xBase = patternBase(xSeed);
  let xMismatch = 0;
  let xLoaded = 0;
  const scratchSection: WorkerStateSection = {
    id: 0x100,
    name: 'scratch',
    size: () => extraBytes,
    read(offset, len) {
      const out = new Uint8Array(len);
      patternInto(out, offset, xSeed, xBase, scratch);
      return out;
    },
    beginLoad(size) {
      if (size !== extraBytes) throw new Error(`scratch is ${extraBytes} bytes here, the state has ${size}`);
      xMismatch = 0;
      xLoaded = 0;
    },
    write(offset, chunk) {
      const expected = new Uint8Array(chunk.length);
      patternInto(expected, offset, xSeed, xBase, scratch);
      if (Buffer.compare(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length), Buffer.from(expected.buffer)) !== 0) xMismatch++;
      xLoaded = offset + chunk.length;
    },
    finish: () => (xMismatch > 0 ? 'scratch pattern mismatch' : xLoaded !== extraBytes ? 'scratch incomplete' : null),
    abort: () => {
      xMismatch = 0;
      xLoaded = 0;
    },
  };

  // Echoing a payload longer than the prefix: its bytes go to the request's slot of a memory
  // disk (a transfer, run before the reads) and come back from it (a backing-read piece), in
  // one answer: the host moves them, the device never sees them.
  const backings = new BackingTable(storageIoBacking(new MemoryBacking(256 * SLOT, false)));
  const dev: VirtioDevice & { identity: { name: string; version: string }; stateSections(): WorkerStateSection[]; backings: BackingTable } = {
    backings,
    stateSections: () => (extraBytes >= 0 ? [scratchSection] : []),
    identity: {
      name: process.env.VHOST_WASM_TEST_DEVICE_NAME || 'big-state-test',
      version: process.env.VHOST_WASM_TEST_DEVICE_VERSION || '1.0.0',
    },
    info: {
      deviceId: envInt('VHOST_WASM_TEST_DEVICE_ID', 2),
      name: 'big-state-test',
      numQueues: 1,
      maxQueueSize: 256,
      features: 0n,
      configSize: 8,
      prefixLen: 4096,
      queuesIndependent: false,
    },
    readConfig: (offset, size) => new Uint8Array(8).slice(offset, offset + size),
    writeConfig: () => {},
    activate: () => {},
    reset: () => {
      processed = 0;
      resetLoad();
    },
    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      const out: DeviceAction[] = [];
      for (const e of events) {
        if (e.kind !== 'request') continue;
        const r = e.request;
        // The request count so far, then the readable bytes it sees (its prefix) echoed.
        const head = Buffer.alloc(Math.min(8, r.writableLen));
        if (head.length === 8) head.writeBigUInt64LE(BigInt(processed), 0);
        processed++;
        const room = Math.max(0, r.writableLen - 8);
        if (r.readableLen <= PREFIX) {
          const echo = r.prefix.subarray(0, Math.min(r.prefix.length, room));
          out.push({ kind: 'answer', answer: { id: r.id, transfers: [], ops: [], reply: [{ kind: 'bytes', bytes: head }, { kind: 'bytes', bytes: echo }], lengthAt: null, barrier: false } });
          continue;
        }
        const to = { backing: 0, offset: r.id * SLOT, len: Math.min(r.readableLen, room, SLOT) };
        out.push({ kind: 'answer', answer: { id: r.id, transfers: [{ source: 0, to }], ops: [], reply: [{ kind: 'bytes', bytes: head }, { kind: 'backing-read', extent: to }], lengthAt: null, barrier: false } });
      }
      return out;
    },
    getState(offset: number, size: number): StateChunk {
      const total = HEADER + patternLen;
      const n = Math.max(0, Math.min(size, total - offset));
      const out = new Uint8Array(n);
      let o = 0;
      if (offset < HEADER && n > 0) {
        const h = header();
        const k = Math.min(HEADER - offset, n);
        out.set(h.subarray(offset, offset + k), 0);
        o = k;
      }
      if (o < n) patternInto(out.subarray(o), offset + o - HEADER, seed, base, scratch);
      return { bytes: out, remaining: total - offset - n };
    },
    setState(offset: number, chunk: Uint8Array): void {
      if (offset === 0) resetLoad();
      if (offset !== loadNext) throw new Error(`setState at ${offset}, expected ${loadNext}`);
      let o = 0;
      if (offset < HEADER) {
        const k = Math.min(HEADER - offset, chunk.length);
        loadHeader.set(chunk.subarray(0, k), offset);
        o = k;
        if (offset + k === HEADER) {
          if (loadHeader.readUInt32LE(0) !== MAGIC || loadHeader.readUInt32LE(4) !== 1) throw new Error('not a big-state-test v1 state');
          loadPatternLen = Number(loadHeader.readBigUInt64LE(16));
        }
      }
      if (o < chunk.length) {
        const rest = chunk.subarray(o);
        const expected = new Uint8Array(rest.length);
        patternInto(expected, offset + o - HEADER, seed, base, scratch);
        if (Buffer.compare(Buffer.from(rest.buffer, rest.byteOffset, rest.length), Buffer.from(expected.buffer)) !== 0) loadMismatch++;
      }
      loadNext = offset + chunk.length;
    },
    finishLoad(): string | null {
      if (loadPatternLen < 0) return 'state ended inside its header';
      if (loadNext !== HEADER + loadPatternLen) return `state has ${loadNext} bytes, its header says ${HEADER + loadPatternLen}`;
      if (loadMismatch > 0) return `${loadMismatch} chunk(s) of the pattern did not match`;
      processed = Number(loadHeader.readBigUInt64LE(8));
      resetLoad();
      return null;
    },
  };
  return dev;
};

export default factory;
