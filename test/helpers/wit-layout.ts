// Canonical-ABI memory layouts (size, alignment, field offsets) computed from a WIT file, so a
// test can hold the C SDK's hand-written offsets (plugins/sdk/c/vhost_abi.h) against
// wit/device.wit.
//
// Why a small parser of our own and not the component's binary type section: the layouts
// follow from a handful of rules in the Component Model's CanonicalABI.md (alignment,
// elem_size, discriminant_type, flatten), applied to the few WIT constructs device.wit uses.
// Reading them from a built component would need a decoder for the component binary format
// (type, alias and instance sections, type indices) and a plugin build first: more code, and
// more that can be wrong, for the same facts. Anything outside the subset (flags, resources,
// use, nested packages) is refused with a message naming it, never skipped.

export type WitType =
  | { kind: 'prim'; name: Prim }
  | { kind: 'string' }
  | { kind: 'list'; elem: WitType }
  | { kind: 'option'; some: WitType }
  | { kind: 'result'; ok: WitType | null; err: WitType | null }
  | { kind: 'tuple'; elems: WitType[] }
  | { kind: 'record'; name: string; fields: { name: string; type: WitType }[] }
  | { kind: 'variant'; name: string; cases: { name: string; type: WitType | null }[] }
  | { kind: 'enum'; name: string; cases: string[] };

type Prim = 'bool' | 'u8' | 's8' | 'u16' | 's16' | 'u32' | 's32' | 'u64' | 's64' | 'f32' | 'f64' | 'char';

const PRIM_SIZE: Record<Prim, number> = {
  bool: 1, u8: 1, s8: 1, u16: 2, s16: 2, u32: 4, s32: 4, char: 4, f32: 4, u64: 8, s64: 8, f64: 8,
};

export interface WitFunc {
  name: string;
  params: { name: string; type: WitType }[];
  result: WitType | null;
}

export interface WitInterface {
  name: string;
  /** Named types (records, variants, enums and aliases resolved), in source order. */
  types: Map<string, WitType>;
  funcs: WitFunc[];
}

export interface WitWorld {
  name: string;
  imports: string[];
  exports: string[];
}

export interface WitPackage {
  name: string;
  interfaces: Map<string, WitInterface>;
  worlds: WitWorld[];
}

// ---- Parsing ----

function tokenize(src: string): string[] {
  const tokens: string[] = [];
  const re = /\s+|\/\/[^\n]*|\/\*[\s\S]*?\*\/|(->|[A-Za-z_%][\w-]*|[0-9.]+|[{}()<>,:;=@/_*.])/y;
  let m: RegExpExecArray | null;
  while (re.lastIndex < src.length) {
    const at = re.lastIndex;
    m = re.exec(src);
    if (!m) throw new Error(`WIT: cannot read ${JSON.stringify(src.slice(at, at + 20))} at offset ${at}`);
    if (m[1] !== undefined) tokens.push(m[1]);
  }
  return tokens;
}

class Parser {
  private i = 0;
  constructor(private readonly t: string[]) {}

  peek(): string | undefined {
    return this.t[this.i];
  }
  next(): string {
    const tok = this.t[this.i++];
    if (tok === undefined) throw new Error('WIT: unexpected end of file');
    return tok;
  }
  eat(tok: string): boolean {
    if (this.t[this.i] !== tok) return false;
    this.i++;
    return true;
  }
  expect(tok: string): void {
    const got = this.next();
    if (got !== tok) throw new Error(`WIT: expected "${tok}", found "${got}" (token ${this.i})`);
  }
  /** A comma-separated list up to `close`, a trailing comma allowed. */
  list<T>(close: string, item: () => T): T[] {
    const out: T[] = [];
    while (!this.eat(close)) {
      out.push(item());
      if (!this.eat(',')) {
        this.expect(close);
        break;
      }
    }
    return out;
  }
}

/** A type expression; named types stay unresolved ({kind:'named'}) until the interface is read. */
type RawType = WitType | { kind: 'named'; name: string };

