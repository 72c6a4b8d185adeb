// A SETLKW the fs device holds (waiting for a host lock) when the front-end stops the ring with
// GET_VRING_BASE, as QEMU does at a migration's stop: the real host process answers it before
// it hands back the base (ENOLCK when the lock still conflicts: host/fs/locks.ts says why not
// EINTR), so the request is neither lost behind the base nor keeps the stop waiting, and the
// ring, restarted, serves on with waits that wait again.
import test from 'ava';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, startHost } from './helpers/host-process.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { FuseClient, nodeOf, fhOfOpen, O, LK, lkIn } from './helpers/fuse.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { hostLock } from './helpers/host-lock.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const SETLK = 32;
const SETLKW = 33;
const { WRLCK: F_WRLCK, UNLCK: F_UNLCK, END } = LK;
const E = { EAGAIN: 11, ENOLCK: 37 };

test('GET_VRING_BASE with a SETLKW waiting: it is answered ENOLCK before the base, the host does not report a held request, the restarted ring waits again', async (t) => {
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(tmpdir(), 'fs-locks-stop-'));
  writeFileSync(join(dir, 'f'), 'locked file');
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--call-deadline', '5000']);
  let release = await hostLock(join(dir, 'f'), 'lockf');
  t.teardown(async () => {
    await release();
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  try {
    const c = new FuseClient(fe);
    t.is((await c.init()).error, 0, 'INIT');
    const node = nodeOf(await c.lookup(1n, 'f'));
    const fh = fhOfOpen(await c.open(node, O.RDWR));
    // The host process holds bytes 0..3: the guest's write lock of the whole file must wait.
    let answered = false;
    const waiting = c.req(SETLKW, 0n, lkIn(fh, 7n, 0n, END, F_WRLCK, 100)).finally(() => (answered = true));
    // A request after it on the same ring is answered while it waits (so it was popped and held).
    t.is((await withTimeout(c.getattr(node), 10_000, 'GETATTR behind the waiting SETLKW')).error, 0);
    t.false(answered, 'the SETLKW waits for the host lock');
    const base = await withTimeout(fe.stopQueue(1), 10_000, 'GET_VRING_BASE');
    t.is(base, 5, 'INIT, LOOKUP, OPEN, SETLKW and GETATTR are behind the base');
    t.is((await withTimeout(waiting, 10_000, 'the SETLKW answer')).error, E.ENOLCK, 'answered, not lost');
    t.notRegex(host.log(), /request\(s\) the device holds/, 'nothing was left held at the stop');
    await fe.startQueue(1, base);
    t.is((await c.req(SETLK, 0n, lkIn(fh, 7n, 0n, END, F_WRLCK, 100))).error, E.EAGAIN, 'the host process still holds its lock');
    // After the restart a SETLKW waits again and is granted once the host process lets go.
    answered = false;
    const again = c.req(SETLKW, 0n, lkIn(fh, 7n, 0n, END, F_WRLCK, 100)).finally(() => (answered = true));
    t.is((await c.getattr(node)).error, 0);
    t.false(answered, 'waits again');
    await release();
    release = async () => {};
    t.is((await withTimeout(again, 10_000, 'the SETLKW after the host let go')).error, 0, 'granted');
    t.is((await c.req(SETLK, 0n, lkIn(fh, 7n, 0n, END, F_UNLCK, 100))).error, 0);
  } finally {
    await fe.close();
  }
});
