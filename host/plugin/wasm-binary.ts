// Just enough of the WebAssembly binary format to tell components from core modules, to
// read what a core module allocates when it is instantiated (its own memories and tables,
// not imported ones), and to rewrite those declarations with the maxima the host allows.
// Worker resourceLimits do not bound wasm memory; a declared maximum does (memory.grow
// fails, malloc returns NULL, the plugin traps instead of eating the host). Anything this
// parser does not understand is refused, never passed through uncapped.

const MAGIC = [0x00, 0x61, 0x73, 0x6d];
export const WASM_PAGE = 65536;

const SECTION = { custom: 0, type: 1, import: 2, function: 3, table: 4, memory: 5, global: 6, export: 7, start: 8, element: 9, code: 10, data: 11, dataCount: 12, tag: 13 } as const;
/** Where a section may sit in a core module; the export section we may add goes after global. */
const ORDER: Record<number, number> = { 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13 };

/** Export name prefix under which every memory a module defines is exported, so the host can see all of them. */
export const MEMORY_EXPORT_PREFIX = 'vhost-wasm:memory:';

export type BinaryKind = 'component' | 'core-module' | 'unknown';

export function binaryKind(bytes: Uint8Array): BinaryKind {
  if (bytes.length < 8 || MAGIC.some((b, i) => bytes[i] !== b)) return 'unknown';
  // Core modules are version 1, layer 0; components carry layer 1 in bytes 6-7.
  if (bytes[4] === 1 && bytes[5] === 0 && bytes[6] === 0 && bytes[7] === 0) return 'core-module';
  if (bytes[6] === 1 && bytes[7] === 0) return 'component';
  return 'unknown';
}

/** Initial and maximum size (pages for memories, elements for tables); max null = none declared. */
export interface Limits {
  min: number;
  max: number | null;
}

/** What instantiating one core module allocates (imports are someone else's allocation). */
export interface ModuleAllocations {
  memories: Limits[];
  tables: Limits[];
  importedMemories: number;
  importedTables: number;
}

class Reader {
  constructor(
    readonly bytes: Uint8Array,
    public pos = 0,
    readonly end = bytes.length,
  ) {}

  byte(): number {
    if (this.pos >= this.end) throw new Error('truncated');
    return this.bytes[this.pos++];
  }

  u32(): number {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      if (shift > 28) throw new Error('LEB128 too long for u32');
      const b = this.byte();
      value += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) break;
    }
    if (value > 0xffffffff) throw new Error('LEB128 value over u32');
    return value;
  }

  skip(n: number): void {
    if (n > this.end - this.pos) throw new Error('truncated');
    this.pos += n;
  }

  name(): void {
    this.skip(this.u32());
  }
}

/** Unsigned LEB128, as the binary format writes sizes, counts and indices. */
export function leb(value: number): number[] {
  const out: number[] = [];
  do {
    let b = value & 0x7f;
    value = Math.floor(value / 128);
    if (value !== 0) b |= 0x80;
    out.push(b);
  } while (value !== 0);
  return out;
}

/** Limits of a memory or table type; memory flags 0x02 (shared) pass, 64-bit ones do not. */
function readLimits(r: Reader, what: 'memory' | 'table'): Limits & { flags: number } {
  const flags = r.byte();
  const allowed = what === 'memory' ? 0x03 : 0x01;
  if (flags & ~allowed) {
    throw new Error(`${what} limits flags 0x${flags.toString(16)} are not supported (64-bit ${what}s cannot be capped here)`);
  }
  const min = r.u32();
  const max = flags & 0x01 ? r.u32() : null;
  return { flags, min, max };
}

/** Function-references and GC proposals encode ref types with prefixes this host's V8 does not enable; refuse them. */
function readRefType(r: Reader): number {
  const t = r.byte();
  if (t !== 0x70 && t !== 0x6f) throw new Error(`table element type 0x${t.toString(16)} is not supported`);
  return t;
}

export interface Section {
  id: number;
  start: number; // of the id byte
  bodyStart: number;
  end: number;
}

/** The sections of a core module or a component, in order, ids unchecked (they differ between the two). */
export function sectionsOf(binary: Uint8Array): Section[] {
  if (binaryKind(binary) === 'unknown') throw new Error('not a wasm module or component');
  const out: Section[] = [];
  const r = new Reader(binary, 8);
  while (r.pos < binary.length) {
    const start = r.pos;
    const id = r.byte();
    const size = r.u32();
    const bodyStart = r.pos;
    r.skip(size);
    out.push({ id, start, bodyStart, end: r.pos });
  }
  return out;
}

function sections(module: Uint8Array): Section[] {
  if (binaryKind(module) !== 'core-module') throw new Error('not a core wasm module');
  const out = sectionsOf(module);
  for (const { id } of out) if (id !== SECTION.custom && !(id in ORDER)) throw new Error(`unknown section id ${id}`);
  return out;
}