function parseType(p: Parser): RawType {
  const tok = p.next();
  if (tok in PRIM_SIZE) return { kind: 'prim', name: tok as Prim };
  switch (tok) {
    case 'string':
      return { kind: 'string' };
    case 'list': {
      p.expect('<');
      const elem = parseType(p);
      p.expect('>');
      return { kind: 'list', elem: elem as WitType };
    }
    case 'option': {
      p.expect('<');
      const some = parseType(p);
      p.expect('>');
      return { kind: 'option', some: some as WitType };
    }
    case 'tuple': {
      p.expect('<');
      return { kind: 'tuple', elems: p.list('>', () => parseType(p)) as WitType[] };
    }
    case 'result': {
      if (!p.eat('<')) return { kind: 'result', ok: null, err: null };
      const ok = p.eat('_') ? null : parseType(p);
      const err = p.eat(',') ? parseType(p) : null;
      p.expect('>');
      return { kind: 'result', ok: ok as WitType | null, err: err as WitType | null };
    }
    case 'borrow':
    case 'own':
    case 'future':
    case 'stream':
      throw new Error(`WIT: "${tok}" types are outside what test/helpers/wit-layout.ts understands: extend it`);
    default:
      return { kind: 'named', name: tok };
  }
}

function parseInterface(p: Parser, name: string, earlier: Map<string, WitInterface>): WitInterface {
  const raw = new Map<string, RawType>();
  /** Types brought in by `use other.{a, b};` (only from an interface declared before this one). */
  const used = new Map<string, WitType>();
  const funcs: { name: string; params: { name: string; type: RawType }[]; result: RawType | null }[] = [];
  p.expect('{');
  while (!p.eat('}')) {
    const tok = p.next();
    if (tok === '@') {
      // `@since(version = X)`: the item below exists from X on; its layout is the same.
      const gate = p.next();
      if (gate !== 'since') throw new Error(`WIT: "@${gate}" in interface ${name} is outside what test/helpers/wit-layout.ts understands: extend it`);
      p.expect('(');
      while (!p.eat(')')) p.next();
    } else if (tok === 'use') {
      const from = p.next();
      const src = earlier.get(from);
      if (!src) throw new Error(`WIT: interface ${name} uses interface ${from}, which is not declared before it (or not at all)`);
      p.expect('.');
      p.expect('{');
      for (const t of p.list('}', () => p.next())) {
        const ty = src.types.get(t);
        if (!ty) throw new Error(`WIT: interface ${name} uses ${from}.${t}, which ${from} does not define`);
        used.set(t, ty);
      }
      p.expect(';');
    } else if (tok === 'record') {
      const rec = p.next();
      p.expect('{');
      const fields = p.list('}', () => {
        const f = p.next();
        p.expect(':');
        return { name: f, type: parseType(p) };
      });
      raw.set(rec, { kind: 'record', name: rec, fields: fields as { name: string; type: WitType }[] });
    } else if (tok === 'variant') {
      const v = p.next();
      p.expect('{');
      const cases = p.list('}', () => {
        const c = p.next();
        let type: RawType | null = null;
        if (p.eat('(')) {
          type = parseType(p);
          p.expect(')');
        }
        return { name: c, type };
      });
      raw.set(v, { kind: 'variant', name: v, cases: cases as { name: string; type: WitType | null }[] });
    } else if (tok === 'enum') {
      const e = p.next();
      p.expect('{');
      raw.set(e, { kind: 'enum', name: e, cases: p.list('}', () => p.next()) });
    } else if (tok === 'type') {
      const alias = p.next();
      p.expect('=');
      raw.set(alias, parseType(p));
      p.expect(';');
    } else if (p.peek() === ':') {
      p.expect(':');
      p.expect('func');
      p.expect('(');
      const params = p.list(')', () => {
        const n = p.next();
        p.expect(':');
        return { name: n, type: parseType(p) };
      });
      const result = p.eat('->') ? parseType(p) : null;
      p.expect(';');
      funcs.push({ name: tok, params, result });
    } else {
      throw new Error(`WIT: "${tok}" in interface ${name} is outside what test/helpers/wit-layout.ts understands: extend it`);
    }
  }

  // Names resolve within the interface or through its `use`; a record may name a type
  // declared after it, as WIT allows.
  const resolving = new Set<string>();
  const done = new Map<string, WitType>();
  const resolve = (t: RawType): WitType => {
    switch (t.kind) {
      case 'named': {
        const hit = done.get(t.name) ?? used.get(t.name);
        if (hit) return hit;
        const def = raw.get(t.name);
        if (!def) throw new Error(`WIT: interface ${name} uses type "${t.name}", which it does not define`);
        if (resolving.has(t.name)) throw new Error(`WIT: type "${t.name}" in interface ${name} refers to itself`);
        resolving.add(t.name);
        const r = resolve(def);
        resolving.delete(t.name);
        done.set(t.name, r);
        return r;
      }
      case 'list':
        return { kind: 'list', elem: resolve(t.elem) };
      case 'option':
        return { kind: 'option', some: resolve(t.some) };
      case 'tuple':
        return { kind: 'tuple', elems: t.elems.map(resolve) };
      case 'result':
        return { kind: 'result', ok: t.ok && resolve(t.ok), err: t.err && resolve(t.err) };
      case 'record':
        return { ...t, fields: t.fields.map((f) => ({ name: f.name, type: resolve(f.type) })) };
      case 'variant':
        return { ...t, cases: t.cases.map((c) => ({ name: c.name, type: c.type && resolve(c.type) })) };
      default:
        return t;
    }
  };
  const types = new Map<string, WitType>();
  for (const n of raw.keys()) types.set(n, resolve({ kind: 'named', name: n }));
  return {
    name,
    types,
    funcs: funcs.map((f) => ({
      name: f.name,
      params: f.params.map((q) => ({ name: q.name, type: resolve(q.type) })),
      result: f.result && resolve(f.result),
    })),
  };
}

