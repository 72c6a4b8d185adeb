// POSIX record locks and flock through the fs plugin (FUSE_GETLK / SETLK / SETLKW) on a real
// share: the locks are the host kernel's (a host process sees them and they see its), a
// SETLKW that must wait is held while other requests go on and answered once the host got
// the lock, INTERRUPT ends a wait, and closing, flushing or resetting lets every lock go.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsShare } from '../host/fs/index.ts';
import { MAX_LOCK_WAITS, MAX_RANGES } from '../host/fs/locks.ts';
import { FsFileBackings } from '../host/fs/file-backings.ts';
import { BackingTable } from '../host/io/backing-table.ts';
import type { DeviceAction } from '../host/device/device.ts';
import { loadPlugin, type PluginDevice } from '../host/plugin/index.ts';
import { hostLock } from './helpers/host-lock.ts';
import { LK, lkIn } from './helpers/fuse.ts';

const root = join(import.meta.dirname, '..');
const cacheDir = mkdtempSync(join(tmpdir(), 'fs-locks-test-'));
let bytes: Buffer;

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'inherit' });
  bytes = readFileSync(join(root, 'dist', 'plugins', 'fs.wasm'));
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

const OP = { LOOKUP: 1, OPEN: 14, RELEASE: 18, FLUSH: 25, INIT: 26, GETLK: 31, SETLK: 32, SETLKW: 33, INTERRUPT: 36, GETATTR: 3 };
const { RDLCK: F_RDLCK, WRLCK: F_WRLCK, UNLCK: F_UNLCK, END } = LK;
const E = { EINTR: 4, EAGAIN: 11, EBADF: 9, ENOLCK: 37, EINPROGRESS: 115 };

interface Reply {
  error: number;
  body: Buffer;
}

function header(len: number, opcode: number, unique: bigint, nodeid: bigint): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(len, 0);
  b.writeUInt32LE(opcode, 4);
  b.writeBigUInt64LE(unique, 8);
  b.writeBigUInt64LE(nodeid, 16);
  return b;
}

function replyOf(a: DeviceAction | undefined): Reply {
  if (!a || a.kind !== 'answer') throw new Error(`no answer: ${JSON.stringify(a)}`);
  const out = Buffer.concat(a.answer.reply.map((p) => (p.kind === 'bytes' ? Buffer.from(p.bytes) : Buffer.alloc(0))));
  return { error: out.length >= 16 ? -out.readInt32LE(4) || 0 : 0, body: out.subarray(16) };
}

/** The plugin on a share, driven one request at a time (lock replies are literal bytes only). */
class Guest {
  private unique = 1n;
  private nextId = 1000;
  readonly woken: bigint[] = [];
  constructor(readonly dev: PluginDevice, readonly share: FsShare) {
    share.locks.setWaker((token) => this.woken.push(token));
  }
  /** Sends a request; the reply, or the request id when the plugin held it. */
  send(opcode: number, nodeid: bigint, args: Buffer): { held: number; unique: bigint } | Reply {
    const unique = this.unique++;
    const id = this.nextId++;
    const readable = Buffer.concat([header(40 + args.length, opcode, unique, nodeid), args]);
    const actions = this.dev.handle([{ kind: 'request', request: { id, queue: 1, prefix: readable, readableLen: readable.length, writableLen: 4096 } }]);
    if (actions.length === 1 && actions[0].kind === 'hold') return { held: id, unique };
    return replyOf(actions.find((a) => a.kind === 'answer' && a.answer.id === id));
  }
  req(opcode: number, nodeid: bigint, args: Buffer): Reply {
    const r = this.send(opcode, nodeid, args);
    if ('held' in r) throw new Error(`request ${opcode} was held`);
    return r;
  }
  /** Delivers the wake-ups so far; the answers to held requests by id. */
  wake(): Map<number, Reply> {
    const out = new Map<number, Reply>();
    const tokens = this.woken.splice(0);
    if (tokens.length === 0) return out;
    for (const a of this.dev.handle(tokens.map((token) => ({ kind: 'timer' as const, token })))) {
      if (a.kind === 'answer') out.set(a.answer.id, replyOf(a));
    }
    return out;
  }
  open(name: string, flags = 2): bigint {
    const l = this.req(OP.LOOKUP, 1n, Buffer.from(`${name}\0`));
    if (l.error) throw new Error(`lookup ${name}: ${l.error}`);
    const node = l.body.readBigUInt64LE(0);
    const o = this.req(OP.OPEN, node, Buffer.concat([u32(flags), u32(0)]));
    if (o.error) throw new Error(`open ${name}: ${o.error}`);
    return o.body.readBigUInt64LE(0);
  }
  setlk(fh: bigint, owner: bigint, start: bigint, end: bigint, type: number, pid = 100, flock = false): number {
    return this.req(OP.SETLK, 0n, lkIn(fh, owner, start, end, type, pid, flock)).error;
  }
  getlk(fh: bigint, owner: bigint, start: bigint, end: bigint, type: number): { type: number; start: bigint; end: bigint; pid: number } {
    const r = this.req(OP.GETLK, 0n, lkIn(fh, owner, start, end, type, 0));
    if (r.error) throw new Error(`getlk: ${r.error}`);
    return { start: r.body.readBigUInt64LE(0), end: r.body.readBigUInt64LE(8), type: r.body.readUInt32LE(16), pid: r.body.readUInt32LE(20) };
  }
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};

