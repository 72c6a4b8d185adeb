// A guest that goes away holding file locks (issue 12, "a lock held by a guest that disconnects
// is released"): the built host serving the fs plugin, our front-end as the guest. It takes a
// POSIX record lock and a flock through the device, then its connection closes with no unlock,
// RELEASE or RESET_DEVICE first, as when QEMU is killed. The locks are the host process's (open
// file descriptions it holds for the guest), so nothing but the host can let them go: a host
// process must then get both, and the next front-end must get them too.
import test from 'ava';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { FuseClient, nodeOf, fhOfOpen, O, LK, lkIn } from './helpers/fuse.ts';
import { hostTryLock } from './helpers/host-lock.ts';
import { fsTestHost } from './helpers/fs-test-host.ts';
import { eventually } from './helpers/host-process.ts';

const SETLK = 32;
const EAGAIN = 11;

/** SETLK of the whole file for `owner` through `fh` (a flock when `flock`): the errno, 0 when granted. */
async function lockWhole(c: FuseClient, fh: bigint, owner: bigint, flock = false): Promise<number> {
  return (await c.req(SETLK, 0n, lkIn(fh, owner, 0n, LK.END, LK.WRLCK, 100, flock))).error;
}

test('a front-end that disconnects holding a record lock and a flock: the host lets both go; a host process and the next front-end get them', async (t) => {
  const { dir, host, fe, c } = await fsTestHost(t, 'fs-locks-disconnect-', { rec: 'record lock', fl: 'flock' }, ['--call-deadline', '10000']);
  const rec = join(dir, 'rec');
  const fl = join(dir, 'fl');
  const recFh = fhOfOpen(await c.open(nodeOf(await c.lookup(1n, 'rec')), O.RDWR));
  const flFh = fhOfOpen(await c.open(nodeOf(await c.lookup(1n, 'fl')), O.RDONLY));
  t.is(await lockWhole(c, recFh, 7n), 0, 'the guest write-locks rec');
  t.is(await lockWhole(c, flFh, 8n, true), 0, 'the guest flocks fl');
  t.is(hostTryLock(rec, 'lockf'), 'busy', 'a host process is refused the record lock');
  t.is(hostTryLock(fl, 'flock'), 'busy', 'and the flock');

  await fe.close();
  await host.waitForLog(/front-end disconnected/);
  t.true(await eventually(() => hostTryLock(rec, 'lockf') === 'locked', 10_000), 'the record lock was let go');
  t.true(await eventually(() => hostTryLock(fl, 'flock') === 'locked', 10_000), 'the flock was let go');

  // The next front-end (a rebooted guest) locks both files.
  const next = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => next.close());
  const c2 = new FuseClient(next);
  t.is((await c2.init()).error, 0, 'INIT');
  const recFh2 = fhOfOpen(await c2.open(nodeOf(await c2.lookup(1n, 'rec')), O.RDWR));
  const flFh2 = fhOfOpen(await c2.open(nodeOf(await c2.lookup(1n, 'fl')), O.RDONLY));
  t.is(await lockWhole(c2, recFh2, 7n), 0, 'the next guest gets the record lock');
  t.is(await lockWhole(c2, flFh2, 8n, true), 0, 'and the flock');
  t.is(await lockWhole(c2, recFh2, 9n), EAGAIN, 'held now by the next guest: another owner is refused');
  t.is(hostTryLock(rec, 'lockf'), 'busy', 'and so is a host process');
  t.notRegex(host.log(), / ERROR /, host.log());
});
