// The C SDK against the WIT it implements: every layout constant in plugins/sdk/c/vhost_abi.h
// equals what the canonical ABI gives for wit/device.wit, every function the world exports
// has its export in the SDK, and every import the SDK declares is in the WIT (and the other
// way round). The layouts are computed by test/helpers/wit-layout.ts (why a parser of our own:
// see there), which is itself checked against layouts worked out by hand from CanonicalABI.md.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { abiFacts, alignment, offsets, parseWit, payloadOffset, size, type AbiFact, type WitPackage } from './helpers/wit-layout.ts';

const REPO = join(import.meta.dirname, '..');
const SDK = join(REPO, 'plugins', 'sdk', 'c');
const wit = parseWit(readFileSync(join(REPO, 'wit', 'device.wit'), 'utf8'));
const header = readFileSync(join(SDK, 'vhost_abi.h'), 'utf8');
const deviceC = readFileSync(join(SDK, 'vhost_device.c'), 'utf8');
const fsC = readFileSync(join(SDK, 'vhost_fs.c'), 'utf8');

/** What is wrong with a header's constants, one line each, naming the constant and the WIT fact. */
function headerProblems(text: string, facts: Map<string, AbiFact>): string[] {
  const problems: string[] = [];
  const stated = new Map<string, string>();
  for (const m of text.matchAll(/^#define\s+(VD_ABI_\w+)\s+(.*?)\s*$/gm)) stated.set(m[1], m[2]);
  for (const [name, raw] of stated) {
    const fact = facts.get(name);
    if (!fact) {
      problems.push(`${name} names nothing in wit/device.wit (see the naming rules in vhost_abi.h)`);
    } else if (!/^\d+$/.test(raw)) {
      problems.push(`${name} is "${raw}", not a plain number`);
    } else if (Number(raw) !== fact.value) {
      problems.push(`${name} is ${raw}, but the ${fact.what} is ${fact.value} by wit/device.wit`);
    }
  }
  for (const [name, fact] of facts) {
    if (fact.required && !stated.has(name)) problems.push(`${name} (the ${fact.what}) is missing`);
  }
  return problems;
}

function iface(pkg: WitPackage, name: string) {
  const i = pkg.interfaces.get(name);
  if (!i) throw new Error(`wit/device.wit has no interface ${name}`);
  return i;
}

const names = (re: RegExp, text: string) => [...text.matchAll(re)].map((m) => m[1]).sort();

test('every layout constant in vhost_abi.h matches wit/device.wit', (t) => {
  t.deepEqual(headerProblems(header, abiFacts(wit)), []);
});

test('a drifted, unknown or missing constant is reported by name', (t) => {
  const facts = abiFacts(wit);
  const drifted = header
    .replace(/^#define VD_ABI_DEVICE_INFO_FEATURES 8$/m, '#define VD_ABI_DEVICE_INFO_FEATURES 12')
    .replace(/^#define VD_ABI_ACTION_PAYLOAD 8$/m, '#define VD_ABI_ACTION_PAYLOAD 4')
    .replace(/^#define VD_ABI_SIZEOF_ATTR 96$/m, '')
    .concat('\n#define VD_ABI_DEVICE_INFO_COLOUR 4\n');
  t.deepEqual(headerProblems(drifted, facts), [
    "VD_ABI_ACTION_PAYLOAD is 4, but the offset of types.action's payload is 8 by wit/device.wit",
    'VD_ABI_DEVICE_INFO_FEATURES is 12, but the offset of device.device-info.features is 8 by wit/device.wit',
    'VD_ABI_DEVICE_INFO_COLOUR names nothing in wit/device.wit (see the naming rules in vhost_abi.h)',
    'VD_ABI_SIZEOF_ATTR (the size of filesystem.attr) is missing',
  ]);
});

test('the layout rules give what CanonicalABI.md gives, worked by hand', (t) => {
  const pkg = parseWit(`
    package t:t;
    interface i {
      type h = u64;
      record mixed { a: u8, b: u32, c: u16 }      // 0, 4, 8; size 12, align 4
      record wide { a: u8, b: h }                 // 0, 8; size 16, align 8
      variant v { none, small(u8), big(tuple<u16, u64>) }
      enum e { x, y }
      f: func() -> result<wide, string>;
      g: func() -> option<u8>;
      k: func() -> e;
      l: func() -> result<_, e>;
    }
  `);
  const i = iface(pkg, 'i');
  const ty = (n: string) => i.types.get(n)!;
  t.deepEqual([...offsets(ty('mixed'))], [['a', 0], ['b', 4], ['c', 8]]);
  t.deepEqual([size(ty('mixed')), alignment(ty('mixed'))], [12, 4]);
  t.deepEqual([...offsets(ty('wide'))], [['a', 0], ['b', 8]]);
  t.deepEqual([size(ty('wide')), alignment(ty('wide'))], [16, 8]);
  // u8 discriminant, payload aligned to 8 (the tuple's u64), payload size 16.
  t.deepEqual([payloadOffset(ty('v')), size(ty('v')), alignment(ty('v'))], [8, 24, 8]);
  t.deepEqual([size(ty('e')), alignment(ty('e'))], [1, 1]);
  const facts = abiFacts(pkg);
  const value = (n: string) => facts.get(n)?.value;
  t.is(value('VD_ABI_SIZEOF_I_F_RET'), 24);
  t.is(value('VD_ABI_I_F_RET_OK'), 8);
  t.is(value('VD_ABI_I_F_RET_ERR'), 8);
  t.is(value('VD_ABI_SIZEOF_I_G_RET'), 2, 'option<u8> flattens to two values: a return area');
  t.is(value('VD_ABI_I_G_RET_SOME'), 1);
  t.false(facts.has('VD_ABI_SIZEOF_I_K_RET'), 'an enum result is one core value: no return area');
  t.is(value('VD_ABI_I_L_RET_ERR'), 1);
  t.is(value('VD_ABI_E_Y'), 1);
  // `use` brings a type from an earlier interface; variants and option fields name their layout.
  const used = parseWit(`
    package t:t;
    interface a { record ext { b: u32, off: u64 } variant p { bytes(list<u8>), read(ext), pair(tuple<u32, u64>) } }
    interface b { use a.{p}; record ans { id: u32, at: option<u32>, ps: list<p> } f: func(x: list<p>) -> result<list<ans>, string>; }
  `);
  const uf = abiFacts(used);
  const uv = (n: string) => uf.get(n)?.value;
  t.deepEqual([uv('VD_ABI_SIZEOF_P'), uv('VD_ABI_ALIGNOF_P'), uv('VD_ABI_P_PAYLOAD')], [24, 8, 8]);
  t.deepEqual([uv('VD_ABI_P_BYTES'), uv('VD_ABI_P_READ'), uv('VD_ABI_P_PAIR'), uv('VD_ABI_P_PAIR_1')], [0, 1, 2, 8]);
  t.deepEqual([uv('VD_ABI_ANS_AT'), uv('VD_ABI_ANS_AT_SOME'), uv('VD_ABI_ANS_PS'), uv('VD_ABI_SIZEOF_ANS')], [4, 4, 12, 20]);
  t.deepEqual([uv('VD_ABI_SIZEOF_B_F_RET'), uv('VD_ABI_B_F_RET_OK')], [12, 4]);
  // A variant with more than 256 cases needs a u16 discriminant.
  const many = parseWit(`package t:t; interface j { enum big { ${Array.from({ length: 257 }, (_, n) => `c${n}`).join(', ')} } }`);
  t.is(size(iface(many, 'j').types.get('big')!), 2);
});

test('WIT the checker does not understand is refused, not skipped', (t) => {
  t.throws(() => parseWit('package t:t; interface i { flags f { a, b } }'), { message: /"flags" in interface i/ });
  t.throws(() => parseWit('package t:t; interface i { use other.{x}; }'), { message: /uses interface other, which is not declared before it/ });
  t.throws(() => parseWit('package t:t; interface o { type y = u8; } interface i { use o.{x}; }'), { message: /uses o\.x, which o does not define/ });
  t.throws(() => parseWit('package t:t; interface i { f: func() -> missing; }'), { message: /does not define/ });
});

test('the SDK exports every function of the world\'s exported interfaces, and nothing else', (t) => {
  const world = wit.worlds.find((w) => w.name === 'virtio-device');
  t.truthy(world, 'wit/device.wit has no world virtio-device');
  const exported = world!.exports.flatMap((e) => iface(wit, e).funcs.map((f) => f.name)).sort();
  t.deepEqual(names(/\bVD_EXPORT\("([\w-]+)"\)/g, deviceC), exported);
});

test('the SDK imports exactly the functions of the world\'s imported interfaces', (t) => {
  const world = wit.worlds.find((w) => w.name === 'virtio-device')!;
  t.deepEqual(world.imports.sort(), ['entropy', 'filesystem', 'log', 'network', 'options', 'storage']);
  const wanted = (i: string) => iface(wit, i).funcs.map((f) => f.name).sort();
  t.deepEqual(names(/import_module\(VD_IFACE\("log"\)\), import_name\("([\w-]+)"\)/g, deviceC), wanted('log'));
  t.deepEqual(names(/import_module\(VD_IFACE\("entropy"\)\), import_name\("([\w-]+)"\)/g, deviceC), wanted('entropy'));
  t.deepEqual(names(/\bVD_STORAGE_IMPORT\("([\w-]+)"\)/g, deviceC), wanted('storage'));
  t.deepEqual(names(/import_module\(VD_IFACE\("options"\)\), import_name\("([\w-]+)"\)/g, deviceC), wanted('options'));
  t.deepEqual(names(/\bVD_NETWORK_IMPORT\("([\w-]+)"\)/g, deviceC), wanted('network'));
  t.deepEqual(names(/\bVFS_IMPORT\("([\w-]+)"\)/g, fsC), wanted('filesystem'));
});

test('the SDK\'s glue states its offsets through vhost_abi.h, not as bare numbers', (t) => {
  // ret_area / ret / r / list + N: a literal offset into a canonical-ABI buffer.
  for (const [file, text] of [['vhost_device.c', deviceC], ['vhost_fs.c', fsC]]) {
    const bare = [...text.matchAll(/\b(?:ret_area|ret|r|list|slot|at)\s*\+\s*\d+/g)].map((m) => m[0]);
    t.deepEqual(bare, [], `${file} adds a literal offset to an ABI buffer: name it in vhost_abi.h`);
  }
});