export function parseWit(src: string): WitPackage {
  const p = new Parser(tokenize(src));
  const pkg: WitPackage = { name: '', interfaces: new Map(), worlds: [] };
  while (p.peek() !== undefined) {
    const tok = p.next();
    if (tok === 'package') {
      const parts: string[] = [];
      while (!p.eat(';')) parts.push(p.next());
      pkg.name = parts.join('');
    } else if (tok === 'interface') {
      const name = p.next();
      pkg.interfaces.set(name, parseInterface(p, name, pkg.interfaces));
    } else if (tok === 'world') {
      const world: WitWorld = { name: p.next(), imports: [], exports: [] };
      p.expect('{');
      while (!p.eat('}')) {
        const dir = p.next();
        if (dir !== 'import' && dir !== 'export') {
          throw new Error(`WIT: "${dir}" in world ${world.name} is outside what test/helpers/wit-layout.ts understands: extend it`);
        }
        const target = p.next();
        if (p.peek() !== ';') throw new Error(`WIT: world ${world.name}: only "import NAME;" and "export NAME;" of interfaces are understood`);
        p.expect(';');
        (dir === 'import' ? world.imports : world.exports).push(target);
      }
      pkg.worlds.push(world);
    } else {
      throw new Error(`WIT: top-level "${tok}" is outside what test/helpers/wit-layout.ts understands: extend it`);
    }
  }
  return pkg;
}

// ---- Canonical ABI (CanonicalABI.md: alignment, elem_size, discriminant_type, flatten_type) ----

const alignTo = (n: number, a: number) => Math.ceil(n / a) * a;

/** discriminant_type: the smallest of u8/u16/u32 that counts the cases. */
function discriminantSize(cases: number): number {
  return cases <= 1 << 8 ? 1 : cases <= 1 << 16 ? 2 : 4;
}

/** Cases of a variant-like type (variant, option, result, enum), payload null where none. */
function casesOf(t: WitType): (WitType | null)[] | null {
  switch (t.kind) {
    case 'variant':
      return t.cases.map((c) => c.type);
    case 'option':
      return [null, t.some];
    case 'result':
      return [t.ok, t.err];
    case 'enum':
      return t.cases.map(() => null);
    default:
      return null;
  }
}

function fieldsOf(t: WitType): WitType[] | null {
  return t.kind === 'record' ? t.fields.map((f) => f.type) : t.kind === 'tuple' ? t.elems : null;
}

