// A virtio-fs share whose directory is on a FUSE file system with a slow server: one held
// request must not hold the device. The real host binary serves the fs plugin over the root of
// a FUSE mount this test serves (helpers/faulty-fuse.ts: one file, opened FOPEN_DIRECT_IO, so
// every read reaches the server). On kernel 6.18 io_uring tries such a read inline in
// io_uring_enter and waits there for the server, so without IOSQE_ASYNC for a FUSE share's
// files (host/fs/file-io-backing.ts, FsShare.fsType from fstatfs of the share's root) the
// device's thread sleeps in the kernel until the held read is answered, and nothing made
// available after it is served. The same rule as a --storage file on FUSE
// (test/blk-fuse-backing.test.ts). Needs root (the mount).
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, eventually, startHost, type HostProcess } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { mountFaultyFuse, type FaultyFuse } from './helpers/faulty-fuse.ts';
import { FuseClient, fhOfOpen, nodeOf, O, writeIn } from './helpers/fuse.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const FILE_BYTES = 1 << 20;
const WRITE = 16;

/**
 * The real host serving the fs plugin over the root of a fresh slow-FUSE mount holding one
 * `file` (FILE_BYTES of random data), a front-end INIT'ed on it and `file` looked up and open
 * read-write; everything is taken down (the server answering again first) after `body`.
 */
async function withFuseShare(
  t: ExecutionContext,
  body: (s: { share: FaultyFuse; host: HostProcess; c: FuseClient; node: bigint; fh: bigint; image: Buffer }) => Promise<void>,
): Promise<void> {
  if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const image = randomBytes(FILE_BYTES);
  // No failing range: every request is answered, held ones once open() lets them through.
  const share = await mountFaultyFuse('file', image, FILE_BYTES, FILE_BYTES);
  let host: HostProcess | undefined;
  let fe: VhostUserFrontend | undefined;
  try {
    host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dirname(share.path), '--log-level', 'debug']);
    fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, queues: [128, 128], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
    const c = new FuseClient(fe);
    t.is((await c.init()).error, 0, 'INIT');
    const node = nodeOf(await c.lookup(1n, 'file'));
    const fh = fhOfOpen(await c.open(node, O.RDWR));
    await body({ share, host, c, node, fh, image });
  } finally {
    share.open();
    await fe?.close();
    await host?.stop('SIGKILL');
    await share.unmount();
  }
}

test('a share on FUSE: a read held by the slow FUSE server does not hold the device; a write and a read made after it are served first', async (t) => {
  await withFuseShare(t, async ({ share, host, c, fh, image }) => {
    t.truthy(await host.waitForLog(/shared directory .*: file I\/O through io_uring \(on FUSE: every read and write handed to a kernel worker at once/), 'the share is known to be on FUSE');

    share.hold();
    const held = c.read(fh, 0, 4096);
    t.true(await eventually(() => share.held === 1, 10_000), 'the first read reached the FUSE server and is held');
    const data = randomBytes(4096);
    const wrote = await withTimeout(c.req(WRITE, 0n, writeIn(fh, 65536n, data)), 10_000, 'a write made available after the held read');
    t.is(wrote.error, 0, 'WRITE');
    t.true(share.data.subarray(65536, 65536 + 4096).equals(data), 'the write is on the file');
    t.is(share.held, 1, 'the first read is still held');
    // A second read is held too (the server holds every read), beside the first: both in flight.
    const second = c.read(fh, 131072, 4096);
    t.true(await eventually(() => share.held === 2, 10_000), 'a second read reached the FUSE server while the first is held');

    share.open();
    const [a, b] = await withTimeout(Promise.all([held, second]), 10_000, 'the held reads, once the server answers');
    t.is(a.error, 0);
    t.true(a.body.equals(image.subarray(0, 4096)));
    t.is(b.error, 0);
    t.true(b.body.equals(image.subarray(131072, 131072 + 4096)));
  });
});

// The other half of the rule: no write to a FUSE share's file is made inline (pwrite on the
// device's thread), not even a small one with nothing else in flight, which on a local file
// system is written in its turn (file-io-backing.ts: inlineWriteMax, inlineWritesAlone).
test('a share on FUSE: a small write held by the slow FUSE server (one page, alone in flight) does not hold the device; a READ and a GETATTR made after it are answered', async (t) => {
  await withFuseShare(t, async ({ share, c, node, fh, image }) => {
    share.hold('writes');
    const data = randomBytes(4096);
    const wrote = c.req(WRITE, 0n, writeIn(fh, 65536n, data));
    t.true(await eventually(() => share.held === 1, 10_000), 'the write reached the FUSE server and is held');
    const read = await withTimeout(c.read(fh, 131072, 4096), 10_000, 'a READ made available after the held write');
    t.is(read.error, 0, 'READ');
    t.true(read.body.equals(image.subarray(131072, 131072 + 4096)));
    const attr = await withTimeout(c.getattr(node), 10_000, 'a GETATTR made available after the held write');
    t.is(attr.error, 0, 'GETATTR');
    t.is(share.held, 1, 'the write is still held');

    share.open();
    const w = await withTimeout(wrote, 10_000, 'the held write, once the server answers');
    t.is(w.error, 0, 'WRITE');
    t.true(share.data.subarray(65536, 65536 + 4096).equals(data), 'the write is on the file');
  });
});

// A test process killed before its finally ran leaves its FUSE mount behind, every access
// "Transport endpoint is not connected". The helper's next mount takes such leftovers away
// (only its own: its directory prefix, its file-system type, a server that is gone).
test('the FUSE helper removes the mounts a killed test process left behind, and only those', async (t) => {
  const child = spawn(process.execPath, ['--import=tsx', '-e', `
    const { mountFaultyFuse } = await import(${JSON.stringify(join(REPO, 'test', 'helpers', 'faulty-fuse.ts'))});
    const m = await mountFaultyFuse('file', Buffer.alloc(4096), 4096, 4096);
    console.log(m.path);
    setInterval(() => {}, 1000);
  `], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
  const path = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.trim());
    });
    child.on('exit', (code) => reject(new Error(`the child exited (${code}) before mounting`)));
  });
  const stale = dirname(path);
  t.regex(stale, new RegExp(`^/tmp/vhost-wasm-fuse-${child.pid}-`), 'the mount is named with its server\'s pid');
  const live = await mountFaultyFuse('file', Buffer.alloc(4096), 4096, 4096);
  try {
    t.true(mountedAt(stale), 'a live server\'s mount (another process) is left alone');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // (Not asserted that it is stale now: a FUSE test in another process may already have taken it.)
    const next = await mountFaultyFuse('file', Buffer.alloc(4096), 4096, 4096);
    await next.unmount();
    t.false(mountedAt(stale), 'the next mount took the stale one away');
    t.false(existsSync(stale), '...and its directory');
    t.true(mountedAt(dirname(live.path)), 'this process\'s own live mount stays');
  } finally {
    child.kill('SIGKILL');
    await live.unmount();
  }
});

function mountedAt(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);
}
