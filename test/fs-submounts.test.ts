// A file system mounted inside the share (docs/virtio-fs.md: "Mount points inside the share are
// not crossed (EXDEV)"), against the built host serving the fs plugin and our front-end as the
// guest: the mount point is listed but refused the same way on every path (LOOKUP, READDIRPLUS),
// nothing of the mounted file system is reachable, not even through a node the guest looked up
// before the mount appeared, and the rest of the share is served. Needs root (mount).
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare } from '../host/fs/index.ts';
import { execFileSync } from 'node:child_process';
import { nodeOf, fhOfOpen, ioIn, u32s, direntplus, O } from './helpers/fuse.ts';
import { fsTestHost } from './helpers/fs-test-host.ts';

const OP = { OPENDIR: 27, READDIRPLUS: 44 };
const E = { ENOENT: 2, EXDEV: 18 };

test('a mount point inside the share: LOOKUP is EXDEV, READDIRPLUS lists it without a node, nothing under it is reachable, the rest is served', async (t) => {
  const { dir, host, c } = await fsTestHost(t, 'fs-submounts-', { plain: 'served' }, ['--call-deadline', '10000']);
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'under'), 'the directory under the mount');
  const before = nodeOf(await c.lookup(1n, 'sub'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', join(dir, 'sub')]);
  t.teardown(() => execFileSync('umount', [join(dir, 'sub')]));
  writeFileSync(join(dir, 'sub', 'inside'), 'on the mounted file system');

  t.is((await c.lookup(1n, 'sub')).error, E.EXDEV, 'LOOKUP of the mount point');
  const dh = fhOfOpen(await c.req(OP.OPENDIR, 1n, u32s(0, 0)));
  const listing = await c.req(OP.READDIRPLUS, 1n, ioIn(dh, 0n, 4096));
  t.is(listing.error, 0);
  const entries = new Map(direntplus(listing.body).map((e) => [e.name, e.node]));
  t.is(entries.get('sub'), 0n, 'READDIRPLUS lists the mount point with no node (the guest\'s own LOOKUP then gets EXDEV)');
  t.not(entries.get('plain'), 0n, 'the other entries come looked up');
  // A node of the directory from before the mount is the directory under it, never the mount.
  t.is((await c.lookup(before, 'inside')).error, E.ENOENT, 'the mounted file system is not reached through the old node');
  t.is((await c.lookup(before, 'under')).error, 0, 'the old node is the directory the mount covers');
  // The rest of the share is served.
  const fh = fhOfOpen(await c.open(nodeOf(await c.lookup(1n, 'plain')), O.RDONLY));
  t.is((await c.read(fh, 0, 100)).body.toString(), 'served');
  t.notRegex(host.log(), / ERROR /, host.log());
});

// lookup-known first checks a held name without opening it (its stat and file handle by name):
// a directory bind-mounted onto itself has the very (dev, ino) and file handle it had, so only
// the mount id shows the mount point. It must answer EXDEV as LOOKUP does, never "the inode held".
for (const inodeFileHandles of ['prefer', 'never'] as const) {
  test(`${inodeFileHandles}: lookup-known of a held directory bind-mounted onto itself is EXDEV`, (t) => {
    const top = mkdtempSync(join(tmpdir(), 'fs-submounts-'));
    const dir = join(top, 'share');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    const s = new FsShare(dir, { inodeFileHandles });
    t.teardown(() => (s.close(), rmSync(top, { recursive: true, force: true })));
    const root = s.root();
    const sub = root.ok ? s.lookup(root.val.node, Buffer.from('sub')) : root;
    if (!root.ok || !sub.ok) return t.fail('lookup');
    const { node, attr } = sub.val;
    // As the plugin passes them: u64s, BigInts.
    const [dev, ino] = [BigInt(attr.dev), BigInt(attr.ino)];
    const known = s.lookupKnown(root.val.node, Buffer.from('sub'), node, dev, ino);
    t.true(known.ok && known.val.node === 0n, 'before the mount: the inode held');
    execFileSync('mount', ['--bind', join(dir, 'sub'), join(dir, 'sub')]);
    t.teardown(() => execFileSync('umount', [join(dir, 'sub')]));
    const after = s.lookupKnown(root.val.node, Buffer.from('sub'), node, dev, ino);
    t.deepEqual(after.ok ? 'ok' : after.errno, E.EXDEV);
  });
}
