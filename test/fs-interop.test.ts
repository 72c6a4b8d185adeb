// The fs device as libvirt finds and starts it: --print-capabilities, the discovery descriptor
// in docs/interop/, and the command line libvirt writes for a back-end that claims
// 'separate-options' (`--fd=N --shared-dir DIR`, its other options only on request).
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../host/native/index.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { ensureFdBudget } from '../host/resources/fd-budget.ts';
import { FuseClient, u32s } from './helpers/fuse.ts';
import { REPO, hostCommand } from './helpers/host-process.ts';

const FS = join(REPO, 'dist', 'plugins', 'fs.wasm');
const run = (args: string[]) => spawnSync(...hostCommand(args), { cwd: REPO, encoding: 'utf8', timeout: 30_000 });

test('--print-capabilities for the fs plugin claims what virtiofsd 1.13 claims', (t) => {
  const r = run(['--print-capabilities', '--plugin', FS]);
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), { type: 'fs', features: ['migrate-precopy', 'separate-options'] });
});

test('the libvirt fs descriptor follows vhost-user.json', (t) => {
  const d = JSON.parse(readFileSync(join(REPO, 'docs', 'interop', '50-vhost-wasm-fs.json'), 'utf8'));
  t.is(d.type, 'fs');
  t.is(typeof d.description, 'string');
  t.true(typeof d.binary === 'string' && d.binary.startsWith('/'));
  t.deepEqual(Object.keys(d).sort(), ['binary', 'description', 'type'], 'only fields the schema defines');
});

// libvirt 11.0 on appends `--readonly` (virtiofsd's spelling) for a <filesystem> with <readonly/>
// (qemuVirtioFSBuildCommandLine, after every other option); ours is --read-only.
test("libvirt's command line for <readonly/> (--readonly last) serves the share read-only: CREATE is EROFS, nothing made", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-interop-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const share = mkdtempSync(join(dir, 'share-'));
  ensureFdBudget();
  for (const [flags, errno] of [[['--readonly'], 30], [[], 0]] as const) {
    const h = await libvirtStyle(dir, ['--shared-dir', share, ...flags]);
    try {
      t.regex(h.stderr(), /serving .* on fd 3/, h.stderr());
      t.is(await createInRoot(h.sock, `made${flags.length}`), errno, flags.length ? '--readonly: EROFS' : 'without it the file is made');
    } finally {
      await h.stop();
    }
  }
  t.deepEqual(readdirSync(share), ['made0'], 'only the read-write run made its file');
});

/** The back-end as libvirt starts it: an inherited listening socket as --fd=3, then `extra`. */
async function libvirtStyle(dir: string, extra: string[]) {
  const sock = join(dir, `fs-${Math.random()}.sock`);
  const lfd = native.listenUnix(sock, 4);
  const child = spawn(...hostCommand(['--plugin', FS, '--fd=3', ...extra]), { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe', lfd] });
  native.close(lfd);
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  for (let i = 0; i < 400 && !/serving/.test(stderr) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  const stop = async () => {
    if (child.exitCode === null) child.kill('SIGTERM');
    if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
  };
  return { sock, stderr: () => stderr, stop };
}

/** CREATE `name` in the share root through a real front-end; the reply's errno (0: made). */
async function createInRoot(sock: string, name: string): Promise<number> {
  const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  try {
    const c = new FuseClient(fe);
    const init = await c.init();
    if (init.error) throw new Error(`INIT: errno ${init.error}`);
    return (await c.create(1n, name, 0o101 /* O_WRONLY | O_CREAT */)).error;
  } finally {
    await fe.close();
  }
}

/** SETXATTR user.libvirt=on on the share root, through a real front-end and the device's ring. */
async function setRootXattr(sock: string): Promise<number> {
  const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  try {
    const c = new FuseClient(fe);
    const init = await c.init();
    if (init.error) throw new Error(`INIT: errno ${init.error}`);
    return (await c.req(21, 1n, Buffer.concat([u32s(2, 0), Buffer.from('user.libvirt\0on')]))).error;
  } finally {
    await fe.close();
  }
}

function hostXattr(dir: string, name: string): string | number {
  const fd = native.fsOpenRoot(dir);
  try {
    const buf = new Uint8Array(64);
    const n = native.fsGetxattr(fd, Buffer.from(name), buf);
    return n < 0 ? -n : Buffer.from(buf.subarray(0, n)).toString();
  } finally {
    native.fsClose(fd);
  }
}

test("libvirt's separate-options command line starts the device, --xattr included; the -o form and options we lack are refused", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-interop-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const share = mkdtempSync(join(dir, 'share-'));
  ensureFdBudget();
  // What qemuVirtioFSBuildCommandLine writes for <driver type='virtiofs'/> with no options.
  const plain = await libvirtStyle(dir, ['--shared-dir', share]);
  try {
    t.regex(plain.stderr(), /serving .* on fd 3/);
    t.is(await setRootXattr(plain.sock), 38, 'no --xattr: ENOSYS to the guest');
  } finally {
    await plain.stop();
  }
  // ... and for <binary xattr='on'/>.
  const withXattr = await libvirtStyle(dir, ['--shared-dir', share, '--xattr']);
  try {
    t.regex(withXattr.stderr(), /serving .* on fd 3/);
    t.is(await setRootXattr(withXattr.sock), 0);
    t.is(hostXattr(share, 'user.libvirt'), 'on', 'the attribute is on the host directory');
  } finally {
    await withXattr.stop();
  }
  const cases: [string[], RegExp][] = [
    [['-o', `source=${share}`], /-o/],
    [['--shared-dir', share, '--cache', 'sometimes'], /--cache: "sometimes"/],
    [['--shared-dir', share, '--sandbox', 'chroot'], /sandbox/],
    [['--shared-dir', share, '--thread-pool-size=4'], /thread-pool-size/],
  ];
  for (const [extra, re] of cases) {
    const r = run(['--plugin', FS, '--socket-path', join(dir, 'x.sock'), ...extra]);
    t.is(r.status, 2, extra.join(' '));
    t.regex(r.stderr, re, extra.join(' '));
  }
});
