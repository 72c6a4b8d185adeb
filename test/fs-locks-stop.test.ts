// A SETLKW the fs device holds (waiting for a host lock) when the front-end stops the ring with
// GET_VRING_BASE, as QEMU does at a migration's stop: the real host process answers it before
// it hands back the base (ENOLCK when the lock still conflicts: host/fs/locks.ts says why not
// EINTR), so the request is neither lost behind the base nor keeps the stop waiting, and the
// ring, restarted, serves on with waits that wait again.
import test from 'ava';
import { join } from 'node:path';
import { nodeOf, fhOfOpen, O, LK, lkIn } from './helpers/fuse.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { hostLock } from './helpers/host-lock.ts';
import { fsTestHost } from './helpers/fs-test-host.ts';
const SETLK = 32;
const SETLKW = 33;
const { WRLCK: F_WRLCK, UNLCK: F_UNLCK, END } = LK;
const E = { EAGAIN: 11, ENOLCK: 37 };

test('GET_VRING_BASE with a SETLKW waiting: it is answered ENOLCK before the base, the host does not report a held request, the restarted ring waits again', async (t) => {
  const { dir, host, fe, c } = await fsTestHost(t, 'fs-locks-stop-', { f: 'locked file' }, ['--call-deadline', '5000']);
  let release = await hostLock(join(dir, 'f'), 'lockf');
  t.teardown(() => release());
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
});
