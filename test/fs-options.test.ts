// The fs options that follow virtiofsd's: --cache (the timeouts and open flags the plugin
// answers with), --translate-uid / --translate-gid (ids the guest sees and sets) and
// --xattrmap (xattr names between guest and host), through the plugin and a real share, and
// their command-line parsing.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { chownSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare, type ShareOptions } from '../host/fs/share.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { parseCli } from '../host/cli/args.ts';
import { parseIdMapRule } from '../host/fs/id-map.ts';
import { parseXattrMap, XattrMap } from '../host/fs/xattr-map.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'fs-options-test-'));
let bytes: Buffer;
test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'inherit' });
  bytes = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

const OP = { GETATTR: 3, SETATTR: 4, LOOKUP: 1, OPEN: 14, INIT: 26, OPENDIR: 27, CREATE: 35 };
let unique = 1n;
let nextId = 1;

/** One FUSE request through the plugin; error and body of the reply. */
function req(dev: PluginDevice, opcode: number, nodeid: bigint, args: Buffer, uid = 0, gid = 0): { error: number; body: Buffer } {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + args.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique++, 8);
  h.writeBigUInt64LE(nodeid, 16);
  h.writeUInt32LE(uid, 24);
  h.writeUInt32LE(gid, 28);
  const readable = Buffer.concat([h, args]);
  const id = nextId++;
  const acts = dev.handle([{ kind: 'request', request: { id, queue: 1, prefix: readable, readableLen: readable.length, writableLen: 8192 } }]);
  const a = acts.find((x) => x.kind === 'answer' && x.answer.id === id);
  if (!a || a.kind !== 'answer') throw new Error('not answered');
  const out = Buffer.concat(a.answer.reply.map((p) => (p.kind === 'bytes' ? Buffer.from(p.bytes) : Buffer.alloc(0))));
  return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
}

