// A migration between two hosts does not carry the guest's file locks (they are the source
// host's open file descriptions; Rust virtiofsd 1.13 has no host locks at all: docs/virtio-fs.md,
// "Locks across upgrades, handovers, migrations and stops"). Not silently: the source says so
// when it saves the state, and the destination, which starts without them, serves on.
import test from 'ava';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { migrate } from '../host/frontend/migrate.ts';
import { FuseClient, nodeOf, fhOfOpen, O, LK, lkIn } from './helpers/fuse.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');

test('a migration with a lock held: the source warns that the state does not carry it, the destination starts without it and serves on', async (t) => {
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(tmpdir(), 'fs-locks-migration-'));
  writeFileSync(join(dir, 'f'), 'locked');
  const hosts: HostProcess[] = [];
  t.teardown(async () => {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  });
  const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--call-deadline', '5000'];
  const [a, b] = await Promise.all([startHost(args), startHost(args)]);
  hosts.push(a, b);
  const fe = await VhostUserFrontend.connect(a.socketPath, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  try {
    const c = new FuseClient(fe);
    t.is((await c.init()).error, 0);
    const f = nodeOf(await c.lookup(1n, 'f'));
    const fh = fhOfOpen(await c.open(f, O.RDWR));
    t.is((await c.req(32, 0n, lkIn(fh, 7n, 0n, LK.END, LK.WRLCK, 100))).error, 0);
    t.is((await c.req(32, 0n, lkIn(fh, 8n, 0n, LK.END, LK.WRLCK, 100))).error, 11, 'owner 8 is refused on the source');
    await migrate(fe, b.socketPath, { channel: 'pipe' });
    t.truthy(await a.waitForLog(/WARN .*device state saved for a migration without it: the guest holds 1 file lock\(s\) on the share.*the destination starts without them/));
    t.is((await c.getattr(f)).error, 0, 'the destination serves');
    t.is((await c.req(32, 0n, lkIn(fh, 8n, 0n, LK.END, LK.WRLCK, 100))).error, 0, 'the destination has no lock of owner 7');
  } finally {
    await fe.close();
  }
});
