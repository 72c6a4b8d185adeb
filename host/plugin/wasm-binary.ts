// Just enough of the WebAssembly binary format to tell components from core modules and
// to put a ceiling on a core module's linear memory before it is compiled. Worker
// resourceLimits do not bound wasm memory; a declared maximum does (memory.grow fails,
// malloc returns NULL, the plugin traps instead of eating the host).

const MAGIC = [0x00, 0x61, 0x73, 0x6d];
const PAGE = 65536;
const MEMORY_SECTION = 5;

export type BinaryKind = 'component' | 'core-module' | 'unknown';

export function binaryKind(bytes: Uint8Array): BinaryKind {
  if (bytes.length < 8 || MAGIC.some((b, i) => bytes[i] !== b)) return 'unknown';
  // Core modules are version 1, layer 0; components carry layer 1 in bytes 6-7.
  if (bytes[4] === 1 && bytes[5] === 0 && bytes[6] === 0 && bytes[7] === 0) return 'core-module';
  if (bytes[6] === 1 && bytes[7] === 0) return 'component';
  return 'unknown';
}

function readLeb(bytes: Uint8Array, pos: number): [value: number, next: number] {
  let value = 0;
  let shift = 0;
  for (;;) {
    if (pos >= bytes.length) throw new Error('truncated LEB128');
    const b = bytes[pos++];
    value += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [value, pos];
    shift += 7;
    if (shift > 35) throw new Error('LEB128 too long for u32');
  }
}

function leb(value: number): number[] {
  const out: number[] = [];
  do {
    let b = value & 0x7f;
    value = Math.floor(value / 128);
    if (value !== 0) b |= 0x80;
    out.push(b);
  } while (value !== 0);
  return out;
}

function rewriteMemorySection(body: Uint8Array, maxPages: number): number[] {
  let [count, pos] = readLeb(body, 0);
  const out = leb(count);
  while (count-- > 0) {
    const flags = body[pos++];
    if (flags & 0x04) throw new Error('64-bit memories are not supported');
    let min: number;
    [min, pos] = readLeb(body, pos);
    let max = Infinity;
    if (flags & 0x01) [max, pos] = readLeb(body, pos);
    if (min > maxPages) {
      throw new Error(`needs ${min * PAGE} bytes of memory at start, limit is ${maxPages * PAGE}`);
    }
    out.push(flags | 0x01, ...leb(min), ...leb(Math.min(max, maxPages)));
  }
  return out;
}

/**
 * A copy of a core module whose defined memories cannot grow past `limitBytes`.
 * Modules that define no memory come back unchanged.
 */
export function capMemory(module: Uint8Array, limitBytes: number): Uint8Array {
  if (binaryKind(module) !== 'core-module') throw new Error('not a core wasm module');
  const maxPages = Math.floor(limitBytes / PAGE);
  if (maxPages < 1) throw new Error(`memory limit ${limitBytes} is below one wasm page`);
  let pos = 8;
  while (pos < module.length) {
    const id = module[pos];
    const [size, bodyStart] = readLeb(module, pos + 1);
    const bodyEnd = bodyStart + size;
    if (bodyEnd > module.length) throw new Error('truncated section');
    if (id === MEMORY_SECTION) {
      const body = rewriteMemorySection(module.subarray(bodyStart, bodyEnd), maxPages);
      const head = [MEMORY_SECTION, ...leb(body.length)];
      const out = new Uint8Array(pos + head.length + body.length + (module.length - bodyEnd));
      out.set(module.subarray(0, pos), 0);
      out.set(head, pos);
      out.set(body, pos + head.length);
      out.set(module.subarray(bodyEnd), pos + head.length + body.length);
      return out;
    }
    pos = bodyEnd;
  }
  return module;
}