function parseImports(module: Uint8Array, s: Section): { memories: number; tables: number } {
  const r = new Reader(module, s.bodyStart, s.end);
  let memories = 0;
  let tables = 0;
  for (let n = r.u32(); n > 0; n--) {
    r.name();
    r.name();
    const kind = r.byte();
    if (kind === 0x00) r.u32();
    else if (kind === 0x01) {
      readRefType(r);
      readLimits(r, 'table');
      tables++;
    } else if (kind === 0x02) {
      readLimits(r, 'memory');
      memories++;
    } else if (kind === 0x03) {
      r.byte(); // value type: single-byte types only (prefixed ref types are refused by V8 here too)
      r.byte(); // mutability
    } else if (kind === 0x04) {
      r.byte();
      r.u32();
    } else throw new Error(`unknown import kind ${kind}`);
  }
  return { memories, tables };
}

function parseTables(module: Uint8Array, s: Section): Limits[] {
  const r = new Reader(module, s.bodyStart, s.end);
  const out: Limits[] = [];
  for (let n = r.u32(); n > 0; n--) {
    if (module[r.pos] === 0x40) throw new Error('tables with initializer expressions are not supported');
    readRefType(r);
    const { min, max } = readLimits(r, 'table');
    out.push({ min, max });
  }
  return out;
}

function parseMemories(module: Uint8Array, s: Section): Limits[] {
  const r = new Reader(module, s.bodyStart, s.end);
  const out: Limits[] = [];
  for (let n = r.u32(); n > 0; n--) {
    const { min, max } = readLimits(r, 'memory');
    out.push({ min, max });
  }
  return out;
}

export function moduleAllocations(module: Uint8Array): ModuleAllocations {
  const all = sections(module);
  const find = (id: number): Section | undefined => all.find((s) => s.id === id);
  const imp = find(SECTION.import);
  const imported = imp ? parseImports(module, imp) : { memories: 0, tables: 0 };
  const mem = find(SECTION.memory);
  const tab = find(SECTION.table);
  return {
    memories: mem ? parseMemories(module, mem) : [],
    tables: tab ? parseTables(module, tab) : [],
    importedMemories: imported.memories,
    importedTables: imported.tables,
  };
}

function rewriteLimits(r: Reader, what: 'memory' | 'table', cap: number): number[] {
  const { flags, min, max } = readLimits(r, what);
  if (min > cap) throw new Error(`${what} declares ${min} ${what === 'memory' ? 'pages' : 'elements'} at start, over its cap of ${cap}`);
  return [flags | 0x01, ...leb(min), ...leb(Math.min(max ?? cap, cap))];
}

/**
 * A copy of a core module whose defined memories and tables cannot grow past the given
 * caps (memory pages, table elements; one per defined memory/table, in order), and which
 * exports every memory it defines as `${MEMORY_EXPORT_PREFIX}N`, so the host can measure
 * memories the module keeps to itself.
 */
export function capModule(module: Uint8Array, memoryCaps: readonly number[], tableCaps: readonly number[]): Uint8Array {
  const all = sections(module);
  const alloc = moduleAllocations(module);
  if (memoryCaps.length !== alloc.memories.length || tableCaps.length !== alloc.tables.length) {
    throw new Error('caps do not match the module');
  }
  const replaced = new Map<Section, number[]>();
  const body = (s: Section): Reader => new Reader(module, s.bodyStart, s.end);

  const memSec = all.find((s) => s.id === SECTION.memory);
  if (memSec) {
    const r = body(memSec);
    const n = r.u32();
    const out = leb(n);
    for (let i = 0; i < n; i++) out.push(...rewriteLimits(r, 'memory', memoryCaps[i]));
    replaced.set(memSec, out);
  }
  const tabSec = all.find((s) => s.id === SECTION.table);
  if (tabSec) {
    const r = body(tabSec);
    const n = r.u32();
    const out = leb(n);
    for (let i = 0; i < n; i++) {
      const ref = readRefType(r);
      out.push(ref, ...rewriteLimits(r, 'table', tableCaps[i]));
    }
    replaced.set(tabSec, out);
  }

  // Export every defined memory. Index space: imported memories first.
  const extra: number[] = [];
  for (let i = 0; i < alloc.memories.length; i++) {
    const name = Buffer.from(`${MEMORY_EXPORT_PREFIX}${i}`);
    extra.push(...leb(name.length), ...name, 0x02, ...leb(alloc.importedMemories + i));
  }
  const expSec = all.find((s) => s.id === SECTION.export);
  let newExport: number[] | null = null;
  if (extra.length) {
    if (expSec) {
      const r = body(expSec);
      const n = r.u32();
      replaced.set(expSec, [...leb(n + alloc.memories.length), ...module.subarray(r.pos, expSec.end), ...extra]);
    } else {
      newExport = [...leb(alloc.memories.length), ...extra];
    }
  }

  const parts: Uint8Array[] = [module.subarray(0, 8)];
  let exportWritten = newExport === null;
  const writeSection = (id: number, content: number[]): void => {
    parts.push(Uint8Array.from([id, ...leb(content.length), ...content]));
  };
  for (const s of all) {
    if (!exportWritten && s.id !== SECTION.custom && ORDER[s.id] > ORDER[SECTION.export]) {
      writeSection(SECTION.export, newExport!);
      exportWritten = true;
    }
    const content = replaced.get(s);
    if (content) writeSection(s.id, content);
    else parts.push(module.subarray(s.start, s.end));
  }
  if (!exportWritten) writeSection(SECTION.export, newExport!);
  return Buffer.concat(parts);
}