async function plugin(t: ExecutionContext, opts: ShareOptions) {
  const dir = mkdtempSync(join(tmpdir(), 'fs-options-share-'));
  writeFileSync(join(dir, 'f'), 'data\n');
  mkdirSync(join(dir, 'd'));
  const share = new FsShare(dir, { tag: 'opts', ...opts });
  const backings = new BackingTable();
  const dev = await loadPlugin(bytes, { grants: { filesystem: share, backings, fsFiles: new FsFileBackings(share, backings), log: () => {} }, cacheDir });
  const init = Buffer.alloc(16);
  init.writeUInt32LE(7, 0);
  init.writeUInt32LE(38, 4);
  req(dev, OP.INIT, 0n, init);
  t.teardown(() => {
    share.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, share, dev };
}

/** The host's own view of a file's xattrs: name=value, sorted (python's os.listxattr). */
function hostXattrs(path: string): string[] {
  const py = `import os,sys\np=sys.argv[1]\nfor n in sorted(os.listxattr(p)): print(n+'='+os.getxattr(p,n).decode())`;
  return execFileSync('python3', ['-c', py, path], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
}

const lookup = (dev: PluginDevice, name: string) => req(dev, OP.LOOKUP, 1n, Buffer.from(`${name}\0`));
const openFlags = (dev: PluginDevice, node: bigint, dir: boolean) => {
  const r = req(dev, dir ? OP.OPENDIR : OP.OPEN, node, Buffer.alloc(8));
  return r.body.readUInt32LE(8);
};

for (const [policy, timeout, fileFlags, dirFlags] of [
  ['never', 0n, 1, 0],
  ['metadata', 86400n, 1, 0],
  ['auto', 1n, 0, 0],
  ['always', 86400n, 2, 8 | 2],
] as const) {
  test(`--cache ${policy}: entry/attr timeouts ${timeout} s, open flags ${fileFlags} (files) and ${dirFlags} (directories)`, async (t) => {
    const { dev } = await plugin(t, { cache: policy });
    const l = lookup(dev, 'f');
    t.is(l.error, 0);
    t.is(l.body.readBigUInt64LE(16), timeout, 'entry_valid');
    t.is(l.body.readBigUInt64LE(24), timeout, 'attr_valid');
    const node = l.body.readBigUInt64LE(0);
    t.is(req(dev, OP.GETATTR, node, Buffer.alloc(16)).body.readBigUInt64LE(0), timeout, 'GETATTR attr_valid');
    t.is(openFlags(dev, node, false), fileFlags, 'FOPEN_DIRECT_IO 1 / FOPEN_KEEP_CACHE 2');
    t.is(openFlags(dev, lookup(dev, 'd').body.readBigUInt64LE(0), true), dirFlags, 'FOPEN_CACHE_DIR 8');
    const c = Buffer.concat([Buffer.from([0x42, 0, 0, 0, 0xa4, 1, 0, 0]), Buffer.alloc(8), Buffer.from('new\0')]);
    const cr = req(dev, OP.CREATE, 1n, c);
    t.is(cr.error, 0);
    t.is(cr.body.readUInt32LE(128 + 8), fileFlags, 'CREATE open flags');
  });
}

test('--translate-uid/gid: the guest sees host ids translated, sets guest ids that become host ids, and forbidden ids are EPERM', async (t) => {
  const { dir, dev } = await plugin(t, {
    translateUid: ['map:1000:5000:10', 'squash-guest:2000:6000:100', 'forbid-guest:3000:5', 'squash-host:7000:42:10'].map(parseIdMapRule),
    translateGid: ['guest:100:900:1', 'host:900:100:1'].map(parseIdMapRule),
  });
  chownSync(join(dir, 'f'), 5003, 900);
  const l = lookup(dev, 'f');
  const node = l.body.readBigUInt64LE(0);
  // fuse_attr in fuse_entry_out at 40: uid at 40+68, gid at 40+72.
  t.is(l.body.readUInt32LE(108), 1003, 'host uid 5003 is guest 1003 (map)');
  t.is(l.body.readUInt32LE(112), 100, 'host gid 900 is guest 100 (host rule)');
  const setattr = (uid: number, gid: number, valid = 2 | 4) => {
    const b = Buffer.alloc(88);
    b.writeUInt32LE(valid, 0);
    b.writeUInt32LE(uid, 76);
    b.writeUInt32LE(gid, 80);
    return req(dev, OP.SETATTR, node, b);
  };
  t.is(setattr(1009, 100).error, 0);
  t.like(lstatSync(join(dir, 'f')), { uid: 5009, gid: 900 }, 'guest 1009/100 are host 5009/900');
  t.is(setattr(2050, 0, 2).error, 0);
  t.is(lstatSync(join(dir, 'f')).uid, 6000, 'squashed');
  t.is(setattr(3002, 0, 2).error, 1, 'forbid-guest: EPERM');
  t.is(lstatSync(join(dir, 'f')).uid, 6000, 'unchanged');
  chownSync(join(dir, 'f'), 7005, 0);
  t.is(req(dev, OP.GETATTR, node, Buffer.alloc(16)).body.readUInt32LE(16 + 68), 42, 'squash-host: host 7005 shows as 42');
  t.is(setattr(77, 0, 2).error, 0);
  t.is(lstatSync(join(dir, 'f')).uid, 77, 'an id no rule covers passes unchanged');
});

test('--xattrmap: prefix rules move guest names under a host prefix and back; bad and unsupported refuse and hide', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-xattrmap-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'f'), 'x');
  const share = new FsShare(dir, {
    xattr: true,
    xattrmap: parseXattrMap(':prefix:all:trusted.:user.virtiofs.::bad:all:security.:security.::unsupported:client:system.:::ok:all:::'),
  });
  t.teardown(() => share.close());
  const f = share.root();
  if (!f.ok) return t.fail();
  const h = share.lookup(f.val.node, Buffer.from('f'));
  if (!h.ok) return t.fail();
  const n = h.val.node;
  const b = (s: string) => Buffer.from(s);
  t.true(share.setxattr(n, b('trusted.overlay.opaque'), b('y'), 0).ok, 'the guest sets a trusted. name...');
  t.deepEqual(hostXattrs(join(dir, 'f')), ['user.virtiofs.trusted.overlay.opaque=y'], '...which the host stores under user.virtiofs.');
  const g = share.getxattr(n, b('trusted.overlay.opaque'));
  t.true(g.ok && Buffer.from(g.val).toString() === 'y');
  t.true(share.setxattr(n, b('user.plain'), b('1'), 0).ok);
  execFileSync('python3', ['-c', `import os; os.setxattr(${JSON.stringify(join(dir, 'f'))}, 'security.hostonly', b'z')`]);
  const list = share.listxattr(n);
  t.true(list.ok);
  if (list.ok) t.deepEqual(Buffer.from(list.val).toString().split('\0').filter(Boolean).sort(), ['trusted.overlay.opaque', 'user.plain'], 'the prefix is taken off, security. hidden');
  t.like(share.setxattr(n, b('security.x'), b('1'), 0), { ok: false, errno: 1 }, 'bad: EPERM');
  t.like(share.getxattr(n, b('security.hostonly')), { ok: false, errno: 61 }, 'bad, read: ENODATA');
  t.like(share.setxattr(n, b('system.posix_acl_access'), b('1'), 0), { ok: false, errno: 95 }, 'unsupported: EOPNOTSUPP');
  t.true(share.removexattr(n, b('trusted.overlay.opaque')).ok);
  t.deepEqual(hostXattrs(join(dir, 'f')), ['security.hostonly=z', 'user.plain=1']);
});

