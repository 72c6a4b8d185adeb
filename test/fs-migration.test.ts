// The fs plugin's state end to end: two real host processes serve the same shared directory;
// our vhost-user front-end drives FUSE requests through the real virtqueues on the source,
// migrates the device (SET_DEVICE_STATE_FD SAVE -> LOAD, CHECK), and the node ids and open
// file handles the "guest" holds keep working on the destination. (QEMU 7.2 cannot migrate
// vhost-user-fs, so this is the only end-to-end path here.)
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { migrate, MigrationError } from '../host/frontend/migrate.ts';
import { ioIn, u32s, writeIn } from './helpers/fuse.ts';
import { fsMigrationPair } from './helpers/fs-test-host.ts';

test('node ids and open files survive a live migration between two hosts', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-migration-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'data'), 'migrating data');
  const { b, fe, c } = await fsMigrationPair(t, dir);
  const sub = (await c.req(1, 1n, Buffer.from('sub\0'))).body.readBigUInt64LE(0);
  const data = (await c.req(1, sub, Buffer.from('data\0'))).body.readBigUInt64LE(0);
  const fh = (await c.req(14, data, u32s(2, 0))).body.readBigUInt64LE(0);
  t.is((await c.req(15, 0n, ioIn(fh, 0n, 100))).body.toString(), 'migrating data');

  const report = await migrate(fe, b.socketPath, { channel: 'pipe' });
  t.log(`state moved: ${report.bytes} bytes, downtime ${report.downtimeMs.toFixed(1)} ms`);
  t.regex(b.log(), /device state loaded/);

  // The destination serves the same ids without a new INIT.
  t.is((await c.req(15, 0n, ioIn(fh, 10n, 100))).body.toString(), 'data', 'READ through the migrated fh');
  const w = await c.req(16, 0n, writeIn(fh, 14n, Buffer.from(' done')));
  t.is(w.error, 0);
  t.is(readFileSync(join(dir, 'sub', 'data'), 'utf8'), 'migrating data done');
  const attr = await c.req(3, data, Buffer.alloc(16));
  t.is(attr.body.readBigUInt64LE(16 + 8), 19n, 'GETATTR of the migrated node id');
  t.is((await c.req(1, sub, Buffer.from('data\0'))).body.readBigUInt64LE(0), data, 'same node id on a new lookup');
  t.notRegex(b.log(), / (ERROR|WARN) /, b.log());
});

// --migration-on-error: the destination's share lacks a file the guest holds open (deleted
// there before the migration). abort (the default): the destination's LOAD/CHECK fails with a
// log line naming the path, the migration fails and the source resumes with its data intact.
// guest-error: the migration succeeds and the guest gets EIO for that file only.
async function lostFileMigration(t: import('ava').ExecutionContext, destPolicy: string[]) {
  const srcDir = mkdtempSync(join(tmpdir(), 'fs-migration-src-'));
  const dstDir = mkdtempSync(join(tmpdir(), 'fs-migration-dst-'));
  for (const d of [srcDir, dstDir]) {
    mkdirSync(join(d, 'sub'));
    writeFileSync(join(d, 'sub', 'data'), 'migrating data');
    writeFileSync(join(d, 'other'), 'other file');
  }
  t.teardown(() => {
    rmSync(srcDir, { recursive: true, force: true });
    rmSync(dstDir, { recursive: true, force: true });
  });
  const { a, b, fe, c } = await fsMigrationPair(t, srcDir, { dstDir, dstArgs: destPolicy });
  const sub = (await c.req(1, 1n, Buffer.from('sub\0'))).body.readBigUInt64LE(0);
  const data = (await c.req(1, sub, Buffer.from('data\0'))).body.readBigUInt64LE(0);
  const fh = (await c.req(14, data, u32s(2, 0))).body.readBigUInt64LE(0);
  const other = (await c.req(1, 1n, Buffer.from('other\0'))).body.readBigUInt64LE(0);
  const ofh = (await c.req(14, other, u32s(0, 0))).body.readBigUInt64LE(0);
  t.is((await c.req(15, 0n, ioIn(fh, 0n, 100))).body.toString(), 'migrating data');
  rmSync(join(dstDir, 'sub', 'data'));
  return { fe, c, a, b, fh, ofh, data, srcDir, dstDir };
}

test('a file missing on the destination fails the migration (default abort); the source keeps serving', async (t) => {
  const { fe, c, a, b, fh, srcDir } = await lostFileMigration(t, []);
  const err = await t.throwsAsync(migrate(fe, b.socketPath, { channel: 'pipe' }), { instanceOf: MigrationError });
  t.log(err!.message);
  t.true((err as MigrationError).sourceResumed, err!.message);
  // CHECK_DEVICE_STATE carries only a status: the reason is in the destination's log.
  t.regex(err!.message, /CHECK_DEVICE_STATE failed/);
  await b.waitForLog(/cannot find "sub\/data" \(node \d+\) in the destination's share: ENOENT \(--migration-on-error abort\)/, 5000);
  t.notRegex(b.log(), /device state loaded/);
  // The source still serves the same fh, and its data is intact.
  t.is((await c.req(15, 0n, ioIn(fh, 0n, 100))).body.toString(), 'migrating data', 'READ on the source after the failure');
  t.is((await c.req(16, 0n, writeIn(fh, 14n, Buffer.from(' more')))).error, 0);
  t.is(readFileSync(join(srcDir, 'sub', 'data'), 'utf8'), 'migrating data more');
  t.notRegex(a.log(), / ERROR /, a.log());
});

test('--migration-on-error guest-error: the migration succeeds, the lost file answers EIO, the rest works', async (t) => {
  const { fe, c, b, fh, ofh, data, dstDir } = await lostFileMigration(t, ['--migration-on-error', 'guest-error']);
  const report = await migrate(fe, b.socketPath, { channel: 'pipe' });
  t.log(`state moved: ${report.bytes} bytes`);
  t.regex(b.log(), /cannot find "sub\/data" \(node \d+\) in the destination's share: ENOENT; the guest gets EIO for it/);
  t.regex(b.log(), /device state loaded/);
  const EIO = 5;
  t.is((await c.req(15, 0n, ioIn(fh, 0n, 100))).error, EIO, 'READ through the lost fh');
  t.is((await c.req(16, 0n, writeIn(fh, 0n, Buffer.from('x')))).error, EIO, 'WRITE through the lost fh');
  t.is((await c.req(3, data, Buffer.alloc(16))).error, EIO, 'GETATTR of the lost node id');
  t.false(existsSync(join(dstDir, 'sub', 'data')), 'nothing recreated it');
  t.is((await c.req(15, 0n, ioIn(ofh, 0n, 100))).body.toString(), 'other file', 'the other open file works');
});
