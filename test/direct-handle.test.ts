// The host's own lowering of `handle`'s events and lifting of its actions (host/plugin/
// direct-handle.ts) against jco's generated glue for the same components: the same batches
// through both paths give the same actions, for every kind of event and answer the in-tree
// plugins produce (literal bytes, backing reads, transfers, ops, barriers, length-at).
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { MemoryBacking } from '../host/storage/memory.ts';
import type { DeviceEvent } from '../host/device/device.ts';
import { preparePlugin } from '../host/plugin/prepare.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'direct-handle-'));

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

const plugin = (name: string) => readFileSync(join(root, 'dist', 'plugins', `${name}.wasm`));

async function blk(handlePath: 'direct' | 'jco'): Promise<PluginDevice> {
  const dev = await loadPlugin(plugin('blk'), { grants: { storage: new MemoryBacking(1 << 20, false), log() {} }, cacheDir, handlePath });
  dev.activate(dev.info.features);
  return dev;
}

/** One batch through both paths: the actions must be equal; returns the direct path's. */
function bothPaths(t: ExecutionContext, direct: PluginDevice, jco: PluginDevice, batch: DeviceEvent[]): ReturnType<PluginDevice['handle']> {
  const a = direct.handle(batch);
  t.deepEqual(a, jco.handle(batch));
  return a;
}

/** The fs plugin on a share of `dir` through each path; each share goes into `shares` (for the caller to close). */
async function fsBothPaths(dir: string, shares: { close(): void }[]): Promise<{ direct: PluginDevice; jco: PluginDevice }> {
  const { FsShare } = await import('../host/fs/share.ts');
  const load = async (handlePath: 'direct' | 'jco') => {
    const share = new FsShare(dir, {});
    shares.push(share);
    return loadPlugin(plugin('fs'), { grants: { filesystem: share, log() {} }, cacheDir, handlePath });
  };
  return { direct: await load('direct'), jco: await load('jco') };
}

/** A virtio-blk request header (type, sector) as the prefix the plugin sees. */
function blkRequest(id: number, type: number, sector: number, readableLen: number, writableLen: number): DeviceEvent {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(BigInt(sector), 8);
  return { kind: 'request', request: { id, queue: 0, prefix: h, readableLen, writableLen } };
}

