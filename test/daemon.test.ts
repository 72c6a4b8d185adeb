// The multi-tenant daemon (issue 13) as an operator meets it: `vhost-wasm serve --config FILE`
// (the built binary) serving several devices, and `vhost-wasm ctl` managing it over its
// management socket. A bad config starts nothing and names the field; a device whose socket is
// taken is reported and the rest serve; device-add and device-del work while others serve,
// device-del in the middle of I/O included; malformed, unknown and other-uid requests are
// refused with a JSON error and change nothing; systemd socket activation hands the sockets in.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { ERRNO, FuseClient, O, nodeOf } from './helpers/fuse.ts';
import { native } from '../host/native/index.ts';
import { DeviceStateDirection, DeviceStatePhase } from '../host/protocol/constants.ts';
import { hostCommand, REPO } from './helpers/host-process.ts';
import { until } from './helpers/multi-host.ts';
import { RngPump } from './helpers/rng-pump.ts';
import { randomFrom } from './helpers/device-checks.ts';
import { ctl, rawRpc, spawnDaemon, startDaemon, type DaemonProcess, startDaemonWith } from './helpers/daemon-process.ts';

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };
const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');

let dir: string;
let daemon: DaemonProcess;
let taken: number;
const sock = (name: string) => join(dir, `${name}.sock`);
const control = () => sock('control');

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'daemon-'));
  // Another back-end already listens where device "taken" wants its socket.
  taken = native.listenUnix(sock('taken'), 4);
  daemon = await startDaemonWith(dir, {
    control: 'control.sock',
    devices: [
      { id: 'a', tenant: 'acme', socket: 'a.sock', plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } },
      { id: 'b', tenant: 'acme', socket: 'b.sock', plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } },
      { id: 'taken', socket: 'taken.sock', plugin: rng, grants: { entropy: true } },
      { id: 'disk', tenant: 'globex', socket: 'disk.sock', plugin: blk, grants: { storage: 'memory:1M' }, limits: { memory: '128M' } },
    ],
  });
});

