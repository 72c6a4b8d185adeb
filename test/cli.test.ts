// The host binary as an operator (or libvirt) uses it: back-end program conventions, usage
// errors, socket-path hygiene, clean shutdown.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../host/native/index.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO, NULL_DEVICE, hostCommand, startHost } from './helpers/host-process.ts';

/** The built binary (package.json `bin`), as a user runs it. */
const run = (args: string[]) => spawnSync(...hostCommand(args), { cwd: REPO, encoding: 'utf8', timeout: 30_000 });
const feOpts = { memoryBytes: 4 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1) };

test('--help documents the back-end program conventions and exits 0', (t) => {
  const r = run(['--help']);
  t.is(r.status, 0);
  for (const flag of ['--socket-path', '--fd', '--print-capabilities', '--plugin', '--log-level', '--call-deadline', '--memory-limit', '--state-pipe-size', '--queue-threads', '--poll-max-ns']) {
    t.true(r.stdout.includes(flag), `--help lacks ${flag}`);
  }
});

test('migrate is a subcommand of the binary: --help documents it, usage errors exit 2', (t) => {
  // The bundle once answered "Unexpected argument 'migrate'": a module deciding on its own that
  // it was the program being run fired inside the bundle too.
  const help = run(['migrate', '--help']);
  t.is(help.status, 0, help.stderr);
  t.regex(help.stdout, /^Usage: vhost-wasm migrate --from SOURCE\.sock --to DEST\.sock/);
  for (const flag of ['--from', '--to', '--channel', '--state-pipe-size', '--json']) t.true(help.stdout.includes(flag), `migrate --help lacks ${flag}`);
  t.regex(run(['--help']).stdout, /vhost-wasm migrate --from/);
  const bad = run(['migrate', '--from', 'a.sock']);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /^vhost-wasm migrate: /);
  t.notRegex(bad.stderr, /Unexpected argument 'migrate'/);
});

test('usage errors say what was wrong and exit 2', (t) => {
  const cases: [string[], RegExp][] = [
    [['--socket-path', '/tmp/x.sock'], /no device: give --plugin/],
    [['--plugin', 'x.wasm'], /nowhere to listen/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--fd', '3'], /exclusive/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--bogus'], /bogus/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--log-level', 'loud'], /--log-level: "loud"/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--memory-limit', 'lots'], /--memory-limit: "lots" is not a size/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--state-pipe-size', 'big'], /--state-pipe-size: "big" is not a size/],
    [['migrate', '--from', 'a.sock', '--to', 'b.sock', '--state-pipe-size', 'lots'], /--state-pipe-size: "lots" is not a size/],
    [['--plugin', 'x.wasm', '--fd', '-1'], /--fd/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--queue-threads', '0'], /--queue-threads: 0 must be at least 1/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--queue-threads', 'two'], /--queue-threads: "two" is not a whole number/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--queue-threads', '65'], /--queue-threads: 65 is more than 64/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--poll-max-ns=-1'], /--poll-max-ns: "-1" is not a whole number/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--poll-max-ns', '32us'], /--poll-max-ns: "32us" is not a whole number/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--poll-max-ns', '1000001'], /--poll-max-ns: must be an integer number of nanoseconds from 0 \(polling off\) to 1000000, got 1000001/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--network', 'a b'], /--network: "a b" is not a network name/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--network', 'seg0', '--network', 'seg0'], /--network: seg0 is given twice/],
    [['--plugin', 'x.wasm', '--socket-path', 's', '--network', 'tap:a-very-long-interface'], /longer than 15 bytes/],
  ];
  for (const [args, re] of cases) {
    const r = run(args);
    t.is(r.status, 2, args.join(' '));
    t.regex(r.stderr, re);
  }
});

test('a plugin file that does not exist fails at start-up with exit 1', (t) => {
  const r = run(['--socket-path', join(tmpdir(), `nope-${process.pid}.sock`), '--plugin', '/nonexistent/dev.wasm']);
  t.is(r.status, 1);
  t.regex(r.stderr, /\/nonexistent\/dev\.wasm/);
});

test('--print-capabilities prints the vhost-user.json object and exits', (t) => {
  const r = run(['--print-capabilities', '--device-module', NULL_DEVICE]);
  t.is(r.status, 0, r.stderr);
  // The null test device has the block device id; block back-ends advertise --read-only.
  t.deepEqual(JSON.parse(r.stdout), { type: 'block', features: ['read-only'] });
});

test('--print-capabilities describes the net plugin without a --network (a network is lent to the probe)', (t) => {
  const r = run(['--print-capabilities', '--plugin', join(REPO, 'dist', 'plugins', 'net.wasm')]);
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), { type: 'net', features: [] });
});