test('the in-tree plugins get the direct path: their glue routes the core call of handle through the hook', async (t) => {
  for (const name of ['rng', 'blk', 'fs']) {
    const prepared = await preparePlugin(plugin(name), cacheDir);
    // Inside jco's bookkeeping (`fn: () => (...)`) or, with it gone (host/plugin/glue.ts), straight (`ret = (...)`).
    t.regex(prepared.glue, /(fn: \(\) =>|ret =) +\(_vhLift\.hot !== null \? _vhLift\.hot\([\w$]+, realloc\d+, memory\d+, result\d+\) : /, name);
  }
  t.is((await blk('direct')).handlePath, 'direct');
  t.is((await blk('jco')).handlePath, 'jco');
});

test('blk: reads, writes, flush (barrier), discard, write-zeroes, get-id, bad types and io-failed answer the same through both paths', async (t) => {
  const direct = await blk('direct');
  const jco = await blk('jco');
  const batches: DeviceEvent[][] = [
    [blkRequest(0, 0, 0, 16, 4096 + 1), blkRequest(1, 1, 8, 16 + 4096, 1), blkRequest(2, 4, 0, 16, 1)],
    [blkRequest(3, 11, 0, 16 + 16, 1), blkRequest(4, 13, 0, 16 + 16, 1), blkRequest(5, 8, 0, 16, 20 + 1)],
    [blkRequest(6, 99, 0, 16, 1), blkRequest(7, 0, 1 << 20, 16, 513), { kind: 'io-failed', id: 1, errno: 28 }],
    [],
  ];
  for (const b of batches) bothPaths(t, direct, jco, b);
  // And the shapes are what blk answers: a read is a backing-read piece then its status byte.
  const [read] = direct.handle([blkRequest(9, 0, 2, 16, 1024 + 1)]);
  t.like(read, { kind: 'answer', answer: { id: 9, reply: [{ kind: 'backing-read', extent: { backing: 0, offset: 1024, len: 1024 } }, { kind: 'bytes' }] } });
});

test('rng: the same shapes through both paths, and the direct path copes with the plugin memory growing', async (t) => {
  const load = (handlePath: 'direct' | 'jco') => loadPlugin(plugin('rng'), { grants: { entropy: true, log() {} }, cacheDir, handlePath });
  const direct = await load('direct');
  const jco = await load('jco');
  const batch: DeviceEvent[] = Array.from({ length: 64 }, (_, id) => ({ kind: 'request', request: { id, queue: 0, prefix: new Uint8Array(0), readableLen: 0, writableLen: 65536 } }));
  const shape = (xs: ReturnType<PluginDevice['handle']>) => xs.map((a) => (a.kind === 'answer' ? [a.answer.id, a.answer.reply.map((p) => (p.kind === 'bytes' ? p.bytes.length : -1))] : a.kind));
  const before = direct.memoryBytes();
  const a = direct.handle(batch);
  t.true(direct.memoryBytes() > before, 'memory grew during the call');
  t.deepEqual(shape(a), shape(jco.handle(batch)));
  const last = a[63];
  t.true(last.kind === 'answer' && last.answer.reply[0].kind === 'bytes' && new Set(last.answer.reply[0].bytes).size > 250, 'random bytes, not stale memory');
});

test('fs: a FUSE_INIT answers the same through both paths', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'direct-handle-share-'));
  const shares: { close(): void }[] = [];
  try {
    const { direct, jco } = await fsBothPaths(dir, shares);
    // FUSE_INIT (opcode 26): in-header (40 bytes) + init_in (major 7, minor 31).
    const init = Buffer.alloc(40 + 64);
    init.writeUInt32LE(init.length, 0);
    init.writeUInt32LE(26, 4);
    init.writeBigUInt64LE(1n, 8);
    init.writeUInt32LE(7, 40);
    init.writeUInt32LE(31, 44);
    const ev: DeviceEvent[] = [{ kind: 'request', request: { id: 0, queue: 1, prefix: init, readableLen: init.length, writableLen: 256 } }];
    t.is(bothPaths(t, direct, jco, ev).length, 1);
  } finally {
    for (const s of shares) s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('net: frame events, frame-read pieces, sends (flood and to a port) and wake-afters the same through both paths', async (t) => {
  const { buildPlugin } = await import('../plugins/build-plugins.mjs');
  const outFile = join(cacheDir, 'net-echo.wasm');
  await buildPlugin({ root, sources: [join(root, 'test', 'fixtures', 'plugins', 'net-echo.c')], outFile });
  const logs: string[] = [];
  const load = async (handlePath: 'direct' | 'jco') => {
    const dev = await loadPlugin(readFileSync(outFile), { grants: { networks: [{ mtu: 1500 }], log: (_l, m) => logs.push(m) }, cacheDir, handlePath });
    dev.activate(0n);
    return dev;
  };
  const direct = await load('direct');
  const jco = await load('jco');
  t.deepEqual(logs, ['networks 1', 'networks 1'], 'network.count answers through the import');
  const frameEvent = (id: number, fromPort: number, len: number): DeviceEvent => {
    const bytes = new Uint8Array(len).map((_, i) => (i * 3 + id) & 0xff);
    return { kind: 'frame', frame: { id, network: 0, fromPort, len, prefix: bytes.subarray(0, Math.min(len, 32)) } };
  };
  const req = (id: number, queue: number, first: number, readableLen: number, writableLen: number): DeviceEvent => ({
    kind: 'request',
    request: { id, queue, prefix: new Uint8Array(Math.min(readableLen, 32)).fill(first), readableLen, writableLen },
  });
  const batches: DeviceEvent[][] = [
    [req(0, 0, 0, 0, 2048), req(1, 0, 0, 0, 2048), req(2, 0, 0, 0, 2048)],
    [frameEvent(0, 3, 60), frameEvent(1, 4, 1514), req(3, 1, 2, 60, 1), req(4, 1, 1, 1514, 1), { kind: 'timer', token: 7n }],
    [frameEvent(0, 9, 10)],
  ];
  const results = batches.map((b) => bothPaths(t, direct, jco, b));
  const second = results[1];
  t.like(second.find((x) => x.kind === 'answer' && x.answer.id === 0), {
    answer: { reply: [{ kind: 'bytes' }, { kind: 'frame-read', slice: { frame: 0, offset: 0, len: 14 } }, { kind: 'frame-read', slice: { frame: 0, offset: 14, len: 46 } }] },
  });
  t.deepEqual(
    second.filter((x) => x.kind === 'send'),
    [
      { kind: 'send', send: { network: 0, request: 3, source: 0, len: 60, to: null } },
      { kind: 'send', send: { network: 0, request: 4, source: 0, len: 1514, to: 5 } },
    ],
  );
  t.deepEqual(
    second.filter((x) => x.kind === 'wake-after'),
    [
      { kind: 'wake-after', nanoseconds: 1_000_000n, token: 3n },
      { kind: 'wake-after', nanoseconds: 1_000_000n, token: 4n },
    ],
  );
});

test('fs: the reply bytes of earlier calls stay intact while later calls answer (many calls share the lifting arena)', async (t) => {
  const { writeFileSync } = await import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'direct-handle-share-'));
  const shares: { close(): void }[] = [];
  try {
    for (let i = 0; i < 300; i++) writeFileSync(join(dir, `f${i}`), 'x'.repeat(i));
    const { direct, jco } = await fsBothPaths(dir, shares);
    const fuse = (id: number, opcode: number, body: Buffer, writableLen: number): DeviceEvent[] => {
      const p = Buffer.concat([Buffer.alloc(40), body]);
      p.writeUInt32LE(p.length, 0);
      p.writeUInt32LE(opcode, 4);
      p.writeBigUInt64LE(BigInt(id + 1), 8);
      p.writeBigUInt64LE(1n, 16); // the root
      return [{ kind: 'request', request: { id, queue: 1, prefix: p, readableLen: p.length, writableLen } }];
    };
    const init = Buffer.alloc(64);
    init.writeUInt32LE(7, 0);
    init.writeUInt32LE(31, 4);
    bothPaths(t, direct, jco, fuse(0, 26, init, 256));
    // One LOOKUP per call (a TCG guest's one request per batch), each reply (~144 bytes: each
    // file's own size and inode) held, as an answer is while its I/O runs: 300 calls fill
    // several arenas.
    const held: ReturnType<PluginDevice['handle']>[] = [];
    const expected: ReturnType<PluginDevice['handle']>[] = [];
    for (let i = 0; i < 300; i++) {
      const ev = fuse(i + 1, 1, Buffer.from(`f${i}\0`), 256);
      held.push(direct.handle(ev));
      expected.push(jco.handle(ev));
    }
    const bytesOf = (a: ReturnType<PluginDevice['handle']>) => (a[0].kind === 'answer' && a[0].answer.reply[0].kind === 'bytes' ? Buffer.from(a[0].answer.reply[0].bytes) : null);
    t.true(held.every((a) => bytesOf(a) !== null && bytesOf(a)!.length > 100), 'every LOOKUP answered with an entry');
    t.deepEqual(held, expected);
  } finally {
    for (const s of shares) s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