test('--xattrmap: virtiofsd\'s "map" shorthand stands for the rules virtiofsd 1.13 expands it to, and only as the last rule', (t) => {
  const all = { client: true, server: true };
  t.deepEqual(parseXattrMap(':map::user.virtiofs.:'), [
    { type: 'prefix', ...all, key: '', prepend: 'user.virtiofs.' },
    { type: 'bad', ...all, key: '', prepend: '' },
  ], 'empty key: everything under the prefix, the rest hidden and refused');
  t.deepEqual(parseXattrMap('/bad/all/security./security./' + '/map/trusted./user.virtiofs./'), [
    { type: 'bad', ...all, key: 'security.', prepend: 'security.' },
    { type: 'prefix', ...all, key: 'trusted.', prepend: 'user.virtiofs.' },
    { type: 'bad', ...all, key: 'user.virtiofs.', prepend: 'trusted.' },
    { type: 'ok', ...all, key: '', prepend: '' },
  ], 'a key: its names under the prefix, the prefix itself refused to the guest, the rest passes');
  t.throws(() => parseXattrMap(':map::user.virtiofs.::ok:all:::'), { message: /rule 1: a "map" rule must be the last rule/ });
  t.throws(() => parseXattrMap(':map:a.:b.::map:a.:b.:'), { message: /rule 1: a "map" rule must be the last/ });
  t.throws(() => parseXattrMap(':map:trusted.:'), { message: /rule 1 is incomplete \(it should read :map:key:prepend:\)/ });
});

test('--xattrmap: an empty prepend is accepted, as virtiofsd 1.13 accepts it', (t) => {
  const all = { client: true, server: true };
  t.deepEqual(parseXattrMap(':map:a.::'), [
    { type: 'prefix', ...all, key: 'a.', prepend: '' },
    { type: 'bad', ...all, key: '', prepend: 'a.' },
    { type: 'ok', ...all, key: '', prepend: '' },
  ], 'map with an empty prepend: expanded as virtiofsd expands it');
  t.deepEqual(parseXattrMap(':prefix:all:a.::'), [{ type: 'prefix', ...all, key: 'a.', prepend: '' }]);
  // What it means (virtiofsd's lookup): a.'s names pass unchanged, every other guest name is
  // refused (the bad rule's empty key), every host name shows (the prefix rule's empty prepend).
  const m = new XattrMap(parseXattrMap(':map:a.::'));
  t.deepEqual(m.toHost(Buffer.from('a.x')), Buffer.from('a.x'));
  t.is(m.toHost(Buffer.from('user.x')), 1);
  t.deepEqual(m.toGuest(Buffer.from('user.y')), Buffer.from('user.y'));
});

