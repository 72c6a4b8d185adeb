// The fs device as libvirt finds and starts it: --print-capabilities, the discovery descriptor
// in docs/interop/, and the command line libvirt writes for a back-end that claims
// 'separate-options' (`--fd=N --shared-dir DIR`, its other options only on request).
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../host/native/index.ts';
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

test("libvirt's separate-options command line starts the device; its -o form and options we lack are refused", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-interop-'));
  const share = mkdtempSync(join(dir, 'share-'));
  const lfd = native.listenUnix(join(dir, 'fs.sock'), 4);
  // What qemuVirtioFSBuildCommandLine writes for <driver type='virtiofs'/> with no options.
  const child = spawn(...hostCommand(['--plugin', FS, '--fd=3', '--shared-dir', share]), { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe', lfd] });
  native.close(lfd);
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  try {
    for (let i = 0; i < 400 && !/serving/.test(stderr); i++) await new Promise((r) => setTimeout(r, 50));
    t.regex(stderr, /serving .* on fd 3/);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
  const cases: [string[], RegExp][] = [
    [['-o', `source=${share}`], /-o/],
    [['--shared-dir', share, '--cache', 'never'], /cache/],
    [['--shared-dir', share, '--thread-pool-size=4'], /thread-pool-size/],
  ];
  for (const [extra, re] of cases) {
    const r = run(['--plugin', FS, '--socket-path', join(dir, 'x.sock'), ...extra]);
    t.is(r.status, 2, extra.join(' '));
    t.regex(r.stderr, re, extra.join(' '));
  }
  rmSync(dir, { recursive: true, force: true });
});
