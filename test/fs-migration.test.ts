// The fs plugin's state end to end: two real host processes serve the same shared directory;
// our vhost-user front-end drives FUSE requests through the real virtqueues on the source,
// migrates the device (SET_DEVICE_STATE_FD SAVE -> LOAD, CHECK), and the node ids and open
// file handles the "guest" holds keep working on the destination. (QEMU 7.2 cannot migrate
// vhost-user-fs, so this is the only end-to-end path here.)
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { migrate } from '../host/frontend/migrate.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');

let unique = 1n;
async function fuse(fe: VhostUserFrontend, opcode: number, nodeid: bigint, args: Buffer, writable = 8192) {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + args.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique++, 8);
  h.writeBigUInt64LE(nodeid, 16);
  const r = await fe.queues[1].submit([Buffer.concat([h, args])], writable);
  const out = Buffer.from(r.data.subarray(0, r.len));
  return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
}
const u32s = (...v: number[]) => Buffer.from(new Uint32Array(v).buffer);
const ioIn = (fh: bigint, off: number, size: number) => {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(fh, 0);
  b.writeBigUInt64LE(BigInt(off), 8);
  b.writeUInt32LE(size, 16);
  return b;
};

test('node ids and open files survive a live migration between two hosts', async (t) => {
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(tmpdir(), 'fs-migration-'));
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'data'), 'migrating data');
  const hosts: HostProcess[] = [];
  t.teardown(async () => {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  });
  const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--call-deadline', '5000'];
  const [a, b] = await Promise.all([startHost(args), startHost(args)]);
  hosts.push(a, b);
  const fe = await VhostUserFrontend.connect(a.socketPath, {
    memoryBytes: 16 << 20,
    queues: [64, 64],
    features: 1n << BigInt(VIRTIO_F_VERSION_1),
  });
  try {
    t.is((await fuse(fe, 26, 0n, u32s(7, 31, 65536, 0xffffffff))).error, 0, 'INIT');
    const sub = (await fuse(fe, 1, 1n, Buffer.from('sub\0'))).body.readBigUInt64LE(0);
    const data = (await fuse(fe, 1, sub, Buffer.from('data\0'))).body.readBigUInt64LE(0);
    const fh = (await fuse(fe, 14, data, u32s(2, 0))).body.readBigUInt64LE(0);
    t.is((await fuse(fe, 15, 0n, ioIn(fh, 0, 100))).body.toString(), 'migrating data');

    const report = await migrate(fe, b.socketPath, { channel: 'pipe' });
    t.log(`state moved: ${report.bytes} bytes, downtime ${report.downtimeMs.toFixed(1)} ms`);
    t.regex(b.log(), /device state loaded/);

    // The destination serves the same ids without a new INIT.
    t.is((await fuse(fe, 15, 0n, ioIn(fh, 10, 100))).body.toString(), 'data', 'READ through the migrated fh');
    const w = await fuse(fe, 16, 0n, Buffer.concat([ioIn(fh, 14, 5), Buffer.from(' done')]));
    t.is(w.error, 0);
    t.is(readFileSync(join(dir, 'sub', 'data'), 'utf8'), 'migrating data done');
    const attr = await fuse(fe, 3, data, Buffer.alloc(16));
    t.is(attr.body.readBigUInt64LE(16 + 8), 19n, 'GETATTR of the migrated node id');
    t.is((await fuse(fe, 1, sub, Buffer.from('data\0'))).body.readBigUInt64LE(0), data, 'same node id on a new lookup');
    t.notRegex(b.log(), / (ERROR|WARN) /, b.log());
  } finally {
    await fe.close();
  }
});