test('--xattrmap: the type field is read first, so a separator that is a letter of "map" does not shift the fields (virtiofsd 1.13 refuses these too)', (t) => {
  t.throws(() => parseXattrMap('amapaxa'), { message: /rule 1: "m" is not one of prefix, ok, bad, unsupported, map/ });
  t.throws(() => parseXattrMap('mmapmxm'), { message: /rule 1: "" is not one of/ });
  t.throws(() => parseXattrMap('pmappxp'), { message: /rule 1: "ma" is not one of/ });
  const all = { client: true, server: true };
  t.deepEqual(parseXattrMap('xmapxa.xb.x'), [
    { type: 'prefix', ...all, key: 'a.', prepend: 'b.' },
    { type: 'bad', ...all, key: 'b.', prepend: 'a.' },
    { type: 'ok', ...all, key: '', prepend: '' },
  ], 'a map rule with a separator that is no letter of it');
});

test('--xattrmap: the whole map is trimmed first (Unicode white space too, as str::trim), ASCII white space skipped between rules', (t) => {
  const all = { client: true, server: true };
  t.deepEqual(parseXattrMap('\u00a0\u2003:ok:all:::\u3000'), [{ type: 'ok', ...all, key: '', prepend: '' }], 'no-break and em spaces around the map');
  t.deepEqual(parseXattrMap('\u00a0:bad:all:trusted.:trusted.:\n :ok:all:::\u00a0'), [
    { type: 'bad', ...all, key: 'trusted.', prepend: 'trusted.' },
    { type: 'ok', ...all, key: '', prepend: '' },
  ]);
  t.deepEqual(parseXattrMap(':map::user.virtiofs.:\u2003').length, 2, 'a map rule followed by Unicode white space at the end is still the last');
  t.throws(() => parseXattrMap(':ok:all:::\u00a0:ok:all:::'), { message: /rule 2 is incomplete/ }, 'between rules only ASCII white space is skipped (a no-break space there starts a rule)');
});

test('--xattrmap: white space before and after rules is skipped, as virtiofsd 1.13 does (its documented one-rule-a-line map parses)', (t) => {
  const all = { client: true, server: true };
  t.deepEqual(parseXattrMap('\n  /prefix/all/trusted./user.virtiofs./\n  /bad/server//trusted./\n  /bad/client/user.virtiofs.//\n  /ok/all///\n'), [
    { type: 'prefix', ...all, key: 'trusted.', prepend: 'user.virtiofs.' },
    { type: 'bad', client: false, server: true, key: '', prepend: 'trusted.' },
    { type: 'bad', client: true, server: false, key: 'user.virtiofs.', prepend: '' },
    { type: 'ok', ...all, key: '', prepend: '' },
  ]);
  t.is(parseXattrMap(' :map::user.virtiofs.:\n').length, 2, 'a map rule followed by white space is still the last');
  t.deepEqual(parseXattrMap(':ok:all::: '), [{ type: 'ok', ...all, key: '', prepend: '' }]);
  t.throws(() => parseXattrMap(' \t\n'), { message: /--xattrmap: no rules/ });
  t.throws(() => parseXattrMap(':map:a.:b.: :ok:all:::'), { message: /rule 1: a "map" rule must be the last/ });
});