test.after.always(async () => {
  if (daemon && daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  if (taken !== undefined) native.close(taken);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function listIds(): Promise<string[]> {
  const r = await ctl(['--control', control(), '--json', 'list']);
  if (r.code !== 0) throw new Error(`ctl list failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { devices: { id: string }[] }).devices.map((d) => d.id).sort();
}

test.serial('a device whose socket is taken is reported, and the others serve', async (t) => {
  t.regex(daemon.log(), /device taken not started: .*another back-end is already listening there/);
  t.regex(daemon.log(), /serving 3 of 4 device\(s\); not started: taken/);
  await randomFrom(sock('a'));
  await randomFrom(sock('b'));
  t.true(existsSync(sock('disk')));
  t.deepEqual(await listIds(), ['a', 'b', 'disk']);
});

test.serial('the management socket is mode 0600, and ctl lists the devices for people and as JSON', async (t) => {
  t.is(statSync(control()).mode & 0o777, 0o600);
  const human = await ctl(['--control', control(), 'list']);
  t.is(human.code, 0, human.stderr);
  const lines = human.stdout.trim().split('\n');
  t.regex(lines[0], /^ID\s+TENANT\s+STATE\s+DEVICE\s+SOCKET$/);
  t.regex(human.stdout, new RegExp(`^a\\s+acme\\s+idle\\s+rng \\(4, 1q\\)\\s+${sock('a')}$`, 'm'));
  // Never connected: its worker starts with its first front-end (the daemon's default "start").
  t.regex(human.stdout, new RegExp(`^disk\\s+globex\\s+not-started\\s+\\(starts on connect\\)\\s+${sock('disk')}$`, 'm'));
  const stats = await ctl(['--control', control(), '--json', 'stats', 'disk']);
  t.is(stats.code, 0, stats.stderr);
  const s = JSON.parse(stats.stdout) as { devices: { id: string; limits: { memoryLimitBytes: number; callDeadlineMs: number; openFiles: number | null; throttle: unknown } }[]; process: { pid: number } };
  t.deepEqual(s.devices.map((d) => [d.id, d.limits]), [['disk', { memoryLimitBytes: 128 << 20, callDeadlineMs: 1000, openFiles: null, throttle: null, cpuShare: 0.5 }]]);
  t.is(s.process.pid, daemon.child.pid!);
});

test.serial('device-add serves a new device; its stats count its front-end', async (t) => {
  // Run from the test's directory: ctl makes the relative socket path absolute for the daemon.
  const r = await ctl(['--control', control(), 'add', '--id', 'c', '--tenant', 'initech', '--socket', 'c.sock', '--plugin', rng, '--entropy', '--call-deadline', '10000'], [], dir);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, `added c on ${sock('c')} (its worker starts when a front-end connects)\n`);
  const fe = await VhostUserFrontend.connect(sock('c'), opts);
  t.teardown(() => fe.close());
  const got = await fe.queues[0].submit([], 64);
  t.is(got.len, 64);
  const stats = await ctl(['--control', control(), '--json', 'stats', 'c']);
  const c = (JSON.parse(stats.stdout) as { devices: { tenant: string; frontEnd: boolean; connectionsAccepted: number; state: string }[] }).devices[0];
  t.like(c, { tenant: 'initech', frontEnd: true, connectionsAccepted: 1, state: 'connected' });
  await fe.close();
  t.deepEqual(await listIds(), ['a', 'b', 'c', 'disk']);
});

test.serial('ctl add --poll-max-ns: the device polls its rings (stats show it), checked as the single-device flag is', async (t) => {
  for (const [bad, why] of [
    ['=-1', /--poll-max-ns: "-1" is not a whole number/],
    ['1000001', /--poll-max-ns: must be an integer number of nanoseconds from 0 \(polling off\) to 1000000, got 1000001/],
    ['lots', /--poll-max-ns: "lots" is not a whole number/],
  ] as const) {
    const flag = bad.startsWith('=') ? [`--poll-max-ns${bad}`] : ['--poll-max-ns', bad];
    const r = await ctl(['--control', control(), 'add', '--id', 'p', '--socket', sock('p'), '--plugin', rng, '--entropy', ...flag]);
    t.is(r.code, 2, `--poll-max-ns${bad.startsWith('=') ? bad : ` ${bad}`} is a usage error`);
    t.regex(r.stderr, why);
  }
  // What ctl would never send: the daemon checks the field itself, naming it.
  const [answer] = (await rawRpc(control(), [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'device-add', params: { id: 'p', socket: sock('p'), plugin: rng, pollMaxNs: 2_000_000 } })], 1)) as {
    error?: { message: string; data?: { field?: string } };
  }[];
  t.is(answer.error?.message, 'params.pollMaxNs: 2000000 is out of range (0..1000000)');
  t.is(answer.error?.data?.field, 'params.pollMaxNs');
  t.false(existsSync(sock('p')), 'nothing was added');

  const add = await ctl(['--control', control(), 'add', '--id', 'p', '--socket', sock('p'), '--plugin', rng, '--entropy', '--call-deadline', '10000', '--poll-max-ns', '32768']);
  t.is(add.code, 0, add.stderr);
  t.teardown(() => ctl(['--control', control(), 'del', 'p']));
  const fe = await VhostUserFrontend.connect(sock('p'), opts);
  t.teardown(() => fe.close());
  for (let i = 0; i < 8; i++) t.is((await fe.queues[0].submit([], 16)).len, 16);
  const stats = await ctl(['--control', control(), '--json', 'stats', 'p']);
  t.is(stats.code, 0, stats.stderr);
  const p = (JSON.parse(stats.stdout) as { devices: { pollMaxNs: number }[] }).devices[0];
  t.is(p.pollMaxNs, 32768);
  const text = await ctl(['--control', control(), 'stats', 'p']);
  t.regex(text.stdout, /^ {2}polling: spins on its rings for up to 32768 ns after a batch before it waits for a kick$/m);
  // A device that does not poll says nothing of it.
  t.notRegex((await ctl(['--control', control(), 'stats', 'a'])).stdout, /polling:/);
});

async function fdBudget(): Promise<number> {
  const r = await ctl(['--control', control(), '--json', 'stats']);
  if (r.code !== 0) throw new Error(`ctl stats failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { process: { fdBudget: { budget: number } } }).process.fdBudget.budget;
}

test.serial('a device added and removed again gives its fds back to the share budget', async (t) => {
  const before = await fdBudget();
  const add = await ctl(['--control', control(), 'add', '--id', 'brief', '--socket', sock('brief'), '--plugin', rng, '--entropy', '--call-deadline', '10000']);
  t.is(add.code, 0, add.stderr);
  t.is(await fdBudget(), before, 'a device never connected has no worker, and reserves nothing yet');
  await randomFrom(sock('brief'));
  const during = await fdBudget();
  t.true(during < before, `the started device's fds are reserved (${before} -> ${during})`);
  const del = await ctl(['--control', control(), 'del', 'brief']);
  t.is(del.code, 0, del.stderr);
  t.is(await fdBudget(), before);
});

test.serial('two device-adds of one id at once: one is served, the other refused, nothing half-made', async (t) => {
  const add = (socket: string) => ctl(['--control', control(), 'add', '--id', 'twin', '--socket', sock(socket), '--plugin', rng, '--entropy']);
  const results = await Promise.all([add('twin1'), add('twin2')]);
  t.deepEqual(results.map((r) => r.code).sort(), [0, 1], results.map((r) => r.stderr).join(''));
  const refused = results.find((r) => r.code === 1)!;
  t.regex(refused.stderr, /device twin (already exists|is being added or removed by another request)\b.*\[ERR_DAEMON_REQUEST\]/);
  t.is([sock('twin1'), sock('twin2')].filter((p) => existsSync(p)).length, 1, 'one socket');
  t.deepEqual((await listIds()).filter((id) => id === 'twin'), ['twin']);
  t.is((await ctl(['--control', control(), 'del', 'twin'])).code, 0);
  t.false(existsSync(sock('twin1')) || existsSync(sock('twin2')));
});

test.serial('device-del in the middle of I/O disconnects that front-end, removes the socket and frees the fds; the others serve on', async (t) => {
  const bystander = await VhostUserFrontend.connect(sock('a'), opts);
  t.teardown(() => bystander.close());
  const served = RngPump.start(t, bystander);
  await served.more(3);
  const before = daemon.fdCount();
  const victim = await VhostUserFrontend.connect(sock('b'), opts);
  t.teardown(() => victim.close());
  const busy = new RngPump(victim);
  await busy.more(5);
  t.true(daemon.fdCount() > before, 'the connected front-end holds fds in the daemon');

  const r = await ctl(['--control', control(), 'del', 'b']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'removed b\n');
  const closed = await Promise.race([victim.conn.closed.then(() => 'closed'), sleep(10_000).then(() => 'still open after 10 s')]);
  t.is(closed, 'closed', 'the front-end was disconnected');
  await t.throwsAsync(busy.stop(), undefined, 'the deleted device stops answering its front-end');
  t.false(existsSync(sock('b')));
  t.deepEqual(await listIds(), ['a', 'c', 'disk']);
  // Its listener, its session's memory and eventfds and its worker's own fds are gone.
  await until(() => daemon.fdCount() < before, `the daemon's fds below ${before} (now ${daemon.fdCount()})`);
  await served.more(5);
  t.regex(daemon.log(), /removed b/);
});

test.serial('device-del in the middle of a state transfer ends it cleanly: the front-end is disconnected and the fds are freed', async (t) => {
  const add = await ctl(['--control', control(), 'add', '--id', 'mig', '--socket', sock('mig'), '--plugin', rng, '--entropy', '--call-deadline', '10000']);
  t.is(add.code, 0, add.stderr);
  const before = daemon.fdCount();
  const fe = await VhostUserFrontend.connect(sock('mig'), opts);
  t.teardown(() => fe.close());
  await fe.queues[0].submit([], 64);
  await fe.conn.getVringBase(0); // a state transfer needs stopped rings
  // A LOAD whose data stops half-way: the back-end holds the pipe and waits for the rest.
  const [r, w] = native.pipe2();
  t.teardown(() => native.close(w));
  let ret: number | null;
  try {
    ret = await fe.conn.setDeviceStateFd(DeviceStateDirection.LOAD, DeviceStatePhase.STOPPED, r);
  } finally {
    native.close(r);
  }
  t.is(ret, null);
  t.is(native.write(w, Buffer.from('VHWS')), 4);
  t.true(daemon.fdCount() > before);

  const del = await ctl(['--control', control(), 'del', 'mig']);
  t.is(del.code, 0, del.stderr);
  const closed = await Promise.race([fe.conn.closed.then(() => 'closed'), sleep(10_000).then(() => 'still open after 10 s')]);
  t.is(closed, 'closed');
  t.false(existsSync(sock('mig')));
  await until(() => daemon.fdCount() < before, `the daemon's fds below ${before} (now ${daemon.fdCount()})`);
  // The pipe's read end is gone from the daemon: writing to it now fails.
  t.throws(() => native.write(w, Buffer.from('more')), { code: 'EPIPE' });
  await randomFrom(sock('a'));
});

test.serial('ctl add --posix-acl: the fs device offers POSIX ACLs, and a file made under a default ACL inherits it instead of taking the guest\'s umask', async (t) => {
  const share = join(dir, 'acl-share');
  mkdirSync(share);
  mkdirSync(join(share, 'inherit'));
  // A default ACL of user::rwx group::r-x mask::r-x other::--- (kernel xattr form, version 2).
  const acl = Buffer.alloc(4 + 4 * 8);
  acl.writeUInt32LE(2, 0);
  [[1, 7], [4, 5], [0x10, 5], [0x20, 0]].forEach(([tag, perm], i) => {
    acl.writeUInt16LE(tag, 4 + i * 8);
    acl.writeUInt16LE(perm, 6 + i * 8);
    acl.writeUInt32LE(0xffffffff, 8 + i * 8);
  });
  execFileSync('python3', ['-c', 'import os,sys; os.setxattr(sys.argv[1], "system.posix_acl_default", bytes.fromhex(sys.argv[2]))', join(share, 'inherit'), acl.toString('hex')]);
  const fs = join(REPO, 'dist', 'plugins', 'fs.wasm');
  for (const [id, extra] of [['acl', ['--posix-acl']], ['noacl', ['--xattr']]] as const) {
    const r = await ctl(['--control', control(), 'add', '--id', id, '--socket', sock(id), '--plugin', fs, '--shared-dir', share, '--call-deadline', '10000', ...extra]);
    t.is(r.code, 0, r.stderr);
  }
  const POSIX_ACL = 1 << 20;
  const made = async (id: string, name: string): Promise<number> => {
    const fe = await VhostUserFrontend.connect(sock(id), { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
    try {
      const fuse = new FuseClient(fe);
      const init = await fuse.init(); // offers every flag
      t.is(init.error, 0, 'INIT');
      t.is((init.body.readUInt32LE(12) & POSIX_ACL) !== 0, id === 'acl', `${id}: FUSE_POSIX_ACL offered back`);
      const dirNode = nodeOf(await fuse.lookup(1n, 'inherit'));
      // fuse_create_in: flags, mode 0666, umask 077 (sent unmasked only under FUSE_DONT_MASK).
      const c = await fuse.req(35, dirNode, Buffer.concat([Buffer.from(new Uint32Array([O.WRONLY, 0o666, 0o077, 0]).buffer), Buffer.from(`${name}\0`)]));
      t.is(c.error, 0, `${id}: CREATE`);
      return statSync(join(share, 'inherit', name)).mode & 0o7777;
    } finally {
      await fe.close();
    }
  };
  t.is(await made('acl', 'a'), 0o640, 'the default ACL decides (mode 0666 & mask r-x), not the umask 077');
  t.is(await made('noacl', 'b'), 0o666, 'without --posix-acl the guest masked the mode itself: exactly what it sent');
  for (const id of ['acl', 'noacl']) t.is((await ctl(['--control', control(), 'del', id])).code, 0);
});

test.serial('limits.openFiles caps one fs device\'s open fds (ENFILE to its guest) and not another\'s', async (t) => {
  const share = join(dir, 'share');
  mkdirSync(share);
  const names = Array.from({ length: 10 }, (_, i) => `f${i}`);
  for (const n of names) writeFileSync(join(share, n), n);
  const fs = join(REPO, 'dist', 'plugins', 'fs.wasm');
  for (const [id, extra] of [['capped', ['--open-files', '4']], ['free', []]] as const) {
    const r = await ctl(['--control', control(), 'add', '--id', id, '--socket', sock(id), '--plugin', fs, '--shared-dir', share, '--call-deadline', '10000', ...extra]);
    t.is(r.code, 0, r.stderr);
  }
  const lookups = async (id: string): Promise<number[]> => {
    const fe = await VhostUserFrontend.connect(sock(id), { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
    try {
      const fuse = new FuseClient(fe);
      t.is((await fuse.init()).error, 0, 'INIT');
      const errors: number[] = [];
      // A looked-up inode may be held by its file handle (no fd: --inode-file-handles prefer),
      // an open file always holds an fd: each name is looked up, then opened and kept open.
      for (const n of names) {
        const e = await fuse.lookup(1n, n);
        errors.push(e.error !== 0 ? e.error : (await fuse.open(nodeOf(e), O.RDONLY)).error);
      }
      return errors;
    } finally {
      await fe.close();
    }
  };
  const capped = await lookups('capped');
  const served = capped.filter((e) => e === 0).length;
  t.true(served >= 1 && served <= 4, `${served} files opened under a cap of 4: ${capped.join(',')}`);
  t.deepEqual(capped.slice(served), Array(names.length - served).fill(ERRNO.ENFILE));
  t.deepEqual(await lookups('free'), Array(names.length).fill(0));
  const stats = await ctl(['--control', control(), 'stats', 'capped']);
  t.regex(stats.stdout, /limits: memory 64\.0 MiB, call deadline 10000 ms, 4 open files/);
  for (const id of ['capped', 'free']) t.is((await ctl(['--control', control(), 'del', id])).code, 0);
});

test.serial('malformed, unknown and invalid requests get a JSON-RPC error and change nothing', async (t) => {
  const ids = await listIds();
  const req = (id: number, method: string, params?: unknown) => JSON.stringify({ jsonrpc: '2.0', id, method, ...(params === undefined ? {} : { params }) });
  const answers = (await rawRpc(
    control(),
    [
      'this is not json',
      '[]',
      JSON.stringify({ jsonrpc: '1.0', id: 3, method: 'device-list' }),
      req(4, 'device-explode'),
      req(5, 'device-add', { id: 'x', socket: 'relative.sock', plugin: rng, grants: { entropy: true } }),
      req(6, 'device-add', { id: 'y', socket: sock('y'), plugin: rng, grants: { entropy: 'yes' } }),
      req(7, 'device-del', { id: 'a', force: true }),
      req(8, 'device-add', { id: 'a', socket: sock('a2'), plugin: rng, grants: { entropy: true } }),
      req(9, 'device-add', { id: 'z', socket: sock('taken'), plugin: rng, grants: { entropy: true } }),
      req(10, 'device-del', { id: 'nosuch' }),
      req(11, 'device-del', ['a']),
      req(12, 'log-level', { level: 'loud' }),
      req(13, 'set-limits', { id: 'a', memory: '1G' }),
      req(14, 'set-limits', { id: 'a', callDeadlineMs: 0 }),
    ],
    14,
  )) as { id: number | null; error?: { code: number; message: string; data?: { field?: string; code?: string } } }[];
  t.is(answers.length, 14);
  const at = (i: number) => answers[i].error!;
  t.is(at(0).code, -32700);
  t.is(at(1).code, -32600);
  t.is(at(2).code, -32600);
  t.is(at(3).code, -32601);
  t.like(answers[4], { id: 5, error: { code: -32602, data: { field: 'params.socket' } } });
  t.like(answers[5], { id: 6, error: { code: -32602, data: { field: 'params.grants.entropy' } } });
  t.like(answers[6], { id: 7, error: { code: -32602, data: { field: 'params.force' } } });
  t.like(answers[7], { id: 8, error: { code: -32000, data: { code: 'ERR_DAEMON_REQUEST' } } });
  t.like(answers[8], { id: 9, error: { code: -32000 } });
  t.regex(at(8).message, /another back-end is already listening/);
  t.like(answers[9], { id: 10, error: { code: -32000, data: { code: 'ERR_DAEMON_REQUEST' } } });
  t.is(at(10).code, -32602);
  t.like(answers[11], { id: 12, error: { code: -32602, data: { field: 'params.level' } } });
  t.like(answers[12], { id: 13, error: { code: -32602, data: { field: 'params.memory' } } });
  t.like(answers[13], { id: 14, error: { code: -32602, data: { field: 'params.callDeadlineMs' } } });
  for (const a of answers) t.false('result' in a);
  t.deepEqual(await listIds(), ids);
  const a = await ctl(['--control', control(), '--json', 'stats', 'a']);
  t.like(JSON.parse(a.stdout), { devices: [{ limits: { callDeadlineMs: 10_000 } }] });
  t.false(existsSync(sock('y')));
  t.false(existsSync(sock('a2')));
  await randomFrom(sock('a'));
});

test.serial('another uid is refused: by the socket mode, and by SO_PEERCRED when it gets past the mode', async (t) => {
  const ids = await listIds();
  const nobody = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];
  const blocked = await ctl(['--control', control(), 'del', 'a'], nobody);
  t.is(blocked.code, 3, blocked.stderr);
  t.regex(blocked.stderr, /EACCES|permission denied/i);
  // With CAP_DAC_OVERRIDE it can connect in spite of the mode: the peer check still refuses it.
  const past = await ctl(['--control', control(), '--json', 'del', 'a'], [...nobody, '--inh-caps=+dac_override', '--ambient-caps=+dac_override']);
  t.is(past.code, 1, past.stderr);
  t.like(JSON.parse(past.stdout), { error: { code: -32001 } });
  t.regex(past.stderr, /uid 65534 may not manage this daemon/);
  t.regex(daemon.log(), /refused a control connection from uid 65534/);
  t.deepEqual(await listIds(), ids);
  await randomFrom(sock('a'));
});

test.serial('log-level changes the daemon\'s level', async (t) => {
  const r = await ctl(['--control', control(), 'log-level', 'debug']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'log level debug (was info)\n');
  await randomFrom(sock('a'));
  await daemon.waitForLog(/DEBUG/);
  t.pass();
});

test.serial('SIGTERM stops every device and removes every socket the daemon made', async (t) => {
  t.is(await daemon.stop(), 0, daemon.log());
  for (const s of ['a', 'c', 'disk', 'control']) t.false(existsSync(sock(s)), `${s}.sock removed`);
  t.true(existsSync(sock('taken')), 'the other back-end\'s socket is left alone');
});

/** A config file in a fresh directory. */
function configFile(doc: unknown): { file: string; dir: string } {
  const d = mkdtempSync(join(tmpdir(), 'daemon-config-'));
  const file = join(d, 'c.json');
  writeFileSync(file, typeof doc === 'string' ? doc : JSON.stringify(doc));
  return { file, dir: d };
}

const good = { id: 'ok', socket: 'ok.sock', plugin: rng, grants: { entropy: true } };
const BAD: [string, unknown, RegExp][] = [
  ['not JSON', '{"devices": [', /\(file\): .* is not valid JSON/],
  ['a typo in a field name', { devices: [good, { ...good, id: 'two', socket: 'two.sock', grant: {} }] }, /devices\[1\]\.grant: unknown field/],
  ['a wrong type', { devices: [good, { ...good, id: 'two', socket: 'two.sock', limits: { callDeadlineMs: '100' } }] }, /devices\[1\]\.limits\.callDeadlineMs: must be a whole number/],
  ['a bad size', { devices: [good, { ...good, id: 'two', socket: 'two.sock', limits: { memory: '64 lots' } }] }, /devices\[1\]\.limits\.memory: "64 lots" is not a size/],
  ['two devices on one socket', { devices: [good, { ...good, id: 'two' }] }, /devices\[1\]\.socket: .*ok\.sock is already used by devices\[0\]/],
  ['two devices with one id', { devices: [good, { ...good, socket: 'two.sock' }] }, /devices\[1\]\.id: ok is already used by devices\[0\]/],
  ['no plugin', { devices: [good, { id: 'two', socket: 'two.sock' }] }, /devices\[1\]: no device: give "plugin"/],
  ['an id that needs quoting', { devices: [good, { ...good, id: 'two words', socket: 'two.sock' }] }, /devices\[1\]\.id: "two words" is not a valid name/],
  ['a tag without a shared dir', { devices: [good, { ...good, id: 'two', socket: 'two.sock', grants: { tag: 'x' } }] }, /devices\[1\]\.grants\.tag: applies to "sharedDir"/],
  ['a start that is not a start mode', { devices: [good, { ...good, id: 'two', socket: 'two.sock', start: 'lazy' }] }, /devices\[1\]\.start: "lazy" is not one of "eager", "on-connect"/],
  ['a systemd socket without socket activation', { devices: [good, { ...good, id: 'two', socket: undefined, systemd: 'two' }] }, /devices\[1\]\.systemd: "two": the daemon was not started by systemd socket activation/],
];

for (const [what, doc, re] of BAD) {
  test(`a config with ${what} names the field and starts nothing`, async (t) => {
    const { file, dir: d } = configFile(doc);
    t.teardown(() => rmSync(d, { recursive: true, force: true }));
    const p = spawnDaemon(['--config', file]);
    t.is(await p.exited, 2, p.log());
    t.regex(p.log(), re);
    t.regex(p.log(), /\[ERR_CONFIG\]/);
    t.false(existsSync(join(d, 'ok.sock')), 'the good device was not started either');
  });
}

test('a TOML config (FILE.toml) serves its devices; a TOML syntax error names the line and starts nothing', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'daemon-toml-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  const file = join(d, 'daemon.toml');
  writeFileSync(file, `[[devices]]\nid = "t"\nsocket = "t.sock"\nplugin = "${rng}"\ngrants.entropy = true\n`);
  const p = await startDaemon(['--config', file]);
  t.teardown(() => void p.stop());
  await randomFrom(join(d, 't.sock'));
  t.is(await p.stop(), 0);
  writeFileSync(file, `[[devices]]\nid = "t"\nsocket = "t.sock"\nplugin = "${rng}"\ngrants.entropy = yes\n`);
  const bad = spawnDaemon(['--config', file]);
  t.is(await bad.exited, 2, bad.log());
  t.regex(bad.log(), /config .*daemon\.toml: \(file\): .*daemon\.toml is not valid TOML: line 5, column \d+: .*\[ERR_CONFIG\]/);
  t.false(existsSync(join(d, 't.sock')));
});

test('systemd socket activation: a device and the management socket come from LISTEN_FDS by name', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'daemon-systemd-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  const devPath = join(d, 'rng.sock');
  const ctlPath = join(d, 'control.sock');
  // What systemd does for a .socket unit: it listens, the service inherits fds 3 and 4.
  const devFd = native.listenUnix(devPath, 8);
  const ctlFd = native.listenUnix(ctlPath, 8);
  const file = join(d, 'c.json');
  writeFileSync(file, JSON.stringify({ control: { systemd: 'control' }, devices: [{ id: 'rng', systemd: 'rng', plugin: rng, grants: { entropy: true } }] }));
  // LISTEN_PID is the service's own pid: a shell sets it to its $$ and execs the daemon in place.
  const p = spawnDaemon(['--config', file], {
    wrap: ['sh', '-c', 'export LISTEN_PID=$$; exec "$@"', 'sh'],
    env: { LISTEN_FDS: '2', LISTEN_FDNAMES: 'rng:control' },
    stdio: ['ignore', 'ignore', 'pipe', devFd, ctlFd],
  });
  native.close(devFd);
  native.close(ctlFd);
  t.teardown(() => p.stop());
  await p.waitForLog(/serving 1 of 1 device/);
  t.regex(p.log(), /serving rng: .*rng\.wasm, started when a front-end connects on fd 3/);
  await randomFrom(devPath);
  const r = await ctl(['--control', ctlPath, '--json', 'list']);
  t.is(r.code, 0, r.stderr);
  t.deepEqual((JSON.parse(r.stdout) as { devices: { id: string; listen: string }[] }).devices.map((x) => [x.id, x.listen]), [['rng', 'fd 3']]);
  t.is(await p.stop(), 0, p.log());
});

test('the management socket of a running daemon is not taken over: the second daemon starts nothing', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'daemon-twice-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  const file = join(d, 'c.json');
  writeFileSync(file, JSON.stringify({ control: 'control.sock', devices: [] }));
  const first = await startDaemon(['--config', file]);
  t.teardown(() => first.stop());
  writeFileSync(join(d, 'd.json'), JSON.stringify({ control: 'control.sock', devices: [{ ...good, socket: 'second.sock' }] }));
  const second = spawnDaemon(['--config', join(d, 'd.json')]);
  t.is(await second.exited, 1, second.log());
  t.regex(second.log(), /control socket .* another daemon is already listening there; .*\[ERR_CONTROL_SOCKET\]/);
  t.false(existsSync(join(d, 'second.sock')));
  const r = await ctl(['--control', join(d, 'control.sock'), 'list']);
  t.is(r.stdout, 'no devices\n');
});

test('serve and ctl document themselves; serve without --config is a usage error', async (t) => {
  const [node, serveHelp] = hostCommand(['serve', '--help']);
  const help = execFileSync(node, serveHelp, { encoding: 'utf8' });
  for (const flag of ['--config FILE', '--control PATH', '--log-level LEVEL', 'LISTEN_FDS']) t.true(help.includes(flag), flag);
  const c = await ctl(['--help']);
  t.is(c.code, 0);
  for (const cmd of ['list', 'stats [ID]', 'add --id ID', '--poll-max-ns N', 'del ID', 'log-level LEVEL', '--json']) t.true(c.stdout.includes(cmd), cmd);
  const [, topHelp] = hostCommand(['--help']);
  t.regex(execFileSync(node, topHelp, { encoding: 'utf8' }), /vhost-wasm serve --config FILE/);
  const bare = spawnDaemon([]);
  t.is(await bare.exited, 2);
  t.regex(bare.log(), /vhost-wasm serve: give --config FILE/);
});

test('ctl: usage errors exit 2, an unreachable daemon exits 3', async (t) => {
  t.is((await ctl(['list'])).code, 2);
  t.is((await ctl(['--control', '/nonexistent/x.sock', 'frobnicate'])).code, 2);
  const r = await ctl(['--control', '/nonexistent/x.sock', 'list']);
  t.is(r.code, 3);
  t.regex(r.stderr, /cannot reach the daemon at \/nonexistent\/x\.sock/);
});