async function setup(t: ExecutionContext) {
  const dir = mkdtempSync(join(tmpdir(), 'fs-locks-share-'));
  writeFileSync(join(dir, 'f'), 'lock me\n');
  const share = new FsShare(dir, { tag: 'locks' });
  const backings = new BackingTable();
  const dev = await loadPlugin(bytes, { grants: { filesystem: share, backings, fsFiles: new FsFileBackings(share, backings), log: () => {} }, cacheDir });
  const g = new Guest(dev, share);
  const init = Buffer.alloc(16);
  init.writeUInt32LE(7, 0);
  init.writeUInt32LE(38, 4);
  init.writeUInt32LE(0xffffffff, 12);
  const r = g.req(OP.INIT, 0n, init);
  t.is(r.body.readUInt32LE(12) & ((1 << 1) | (1 << 10)), (1 << 1) | (1 << 10), 'POSIX_LOCKS and FLOCK_LOCKS offered');
  t.teardown(() => {
    share.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, share, g };
}

/** A share call's value; an errno throws. */
function val<T>(r: { ok: true; val: T } | { ok: false; errno: number }): T {
  if (!r.ok) throw new Error(`errno ${r.errno}`);
  return r.val;
}

/** The share's own handle of `f` opened read-write, as the plugin holds one (its FUSE fh are its own numbers). */
function shareOpen(share: FsShare) {
  const top = val(share.root());
  const node = val(share.lookup(top.node, Buffer.from('f')));
  return val(share.open(node.node, 2));
}

/** Polls until the waker fired (the host retries on a timer of at most 50 ms). */
async function woken(g: Guest): Promise<void> {
  for (let i = 0; i < 400 && g.woken.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
}

test('record locks: owners conflict as POSIX says, GETLK names the holder, unlocking splits ranges', async (t) => {
  const { g, share } = await setup(t);
  const a = g.open('f');
  const b = g.open('f');
  t.is(g.setlk(a, 1n, 0n, 9n, F_WRLCK, 111), 0);
  t.is(g.setlk(a, 1n, 20n, END, F_RDLCK, 111), 0);
  t.is(g.setlk(b, 2n, 5n, 5n, F_WRLCK), E.EAGAIN, 'another owner cannot write-lock inside');
  t.is(g.setlk(b, 2n, 30n, 30n, F_RDLCK), 0, 'but may share a read lock');
  t.is(g.setlk(b, 2n, 10n, 19n, F_WRLCK), 0, 'and take the gap');
  t.deepEqual(g.getlk(b, 2n, 0n, END, F_WRLCK), { type: F_WRLCK, start: 0n, end: 9n, pid: 111 });
  t.deepEqual(g.getlk(a, 1n, 0n, 9n, F_WRLCK).type, F_UNLCK, 'an owner never conflicts with itself');
  t.deepEqual(g.getlk(b, 2n, 50n, 60n, F_RDLCK).type, F_UNLCK, 'read locks share');
  t.is(g.setlk(a, 1n, 3n, 5n, F_UNLCK), 0, 'unlock the middle');
  t.is(g.setlk(b, 2n, 4n, 4n, F_WRLCK), 0, 'the hole is free');
  t.is(g.setlk(b, 2n, 6n, 6n, F_WRLCK), E.EAGAIN, 'the rest is not');
  t.is(share.locks.ownerFds, 2);
  // FLUSH from owner 1 (its process closed a file): all its locks go, its description closes.
  const flush = Buffer.alloc(24);
  flush.writeBigUInt64LE(a, 0);
  flush.writeBigUInt64LE(1n, 16);
  t.is(g.req(OP.FLUSH, 0n, flush).error, 0);
  t.is(g.setlk(b, 2n, 0n, 9n, F_WRLCK), 0);
  t.is(share.locks.ownerFds, 1);
  // RELEASE of the file owner 2 last locked through (an OFD owner): its locks go too.
  const rel = Buffer.alloc(24);
  rel.writeBigUInt64LE(b, 0);
  t.is(g.req(OP.RELEASE, 0n, rel).error, 0);
  t.is(share.locks.ownerFds, 0);
  t.is(g.setlk(a, 3n, 0n, END, F_WRLCK), 0, 'the whole file is free');
});

test('the locks are the host\'s: a host process and the guest see each other\'s', async (t) => {
  const { g, dir } = await setup(t);
  const fh = g.open('f');
  const stop = await hostLock(join(dir, 'f'), 'lockf');
  try {
    t.is(g.setlk(fh, 1n, 0n, 0n, F_WRLCK), E.EAGAIN, 'the host process holds bytes 0-3');
    t.is(g.setlk(fh, 1n, 4n, 10n, F_WRLCK), 0);
    t.like(g.getlk(fh, 1n, 0n, END, F_RDLCK), { type: F_WRLCK, start: 0n, end: 3n, pid: 0 });
  } finally {
    await stop();
  }
  t.is(g.setlk(fh, 1n, 0n, 0n, F_WRLCK), 0, 'free once the host process is gone');
  // flock: the host's flock and the guest's exclude each other.
  const stopF = await hostLock(join(dir, 'f'), 'flock');
  try {
    t.is(g.setlk(fh, 9n, 0n, END, F_RDLCK, 100, true), E.EAGAIN);
  } finally {
    await stopF();
  }
  t.is(g.setlk(fh, 9n, 0n, END, F_WRLCK, 100, true), 0);
  const other = g.open('f', 0);
  t.is(g.setlk(other, 9n, 0n, END, F_RDLCK, 100, true), E.EAGAIN, 'flock belongs to the open file');
  t.is(g.setlk(fh, 9n, 0n, END, F_UNLCK, 100, true), 0);
  t.is(g.setlk(other, 9n, 0n, END, F_RDLCK, 100, true), 0);
});

test("GETLK names a host process's lock past 2^53 exactly (issue 12: the kernel's answer was a double)", async (t) => {
  const { g, dir } = await setup(t);
  const fh = g.open('f');
  // 2^53 + 1 and 2^60 + 3: the first of each a double rounds.
  const start = 2n ** 53n + 1n;
  const len = 2n ** 60n + 3n;
  const stop = await hostLock(join(dir, 'f'), 'lockf', { start, len });
  try {
    t.like(g.getlk(fh, 1n, 0n, END, F_RDLCK), { type: F_WRLCK, start, end: start + len - 1n });
  } finally {
    await stop();
  }
});

test('a SETLKW that must wait is held, other requests go on, and it is answered once the lock is free', async (t) => {
  const { g } = await setup(t);
  const a = g.open('f');
  const b = g.open('f');
  t.is(g.setlk(a, 1n, 0n, END, F_WRLCK), 0);
  const w = g.send(OP.SETLKW, 0n, lkIn(b, 2n, 0n, 99n, F_WRLCK, 222));
  t.true('held' in w, 'held, not answered');
  // The device goes on serving meanwhile.
  t.is(g.req(OP.GETATTR, 1n, Buffer.alloc(16)).error, 0);
  t.is(g.setlk(b, 3n, 0n, 0n, F_RDLCK), E.EAGAIN);
  t.is(g.setlk(a, 1n, 0n, END, F_UNLCK), 0);
  await woken(g);
  const answers = g.wake();
  t.is(answers.get((w as { held: number }).held)?.error, 0, 'granted');
  t.deepEqual(g.getlk(a, 1n, 0n, END, F_WRLCK), { type: F_WRLCK, start: 0n, end: 99n, pid: 222 });
  // A second waiter is interrupted: EINTR, and no lock was taken.
  const w2 = g.send(OP.SETLKW, 0n, lkIn(a, 1n, 50n, 50n, F_WRLCK, 111));
  t.true('held' in w2);
  const intr = Buffer.alloc(8);
  intr.writeBigUInt64LE((w2 as { unique: bigint }).unique);
  const uniq = 9999n;
  const readable = Buffer.concat([header(48, OP.INTERRUPT, uniq, 0n), intr]);
  const acts = g.dev.handle([{ kind: 'request', request: { id: 5000, queue: 0, prefix: readable, readableLen: 48, writableLen: 4096 } }]);
  const ans = acts.find((x) => x.kind === 'answer' && x.answer.id === (w2 as { held: number }).held);
  t.is(replyOf(ans).error, E.EINTR);
  t.is(g.setlk(b, 2n, 0n, 99n, F_UNLCK), 0);
  await new Promise((r) => setTimeout(r, 120));
  t.deepEqual(g.woken, [], 'a cancelled wait never wakes');
  t.is(g.getlk(b, 2n, 0n, END, F_WRLCK).type, F_UNLCK, 'the interrupted waiter holds nothing');
});

test('a ring stop ends the waits: a SETLKW that still conflicts is answered ENOLCK, one whose lock came free is granted; afterwards waits wait again', async (t) => {
  // What the device runner does around GET_VRING_BASE (host/device/runner.ts, ringStop): the
  // share's waits resolve, the plugin asks again and answers, and no new wait starts meanwhile.
  const { g, share } = await setup(t);
  const a = g.open('f');
  const b = g.open('f');
  t.is(g.setlk(a, 1n, 0n, 9n, F_WRLCK), 0);
  const still = g.send(OP.SETLKW, 0n, lkIn(b, 2n, 0n, 0n, F_WRLCK, 2));
  const freed = g.send(OP.SETLKW, 0n, lkIn(b, 4n, 5n, 5n, F_RDLCK, 4));
  t.true('held' in still && 'held' in freed);
  t.is(share.locks.waiting, 2);
  // Byte 5 comes free; whether the host's retry timer saw it yet or not, the stop must grant it.
  t.is(g.setlk(a, 1n, 5n, 5n, F_UNLCK), 0);
  share.locks.stopWaits(true);
  t.is(share.locks.waiting, 0, 'every wait resolved at once');
  const answers = g.wake();
  share.locks.stopWaits(false);
  t.is(answers.get((still as { held: number }).held)?.error, E.ENOLCK, 'still conflicting: ENOLCK, not left waiting');
  t.is(answers.get((freed as { held: number }).held)?.error, 0, 'free by the stop: granted');
  t.is(g.getlk(a, 1n, 0n, 0n, F_WRLCK).type, F_UNLCK, 'owner 2, refused, holds nothing');
  t.deepEqual(g.getlk(a, 1n, 5n, 5n, F_WRLCK), { type: F_RDLCK, start: 5n, end: 5n, pid: 4 }, 'owner 4 holds byte 5');
  // After the stop a wait waits again, and is granted when the lock comes free.
  const again = g.send(OP.SETLKW, 0n, lkIn(b, 2n, 0n, 0n, F_WRLCK, 2));
  t.true('held' in again, 'held again once the ring runs');
  t.is(g.setlk(a, 1n, 0n, END, F_UNLCK), 0);
  t.is(g.setlk(b, 4n, 0n, END, F_UNLCK), 0);
  await woken(g);
  t.is(g.wake().get((again as { held: number }).held)?.error, 0, 'granted');
});

test('the fs state (version 2) says whether the guest asked for record locks: then only a version-2 reader may load it, and the loaded instance drops a closing process\'s locks at FLUSH', async (t) => {
  const { g, share } = await setup(t);
  const head = () => Buffer.from(g.dev.getState(0, 8).bytes);
  t.deepEqual([...head().subarray(4, 8)], [2, 1, 0, 0], 'no record lock asked: version 2, readable by version 1');
  const a = g.open('f');
  t.is(g.setlk(a, 5n, 0n, END, F_WRLCK), 0);
  t.deepEqual([...head().subarray(4, 8)], [2, 2, 1, 0], 'asked: lock flag bit 0, oldest reader 2');
  // A fresh instance on the same share loads it; its FLUSH for owner 5 then unlocks on the host.
  const all: Buffer[] = [];
  for (let off = 0; ; ) {
    const c = g.dev.getState(off, 65536);
    all.push(Buffer.from(c.bytes));
    off += c.bytes.length;
    if (c.remaining === 0) break;
  }
  const state = Buffer.concat(all);
  const backings = new BackingTable();
  const fresh = await loadPlugin(bytes, { cacheDir, grants: { filesystem: share, backings, fsFiles: new FsFileBackings(share, backings), log: () => {} } });
  fresh.setState(0, state);
  t.is(fresh.finishLoad(), null);
  t.deepEqual([...Buffer.from(fresh.getState(0, 8).bytes).subarray(4, 8)], [2, 2, 1, 0], 'the loaded instance knows the guest asked');
  const other = shareOpen(share);
  t.is(share.setlk(other, 6n, { start: 0n, end: END, kind: F_WRLCK, pid: 6 }, false, 0n).ok, false, 'owner 5 holds the file');
  const flush = Buffer.alloc(24);
  flush.writeBigUInt64LE(a, 0); // the guest's fh, which the state carried
  flush.writeBigUInt64LE(5n, 16);
  const readable = Buffer.concat([header(64, OP.FLUSH, 77n, 2n), flush]);
  const acts = fresh.handle([{ kind: 'request', request: { id: 1, queue: 1, prefix: readable, readableLen: readable.length, writableLen: 4096 } }]);
  t.is(replyOf(acts[0]).error, 0);
  t.true(share.setlk(other, 6n, { start: 0n, end: END, kind: F_WRLCK, pid: 6 }, false, 0n).ok, 'FLUSH for owner 5 dropped its lock');
  share.releaseAll();
});

test('a reset lets every lock and wait go (a guest that disconnects holds nothing)', async (t) => {
  const { g, share, dir } = await setup(t);
  const a = g.open('f');
  const b = g.open('f');
  t.is(g.setlk(a, 1n, 0n, END, F_WRLCK), 0);
  t.is(g.setlk(a, 1n, 0n, END, F_WRLCK, 1, true), 0);
  t.true('held' in g.send(OP.SETLKW, 0n, lkIn(b, 2n, 0n, 0n, F_WRLCK, 2)));
  // What the device worker does on RESET_DEVICE or a disconnect (host/plugin/device-source.ts).
  g.dev.reset();
  share.releaseAll();
  t.is(share.locks.ownerFds, 0);
  const stop = await hostLock(join(dir, 'f'), 'lockf');
  await stop();
  const stopF = await hostLock(join(dir, 'f'), 'flock');
  await stopF();
  t.pass('a host process got both locks');
});

test("the host's lock waits are bounded: a plugin that starts wait after wait gets ENOLCK past MAX_LOCK_WAITS, not a timer and an fd reopen each", async (t) => {
  // The fs plugin keeps at most 256 waiting SETLKWs, but filesystem.setlk is the plugin's to
  // call: what the host keeps for a plugin that calls it with token after token must be bounded.
  const { share } = await setup(t);
  const a = shareOpen(share);
  const lock = { start: 0n, end: END, kind: F_WRLCK, pid: 1 };
  t.deepEqual(share.setlk(a, 1n, lock, false, 0n), { ok: true, val: undefined });
  const errnos = new Map<number, number>();
  for (let i = 0; i < MAX_LOCK_WAITS + 100; i++) {
    const r = share.setlk(a, 1000n + BigInt(i), lock, false, 1n + BigInt(i));
    const e = r.ok ? 0 : r.errno;
    errnos.set(e, (errnos.get(e) ?? 0) + 1);
  }
  t.is(errnos.get(E.EINPROGRESS), MAX_LOCK_WAITS, `waits up to the bound (errnos: ${JSON.stringify([...errnos])})`);
  t.is(errnos.get(E.ENOLCK), 100, 'then ENOLCK');
  // A wait that ends makes room again.
  share.locks.cancel(1n);
  t.deepEqual(share.setlk(a, 5000n, lock, false, 999_999n), { ok: false, errno: E.EINPROGRESS });
  share.releaseAll();
});

test('an owner with more ranges than the table remembers keeps every lock the kernel holds: unlocking the remembered ones does not drop the forgotten', async (t) => {
  // Past MAX_RANGES the oldest ranges are forgotten (they only name GETLK's pid); the owner's
  // description must not be closed while the kernel still holds a forgotten range on it.
  const { share } = await setup(t);
  const a = shareOpen(share);
  const at = (i: number, kind: number) => ({ start: BigInt(2 * i), end: BigInt(2 * i), kind, pid: 7 });
  for (let i = 0; i <= MAX_RANGES; i++) t.true(share.setlk(a, 1n, at(i, F_WRLCK), false, 0n).ok);
  // Range 0 (byte 0) is the one forgotten; the others are unlocked one by one.
  for (let i = 1; i <= MAX_RANGES; i++) t.true(share.setlk(a, 1n, at(i, F_UNLCK), false, 0n).ok);
  t.deepEqual(share.setlk(a, 2n, at(0, F_WRLCK), false, 0n), { ok: false, errno: E.EAGAIN }, 'byte 0 is still owner 1\'s');
  t.true(share.setlk(a, 2n, at(1, F_WRLCK), false, 0n).ok, 'an unlocked range is free');
  // Unlocking the whole file lets the description go.
  t.true(share.setlk(a, 1n, { start: 0n, end: END, kind: F_UNLCK, pid: 7 }, false, 0n).ok);
  t.true(share.setlk(a, 2n, at(0, F_WRLCK), false, 0n).ok);
  share.releaseAll();
});