test('--xattrmap :map:trusted.:user.virtiofs.: on a real share: trusted. names stored under user.virtiofs., the guest kept out of user.virtiofs., host trusted. names hidden', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-xattrmap-map-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'f'), 'x');
  const share = new FsShare(dir, { xattr: true, xattrmap: parseXattrMap(':map:trusted.:user.virtiofs.:') });
  t.teardown(() => share.close());
  const f = share.root();
  if (!f.ok) return t.fail();
  const h = share.lookup(f.val.node, Buffer.from('f'));
  if (!h.ok) return t.fail();
  const n = h.val.node;
  const b = (s: string) => Buffer.from(s);
  t.true(share.setxattr(n, b('trusted.overlay.opaque'), b('y'), 0).ok);
  t.true(share.setxattr(n, b('user.plain'), b('1'), 0).ok, 'a name outside key passes as is');
  t.like(share.setxattr(n, b('user.virtiofs.sneak'), b('1'), 0), { ok: false, errno: 1 }, 'the prefix itself: EPERM');
  execFileSync('python3', ['-c', `import os; os.setxattr(${JSON.stringify(join(dir, 'f'))}, 'trusted.hostonly', b'z')`]);
  t.deepEqual(hostXattrs(join(dir, 'f')), ['trusted.hostonly=z', 'user.plain=1', 'user.virtiofs.trusted.overlay.opaque=y']);
  const list = share.listxattr(n);
  t.true(list.ok);
  if (list.ok) t.deepEqual(Buffer.from(list.val).toString().split('\0').filter(Boolean).sort(), ['trusted.overlay.opaque', 'user.plain'], 'the host\'s own trusted. name hidden');
});

test('the command line: --cache, --translate-uid/gid (repeatable) and --xattrmap in virtiofsd\'s syntax, bad values refused', (t) => {
  const base = ['--socket-path', '/tmp/x.sock', '--plugin', 'p.wasm', '--shared-dir', '/srv'];
  const o = parseCli([...base, '--cache', 'always', '--translate-uid', 'map:0:1000:1', '--translate-uid', 'forbid-guest:1:99', '--translate-gid', 'squash-host:0:0:4294967295', '--xattr', '--xattrmap', ':ok:all:::']);
  t.like(o.filesystem, { cache: 'always', xattr: true });
  t.deepEqual(o.filesystem?.translateUid, [{ kind: 'map', from: 0, to: 1000, count: 1 }, { kind: 'forbid-guest', from: 1, to: 0, count: 99 }]);
  t.deepEqual(o.filesystem?.xattrmap, [{ type: 'ok', client: true, server: true, key: '', prepend: '' }]);
  t.is(parseCli([...base, '--xattr', '--xattrmap', ':map::user.virtiofs.:']).filesystem?.xattrmap?.length, 2, 'the map shorthand, expanded');
  const bad: [string[], RegExp][] = [
    [['--cache', 'sometimes'], /--cache: "sometimes" is not one of never, metadata, auto, always/],
    [['--translate-uid', 'map:1:2'], /--translate-uid: "map:1:2": map takes/],
    [['--translate-uid', 'nope:1:2:3'], /the type must be one of/],
    [['--translate-gid', 'map:0:0:10', '--translate-gid', 'guest:5:100:1'], /overlaps an earlier rule/],
    [['--translate-uid', 'guest:4294967295:0:2'], /runs past/],
    [['--xattrmap', ':ok:all:::'], /--xattrmap applies to --xattr/],
    [['--xattr', '--xattrmap', ':ok:all::'], /rule 1 is incomplete/],
    [['--xattr', '--xattrmap', ':ok:some:::'], /scope "some"/],
    [['--xattr', '--xattrmap', ':map::user.virtiofs.::ok:all:::'], /"map" rule must be the last rule/],
  ];
  for (const [extra, re] of bad) t.throws(() => parseCli([...base, ...extra]), { message: re }, extra.join(' '));
  t.throws(() => parseCli(['--socket-path', '/tmp/x.sock', '--plugin', 'p.wasm', '--cache', 'never']), { message: /--cache applies to --shared-dir/ });
});
