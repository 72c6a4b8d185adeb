// A migration between two hosts does not carry the guest's file locks (they are the source
// host's open file descriptions; Rust virtiofsd 1.13 has no host locks at all: docs/virtio-fs.md,
// "Locks across upgrades, handovers, migrations and stops"). Not silently: the source says so
// when it saves the state, and the destination, which starts without them, serves on.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { migrate } from '../host/frontend/migrate.ts';
import { nodeOf, fhOfOpen, O, LK, lkIn } from './helpers/fuse.ts';
import { fsMigrationPair } from './helpers/fs-test-host.ts';

test('a migration with a lock held: the source warns that the state does not carry it, the destination starts without it and serves on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-locks-migration-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'f'), 'locked');
  const { a, b, fe, c } = await fsMigrationPair(t, dir);
  const f = nodeOf(await c.lookup(1n, 'f'));
  const fh = fhOfOpen(await c.open(f, O.RDWR));
  t.is((await c.req(32, 0n, lkIn(fh, 7n, 0n, LK.END, LK.WRLCK, 100))).error, 0);
  t.is((await c.req(32, 0n, lkIn(fh, 8n, 0n, LK.END, LK.WRLCK, 100))).error, 11, 'owner 8 is refused on the source');
  await migrate(fe, b.socketPath, { channel: 'pipe' });
  t.truthy(await a.waitForLog(/WARN .*device state saved for a migration without it: the guest holds 1 file lock\(s\) on the share.*the destination starts without them/));
  t.is((await c.getattr(f)).error, 0, 'the destination serves');
  t.is((await c.req(32, 0n, lkIn(fh, 8n, 0n, LK.END, LK.WRLCK, 100))).error, 0, 'the destination has no lock of owner 7');
});
