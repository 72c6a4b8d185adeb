// The guest's locks across a live plugin upgrade, through a real host process: the new
// instance's share takes over the descriptions that hold them (host/fs/lock-handoff.ts), so
// after the upgrade the guest still holds its record locks and its flock (another owner and a
// host process are refused them), an unlock works, closing the file lets the flock go, and a
// FLUSH still drops the closing process's record locks (the plugin's state, version 2, says the
// guest asked for record locks).
import test from 'ava';
import { join } from 'node:path';
import { rawRpc } from './helpers/daemon-process.ts';
import { nodeOf, fhOfOpen, O, LK, lkIn, releaseIn } from './helpers/fuse.ts';
import { hostTryLock as hostTry } from './helpers/host-lock.ts';
import { fsTestHost, FS_PLUGIN } from './helpers/fs-test-host.ts';
const OP = { RELEASE: 18, FLUSH: 25, SETLK: 32 };
const { RDLCK: F_RDLCK, WRLCK: F_WRLCK, UNLCK: F_UNLCK, END } = LK;
const E = { EAGAIN: 11 };

test('a live plugin upgrade keeps the guest\'s record locks and flock: refused to others after it, unlock, close and FLUSH still work', async (t) => {
  const { dir, host, c } = await fsTestHost(t, 'fs-locks-upgrade-', { rec: 'record locks', fl: 'flock' }, ['--call-deadline', '10000']);
  const setlk = async (fh: bigint, owner: bigint, start: bigint, end: bigint, type: number, flock = false) => (await c.req(OP.SETLK, 0n, lkIn(fh, owner, start, end, type, 100 + Number(owner), flock))).error;
  const rec = nodeOf(await c.lookup(1n, 'rec'));
  const fl = nodeOf(await c.lookup(1n, 'fl'));
  const recA = fhOfOpen(await c.open(rec, O.RDWR));
  const recB = fhOfOpen(await c.open(rec, O.RDONLY));
  const flA = fhOfOpen(await c.open(fl, O.RDONLY));
  // Owner 7 (an OFD lock's owner: its open file recA) write-locks the whole file; owner 9 (a
  // process, through recB) read-locks nothing yet; flA holds a flock (owner 11: its open file).
  t.is(await setlk(recA, 7n, 0n, END, F_WRLCK), 0);
  t.is(await setlk(flA, 11n, 0n, END, F_WRLCK, true), 0);
  t.is(hostTry(join(dir, 'rec'), 'lockf'), 'busy', 'before: the host sees the record lock');
  t.is(hostTry(join(dir, 'fl'), 'flock'), 'busy', 'before: the host sees the flock');

  const [up] = (await rawRpc(`${host.socketPath}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'plugin-upgrade', params: { plugin: FS_PLUGIN } })], 1)) as { error?: { message: string }; result?: unknown }[];
  t.falsy(up.error, `the upgrade went through: ${JSON.stringify(up)}`);
  t.regex(host.log(), /upgrade/i);

  // After: the same locks, held by the same owners.
  t.is(hostTry(join(dir, 'rec'), 'lockf'), 'busy', 'after: the host still sees the record lock');
  t.is(hostTry(join(dir, 'fl'), 'flock'), 'busy', 'after: the host still sees the flock');
  t.is(await setlk(recB, 9n, 0n, 0n, F_RDLCK), E.EAGAIN, 'another owner is refused');
  t.is(await setlk(recA, 7n, 0n, 0n, F_WRLCK), 0, 'the holder may lock again what it holds');
  // An unlock of part of the range frees that part only.
  t.is(await setlk(recA, 7n, 0n, 3n, F_UNLCK), 0);
  t.is(hostTry(join(dir, 'rec'), 'lockf'), 'locked', 'bytes 0..3 unlocked');
  t.is(await setlk(recB, 9n, 10n, 10n, F_RDLCK), E.EAGAIN, 'the rest is still owner 7\'s');
  // Owner 9 takes a process lock on bytes 0..3 (through recB), then its process closes recB:
  // FLUSH with owner 9 drops it (the state told the new instance the guest asked for record locks).
  t.is(await setlk(recB, 9n, 0n, 3n, F_RDLCK), 0);
  t.is(hostTry(join(dir, 'rec'), 'lockf'), 'busy', 'owner 9 holds bytes 0..3');
  t.is((await c.req(OP.FLUSH, rec, releaseIn(recB, 0, 9n))).error, 0);
  t.is(hostTry(join(dir, 'rec'), 'lockf'), 'locked', 'FLUSH dropped owner 9\'s lock');
  // Closing recA (its OFD owner's open file) lets owner 7's locks go.
  t.is((await c.req(OP.RELEASE, rec, releaseIn(recA, 2, 0n))).error, 0);
  t.is(await setlk(recB, 9n, 10n, 10n, F_RDLCK), 0, 'owner 7\'s locks went with its open file');
  // Unlocking the flock through the open file works; then closing it is clean.
  t.is(await setlk(flA, 11n, 0n, END, F_UNLCK, true), 0);
  t.is(hostTry(join(dir, 'fl'), 'flock'), 'locked', 'the flock was let go');
});

test('a plugin upgrade that could not tell two open files apart (same inode, same access mode, a lock through one) is refused up front; the old instance serves on with the lock', async (t) => {
  const { dir, host, c } = await fsTestHost(t, 'fs-locks-upgrade-', { rec: 'record locks' }, ['--call-deadline', '10000']);
  const rec = nodeOf(await c.lookup(1n, 'rec'));
  const a = fhOfOpen(await c.open(rec, O.RDWR));
  const b = fhOfOpen(await c.open(rec, O.RDWR));
  t.is((await c.req(OP.SETLK, 0n, lkIn(a, 7n, 0n, END, F_WRLCK, 107))).error, 0);
  const upgrade = async () => (await rawRpc(`${host.socketPath}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'plugin-upgrade', params: { plugin: FS_PLUGIN } })], 1)) as { error?: { message: string } }[];
  const [up] = await upgrade();
  t.regex(up.error?.message ?? JSON.stringify(up), /open 2 times with the same access mode and holds a lock through one of them/);
  t.is((await c.req(OP.SETLK, 0n, lkIn(b, 8n, 0n, 0n, F_WRLCK, 108))).error, E.EAGAIN, 'the old instance still holds owner 7\'s lock');
  t.is(hostTry(join(dir, 'rec'), 'lockf'), 'busy');
  // Once the twin is closed, the upgrade goes through and the lock stays.
  t.is((await c.req(OP.RELEASE, rec, releaseIn(b, 2, 0n))).error, 0);
  const [again] = await upgrade();
  t.falsy(again.error, JSON.stringify(again));
  t.is(hostTry(join(dir, 'rec'), 'lockf'), 'busy', 'the lock moved with the upgrade');
});