export function alignment(t: WitType): number {
  if (t.kind === 'prim') return PRIM_SIZE[t.name];
  if (t.kind === 'string' || t.kind === 'list') return 4;
  const fields = fieldsOf(t);
  if (fields) return Math.max(1, ...fields.map(alignment));
  const cases = casesOf(t)!;
  return Math.max(discriminantSize(cases.length), ...cases.map((c) => (c ? alignment(c) : 1)));
}

export function size(t: WitType): number {
  if (t.kind === 'prim') return PRIM_SIZE[t.name];
  if (t.kind === 'string' || t.kind === 'list') return 8;
  const fields = fieldsOf(t);
  if (fields) return alignTo(fieldOffsets(fields).end, alignment(t));
  return alignTo(payloadOffset(t) + Math.max(0, ...casesOf(t)!.map((c) => (c ? size(c) : 0))), alignment(t));
}

function fieldOffsets(fields: WitType[]): { offsets: number[]; end: number } {
  let s = 0;
  const offsets = fields.map((f) => {
    s = alignTo(s, alignment(f));
    const at = s;
    s += size(f);
    return at;
  });
  return { offsets, end: s };
}

/** Offsets of a record's fields (by name) or a tuple's elements (by index). */
export function offsets(t: WitType): Map<string, number> {
  const fields = fieldsOf(t);
  if (!fields) throw new Error(`offsets of a ${t.kind}: only records and tuples have fields`);
  const names = t.kind === 'record' ? t.fields.map((f) => f.name) : fields.map((_, i) => String(i));
  const { offsets: at } = fieldOffsets(fields);
  return new Map(names.map((n, i) => [n, at[i]]));
}

/** Where every case's payload starts in a variant, option or result: after the discriminant, aligned. */
export function payloadOffset(t: WitType): number {
  const cases = casesOf(t);
  if (!cases) throw new Error(`payloadOffset of a ${t.kind}: only variants, options and results have cases`);
  return alignTo(discriminantSize(cases.length), Math.max(1, ...cases.map((c) => (c ? alignment(c) : 1))));
}

/** How many core values the type flattens to (flatten_type). */
export function flatCount(t: WitType): number {
  if (t.kind === 'prim') return 1;
  if (t.kind === 'string' || t.kind === 'list') return 2;
  const fields = fieldsOf(t);
  if (fields) return fields.reduce((n, f) => n + flatCount(f), 0);
  return 1 + Math.max(0, ...casesOf(t)!.map((c) => (c ? flatCount(c) : 0)));
}

/** MAX_FLAT_RESULTS: a result flattening to more core values goes through a return area. */
export const MAX_FLAT_RESULTS = 1;

// ---- The C SDK's names for these facts (plugins/sdk/c/vhost_abi.h) ----

export interface AbiFact {
  value: number;
  /** What the number is, in WIT terms, for failure messages. */
  what: string;
  /** The header must state it (records and enums); function return areas only where the SDK reads them. */
  required: boolean;
}

const cName = (s: string) => s.replace(/-/g, '_').toUpperCase();

/**
 * Every fact the C SDK may name, keyed by its constant:
 *  VD_ABI_SIZEOF_<RECORD>, VD_ABI_ALIGNOF_<RECORD>, VD_ABI_<RECORD>_<FIELD> (offset),
 *  VD_ABI_<RECORD>_<FIELD>_SOME (an option field: its value's offset from the field's start);
 *  VD_ABI_SIZEOF_<VARIANT>, VD_ABI_ALIGNOF_<VARIANT>, VD_ABI_<VARIANT>_PAYLOAD (where every
 *  case's payload starts), VD_ABI_<VARIANT>_<CASE> (case index), VD_ABI_<VARIANT>_<CASE>_<i>
 *  (element i of a tuple payload, from the payload's start);
 *  VD_ABI_<ENUM>_<CASE> (case index);
 *  VD_ABI_SIZEOF_LIST, VD_ABI_LIST_LEN (a lowered list or string: pointer at 0, length after);
 *  for a function whose results go through a return area: VD_ABI_SIZEOF_<IFACE>_<FUNC>_RET, and
 *  VD_ABI_<IFACE>_<FUNC>_RET_OK / _ERR / _SOME (payload offset), _<i> (tuple element), nested.
 */