test('--fd serves an inherited listening socket', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-fd-'));
  const path = join(dir, 'inherited.sock');
  const lfd = native.listenUnix(path, 4);
  const child = spawn(...hostCommand(['--fd', '3', '--device-module', NULL_DEVICE]), {
    cwd: REPO,
    stdio: ['ignore', 'ignore', 'pipe', lfd],
  });
  native.close(lfd); // the child has its own copy
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  try {
    for (let i = 0; i < 200 && !/serving/.test(stderr); i++) await new Promise((r) => setTimeout(r, 50));
    t.regex(stderr, /serving .* on fd 3/);
    const fe = await VhostUserFrontend.connect(path, feOpts);
    const r = await fe.queues[0].submit([Buffer.from('via fd')], 16);
    t.is(r.len, 6);
    await fe.close();
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a start-up failure is logged with its error code', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-code-'));
  try {
    const notPlugin = join(dir, 'not-a-plugin.wasm');
    writeFileSync(notPlugin, 'not a component');
    const r = run(['--socket-path', join(dir, 's'), '--plugin', notPlugin]);
    t.is(r.status, 1);
    // Thrown in the device worker, rebuilt on the main thread with its code (docs/errors.md).
    t.regex(r.stderr, /not a WebAssembly component.*\[ERR_PLUGIN_LOAD\]/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--fd that is not a listening socket is refused clearly', (t) => {
  const r = spawnSync(...hostCommand(['--fd', '0', '--device-module', NULL_DEVICE]), {
    cwd: REPO,
    encoding: 'utf8',
    stdio: ['pipe', 'pipe', 'pipe'],
    timeout: 30_000,
  });
  t.is(r.status, 1);
  t.regex(r.stderr, /--fd 0 is not a listening Unix stream socket/);
});

test('SIGTERM shuts down cleanly and removes the socket file', async (t) => {
  const h = await startHost(['--socket-path', '{socket}', '--device-module', NULL_DEVICE]);
  t.true(existsSync(h.socketPath));
  const code = await h.stop('SIGTERM');
  t.is(code, 0);
  t.regex(h.log(), /SIGTERM: shutting down/);
  t.false(existsSync(h.socketPath));
});

test('a stale socket file is replaced; a live one or a non-socket is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-sock-'));
  try {
    // Stale: a socket nobody listens on any more.
    const stale = join(dir, 'stale.sock');
    native.close(native.listenUnix(stale, 1));
    const h = await startHost(['--socket-path', stale, '--device-module', NULL_DEVICE]);
    // Live: a second host on the same path.
    const second = run(['--socket-path', stale, '--device-module', NULL_DEVICE]);
    t.is(second.status, 1);
    t.regex(second.stderr, /another back-end is already listening/);
    await h.stop();
    // Not a socket: never deleted.
    const file = join(dir, 'file');
    writeFileSync(file, 'precious');
    const r = run(['--socket-path', file, '--device-module', NULL_DEVICE]);
    t.is(r.status, 1);
    t.regex(r.stderr, /exists and is not a socket/);
    t.true(existsSync(file));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a live listener that never accepts (its backlog full) is refused at once, not waited on', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cli-sock-'));
  const held: number[] = [];
  let listener = -1;
  try {
    const path = join(dir, 'stuck.sock');
    listener = native.listenUnix(path, 0);
    // Fill its backlog: a connect that would have to wait is what a stuck server leaves.
    for (let i = 0; i < 64; i++) {
      try {
        held.push(native.connectUnix(path, true));
      } catch {
        break;
      }
    }
    const r = run(['--socket-path', path, '--device-module', NULL_DEVICE]);
    t.is(r.error, undefined, 'the host did not hang on the probe');
    t.is(r.status, 1);
    t.regex(r.stderr, /another back-end is already listening/);
  } finally {
    for (const fd of held) native.close(fd);
    if (listener >= 0) native.close(listener);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a capability the plugin cannot use is refused at start-up, not silently dropped', (t) => {
  const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
  const dir = mkdtempSync(join(tmpdir(), 'cli-grant-'));
  try {
    const fs = run(['--socket-path', join(dir, 's'), '--plugin', rng, '--entropy', '--shared-dir', dir]);
    t.is(fs.status, 1);
    t.regex(fs.stderr, /granted a shared directory but does not import .*filesystem/);
    const disk = run(['--socket-path', join(dir, 's'), '--plugin', rng, '--entropy', '--storage', 'memory:1M']);
    t.is(disk.status, 1);
    t.regex(disk.stderr, /granted storage .* does not import .*storage/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
