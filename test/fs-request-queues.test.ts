// Several request queues (`--plugin-option request-queues=N`) on the built binary, driven by our
// front-end over real rings: the device reports 1 + N queues (GET_QUEUE_NUM) and N in its
// config space, one instance serves every ring (a node id or fh from one ring works on another),
// each reply comes back on the ring its request came on, a SETLKW held on ring 1 does not stop
// rings 2 and 3 (nor a stop and restart of ring 3), and a device with four rings migrates
// (SET_DEVICE_STATE_FD) with every ring serving the same handles on the destination.
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { migrate } from '../host/frontend/migrate.ts';
import { FuseClient, fhOfOpen, nodeOf, O, LK, lkIn, writeIn } from './helpers/fuse.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const OP = { GETATTR: 3, READ: 15, WRITE: 16, SETLK: 32, SETLKW: 33 };
const F_WRLCK = 1;
const F_UNLCK = 2;

async function setup(t: import('ava').ExecutionContext, extra: string[] = []) {
  if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(tmpdir(), 'fs-queues-'));
  writeFileSync(join(dir, 'data'), 'shared by every ring');
  const hosts: HostProcess[] = [];
  t.teardown(async () => {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  });
  const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--call-deadline', '5000', '--plugin-option', 'request-queues=3', ...extra];
  const start = async () => {
    const h = await startHost(args);
    hosts.push(h);
    return h;
  };
  const host = await start();
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, queues: [64, 64, 64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const rings = [1, 2, 3].map((q) => new FuseClient(fe, q));
  return { dir, host, fe, rings, start };
}

test('request-queues=3: four queues reported and configured, one instance serves all of them, replies on their own ring', async (t) => {
  const { dir, host, fe, rings } = await setup(t);
  t.is(fe.backendQueues, 4, 'GET_QUEUE_NUM: hiprio + 3 request queues');
  t.is(Buffer.from(await fe.getConfig(36, 4)).readUInt32LE(0), 3, 'config num_request_queues');
  t.regex(host.log(), /4 queue\(s\)/);
  const [r1, r2, r3] = rings;
  t.is((await r1.init()).error, 0, 'INIT on ring 1');
  // A node id from ring 2, an fh opened on ring 3, read on ring 1: one inode and file table.
  const node = nodeOf(await r2.lookup(1n, 'data'));
  const fh = fhOfOpen(await r3.open(node, O.RDWR));
  t.is((await r1.read(fh, 0, 100)).body.toString(), 'shared by every ring');
  // Many requests on every ring at once (one kick each): each answered, on its own ring.
  const all = rings.flatMap((c, i) => Array.from({ length: 20 }, (_, k) => c.read(fh, k % 7, 5).then((r) => ({ ring: i + 1, r }))));
  t.deepEqual(fe.queues.map((q) => q.inFlight), [0, 20, 20, 20], 'twenty in flight on each request ring');
  for (const { ring, r } of await Promise.all(all)) t.is(r.error, 0, `ring ${ring}`);
  t.deepEqual(fe.queues.map((q) => q.inFlight), [0, 0, 0, 0]);
  t.is((await r2.req(OP.WRITE, 0n, writeIn(fh, 0n, Buffer.from('SHARED')))).error, 0);
  t.is(readFileSync(join(dir, 'data'), 'utf8'), 'SHARED by every ring');
  t.notRegex(host.log(), / (ERROR|WARN) /, host.log());
});

test('a SETLKW held on ring 1 does not stop rings 2 and 3, nor a stop and restart of ring 3; the unlock answers it on ring 1', async (t) => {
  const { host, fe, rings } = await setup(t);
  const [r1, r2, r3] = rings;
  t.is((await r1.init()).error, 0);
  const node = nodeOf(await r1.lookup(1n, 'data'));
  const fhA = fhOfOpen(await r2.open(node, O.RDWR));
  const fhB = fhOfOpen(await r1.open(node, O.RDWR));
  t.is((await r2.req(OP.SETLK, 0n, lkIn(fhA, 1n, 0n, LK.END, F_WRLCK, 100))).error, 0, 'owner 1 locks the file (ring 2)');
  let answered = false;
  const waiting = r1.req(OP.SETLKW, 0n, lkIn(fhB, 2n, 0n, LK.END, F_WRLCK, 100)).then((r) => ((answered = true), r));
  // Ring 1's request waits; rings 2 and 3 go on (each round trip proves the device served them).
  for (let i = 0; i < 5; i++) {
    t.is((await r2.read(fhA, 0, 6)).body.toString(), 'shared');
    t.is((await r3.getattr(node)).error, 0);
  }
  t.false(answered, 'the SETLKW waits for the lock');
  t.is(fe.queues[1].inFlight, 1);
  // Ring 3 stops (GET_VRING_BASE) and starts again at its base while ring 1 holds the request.
  const base = await fe.stopQueue(3);
  await fe.startQueue(3, base);
  t.is((await r3.read(fhA, 7, 2)).body.toString(), 'by');
  t.false(answered);
  t.is((await r2.req(OP.SETLK, 0n, lkIn(fhA, 1n, 0n, LK.END, F_UNLCK, 100))).error, 0, 'owner 1 unlocks (ring 2)');
  t.is((await waiting).error, 0, 'the held SETLKW is answered, on ring 1, once the lock is free');
  t.is(fe.queues[1].inFlight, 0);
  t.notRegex(host.log(), / (ERROR|WARN) /, host.log());
});

test('a device with four rings migrates: every ring serves the same fh and node ids on the destination', async (t) => {
  const { dir, host, fe, rings, start } = await setup(t);
  const dest = await start();
  const [r1, r2, r3] = rings;
  t.is((await r1.init()).error, 0);
  const node = nodeOf(await r2.lookup(1n, 'data'));
  const fh = fhOfOpen(await r3.open(node, O.RDWR));
  for (const c of rings) t.is((await c.read(fh, 0, 6)).body.toString(), 'shared');
  const report = await migrate(fe, dest.socketPath, { channel: 'pipe' });
  t.log(`state moved: ${report.bytes} bytes`);
  t.regex(dest.log(), /device state loaded/);
  for (const [i, c] of rings.entries()) {
    t.is((await c.read(fh, 10, 5)).body.toString(), 'every', `READ on ring ${i + 1} after the migration`);
    t.is((await c.getattr(node)).error, 0, `GETATTR on ring ${i + 1}`);
  }
  t.is((await r2.req(OP.WRITE, 0n, writeIn(fh, 0n, Buffer.from('MOVED!')))).error, 0);
  t.is(readFileSync(join(dir, 'data'), 'utf8'), 'MOVED! by every ring');
  t.notRegex(dest.log(), / (ERROR|WARN) /, dest.log());
  t.notRegex(host.log(), / ERROR /, host.log());
});

test('request-queues must be a number from 1 to 64: anything else stops start-up with the reason', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-queues-bad-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const bad of ['0', '65', 'four', '']) {
    const err = await t.throwsAsync(startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--plugin-option', `request-queues=${bad}`]));
    t.regex(err!.message, /option request-queues: not a number of request queues from 1 to 64/, `request-queues=${bad}`);
  }
});

test('without the option the device has one request queue, as before', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-queues-default-'));
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir]);
  t.teardown(async () => {
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  t.is(fe.backendQueues, 2);
  t.is(Buffer.from(await fe.getConfig(36, 4)).readUInt32LE(0), 1);
  t.is((await new FuseClient(fe).init()).error, 0);
});