export function abiFacts(pkg: WitPackage): Map<string, AbiFact> {
  const facts = new Map<string, AbiFact>();
  const put = (name: string, value: number, what: string, required: boolean) => {
    const had = facts.get(name);
    if (had && (had.value !== value || had.what !== what)) {
      throw new Error(`two WIT facts want the C name ${name}: ${had.what} and ${what}`);
    }
    facts.set(name, { value, what, required });
  };
  const list: WitType = { kind: 'list', elem: { kind: 'prim', name: 'u8' } };
  put('VD_ABI_SIZEOF_LIST', size(list), 'size of a lowered list or string', true);
  put('VD_ABI_LIST_LEN', alignment(list), 'offset of a lowered list\'s length', true);

  let fn = '';
  const walk = (t: WitType, name: string, base: number, what: string) => {
    const sub = (child: WitType | null, suffix: string, at: number, label: string) => {
      if (!child) return;
      const path = what ? `${what}.${label}` : label;
      put(`${name}_${suffix}`, base + at, `offset of ${fn}'s result ${path} in its return area`, false);
      walk(child, `${name}_${suffix}`, base + at, path);
    };
    if (t.kind === 'result') {
      sub(t.ok, 'OK', payloadOffset(t), 'ok');
      sub(t.err, 'ERR', payloadOffset(t), 'err');
    } else if (t.kind === 'option') {
      sub(t.some, 'SOME', payloadOffset(t), 'some');
    } else if (t.kind === 'tuple') {
      for (const [i, at] of offsets(t)) sub(t.elems[Number(i)], i, at, i);
    }
  };

  for (const iface of pkg.interfaces.values()) {
    for (const [tname, t] of iface.types) {
      if (t.kind === 'record' && t.name === tname) {
        const R = cName(tname);
        put(`VD_ABI_SIZEOF_${R}`, size(t), `size of ${iface.name}.${tname}`, true);
        put(`VD_ABI_ALIGNOF_${R}`, alignment(t), `alignment of ${iface.name}.${tname}`, true);
        for (const [f, at] of offsets(t)) put(`VD_ABI_${R}_${cName(f)}`, at, `offset of ${iface.name}.${tname}.${f}`, true);
        for (const f of t.fields) {
          // An option field: where its value starts, from the field's start (its tag is at 0).
          if (f.type.kind === 'option') put(`VD_ABI_${R}_${cName(f.name)}_SOME`, payloadOffset(f.type), `offset of ${iface.name}.${tname}.${f.name}'s value in the option`, true);
        }
      } else if (t.kind === 'variant' && t.name === tname) {
        const V = cName(tname);
        put(`VD_ABI_SIZEOF_${V}`, size(t), `size of ${iface.name}.${tname}`, true);
        put(`VD_ABI_ALIGNOF_${V}`, alignment(t), `alignment of ${iface.name}.${tname}`, true);
        put(`VD_ABI_${V}_PAYLOAD`, payloadOffset(t), `offset of ${iface.name}.${tname}'s payload`, true);
        t.cases.forEach((c, i) => {
          put(`VD_ABI_${V}_${cName(c.name)}`, i, `case index of ${iface.name}.${tname}.${c.name}`, true);
          // A tuple payload's elements, from the payload's start.
          if (c.type?.kind === 'tuple') {
            for (const [e, at] of offsets(c.type)) put(`VD_ABI_${V}_${cName(c.name)}_${e}`, at, `offset of element ${e} of ${iface.name}.${tname}.${c.name}'s payload`, true);
          }
        });
      } else if (t.kind === 'enum' && t.name === tname) {
        t.cases.forEach((c, i) => put(`VD_ABI_${cName(tname)}_${cName(c)}`, i, `case index of ${iface.name}.${tname}.${c}`, true));
      }
    }
    for (const f of iface.funcs) {
      if (!f.result || flatCount(f.result) <= MAX_FLAT_RESULTS) continue;
      const name = `VD_ABI_${cName(iface.name)}_${cName(f.name)}_RET`;
      fn = `${iface.name}.${f.name}`;
      put(`VD_ABI_SIZEOF_${cName(iface.name)}_${cName(f.name)}_RET`, size(f.result), `size of ${fn}'s return area`, false);
      walk(f.result, name, 0, '');
    }
  }
  return facts;
}
