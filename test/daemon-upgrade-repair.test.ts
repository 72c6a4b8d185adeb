// plugin-upgrade of a device with no running instance, as an operator repairs one with the built
// `vhost-wasm serve --config` and `vhost-wasm ctl upgrade` over the real management socket: a
// device that never started and whose build cannot start, a device waiting to retry a failed
// start (back-off), and an eager device whose worker was killed. The new build gets device-add's
// checks and one start; a build that fails them is refused and nothing changes; one that
// passes serves (at once for an eager device, at the next connection for an on-connect one).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, type FrontendOptions } from '../host/frontend/driver.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { REPO } from './helpers/host-process.ts';
import { ctl, type DaemonProcess, deviceStats, startDaemonWith } from './helpers/daemon-process.ts';
import { buildFixtures } from './fixtures/plugins/build-fixtures.ts';
import { buildPlugin } from '../plugins/build-plugins.mjs';
import type { MethodResults } from '../host/daemon/methods.ts';

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };
const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const fixtures = join(REPO, 'dist', 'test-plugins');
const startTrap = join(fixtures, 'start-trap.wasm');

let dir: string;
let daemon: DaemonProcess;
let bad: Awaited<ReturnType<typeof buildFixtures>>;
const sock = (name: string) => join(dir, `${name}.sock`);
const control = () => sock('control');

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  bad = await buildFixtures(REPO, fixtures);
  await buildPlugin({ root: REPO, sources: [join(REPO, 'test', 'fixtures', 'plugins', 'bad.c')], outFile: startTrap, defines: ['BAD_START_TRAP'] });
  dir = mkdtempSync(join(tmpdir(), 'daemon-upgrade-repair-'));
  const dev = (id: string, plugin: string) => ({ id, socket: `${id}.sock`, plugin, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } });
  daemon = await startDaemonWith(dir, {
    control: 'control.sock',
    start: 'on-connect',
    devices: [dev('r', rng), dev('trapstart', startTrap), dev('badname', bad.name), { ...dev('dies', bad.loop), limits: { callDeadlineMs: 200 }, start: 'eager' }],
  });
});

test.after.always(async () => {
  if (daemon && daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const stats = (id: string) => deviceStats(control(), id);

async function upgrade(id: string, plugin: string): Promise<MethodResults['plugin-upgrade']> {
  const r = await ctl(['--control', control(), '--json', 'upgrade', id, '--plugin', plugin]);
  if (r.code !== 0) throw new Error(`ctl upgrade ${id} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as MethodResults['plugin-upgrade'];
}

/** What a front-end gets from the device at `path`: random bytes from rng. */
async function randomFrom(path: string): Promise<void> {
  const fe = await VhostUserFrontend.connect(path, opts);
  try {
    const r = await fe.queues[0].submit([], 64);
    if (r.len !== 64 || new Set(r.data).size < 16) throw new Error(`rng at ${path} answered ${r.len} bytes`);
  } finally {
    await fe.close();
  }
}

/** A connection that the device closes because its worker does not start. */
async function refusedConnection(t: import('ava').ExecutionContext, id: string): Promise<void> {
  const c = VhostUserConnection.connect(sock(id));
  t.teardown(() => c.close());
  await t.throwsAsync(c.getFeatures(), undefined, `${id}'s worker does not start: the connection is closed`);
}

test.serial('a device that never started and whose build traps as it starts: upgraded, its next front-end is served by the new build', async (t) => {
  t.like(await stats('trapstart'), { state: 'not-started', workerStarts: 0, plugin: startTrap });
  const r = await upgrade('trapstart', rng);
  t.like(r, { id: 'trapstart', plugin: rng, name: 'rng', fromVersion: null, frontEnd: false });
  await daemon.waitForLog(/device trapstart: plugin replaced \(no instance was running\): rng .* it starts from it when a front-end connects/);
  t.like(await stats('trapstart'), { state: 'not-started', workerStarts: 0, plugin: rng, lastFailure: null });
  await randomFrom(sock('trapstart'));
  t.like(await stats('trapstart'), { state: 'idle', name: 'rng', workerStarts: 1, plugin: rng });
  const human = await ctl(['--control', control(), 'upgrade', 'r', '--plugin', rng]);
  t.is(human.code, 0, human.stderr);
});

test.serial('a device waiting to retry a failed start: a bad new build is refused and nothing changes; a good one ends the wait and serves', async (t) => {
  await refusedConnection(t, 'badname');
  const before = await stats('badname');
  t.like(before, { state: 'failed', workerStarts: 1, plugin: bad.name, startBackoff: { failures: 1 } });

  // Fails device-add's checks (another version of the world): refused, in the loader's words.
  const old = await ctl(['--control', control(), 'upgrade', 'badname', '--plugin', bad.version]);
  t.is(old.code, 1);
  t.regex(old.stderr, /the new plugin would not load: plugin component [0-9a-f]{12}: load: this plugin is built for vhost:device@0\.1\.0/);
  // Passes them, but traps as it starts: refused too.
  const trapping = await ctl(['--control', control(), 'upgrade', 'badname', '--plugin', startTrap]);
  t.is(trapping.code, 1);
  t.regex(trapping.stderr, /the new plugin did not start: /);
  const missing = await ctl(['--control', control(), 'upgrade', 'badname', '--plugin', join(dir, 'nope.wasm')]);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /the new plugin would not load: .*cannot read the plugin file/);
  const after = await stats('badname');
  t.like(after, { state: 'failed', workerStarts: 1, plugin: bad.name, lastFailure: before.lastFailure });
  t.is(after.startBackoff?.failures, 1, 'still waiting after its one failed start');

  const r = await upgrade('badname', rng);
  t.like(r, { id: 'badname', name: 'rng', fromVersion: null, frontEnd: false });
  t.like(await stats('badname'), { state: 'not-started', plugin: rng, startBackoff: null, lastFailure: null });
  // At once, not after the wait: the back-off ended with the upgrade.
  await randomFrom(sock('badname'));
  t.like(await stats('badname'), { state: 'idle', name: 'rng', workerStarts: 2 });
});

test.serial('an eager device whose worker died: the new build starts at once and serves', async (t) => {
  t.like(await stats('dies'), { state: 'idle', start: 'eager', workerStarts: 1 });
  const fe = await VhostUserFrontend.connect(sock('dies'), opts);
  // The fixture loops on any request: the watchdog ends its worker at the call deadline.
  void fe.queues[0].submit([], 64).catch(() => {});
  // The failure reaches the main thread on its own time: poll for it (bounded).
  for (let i = 0; i < 500 && (await stats('dies')).state !== 'failed'; i++) await sleep(20);
  await fe.close();
  const dead = await stats('dies');
  t.like(dead, { state: 'failed', workerStarts: 1 });
  t.regex(dead.lastFailure ?? '', /deadline/);

  const r = await upgrade('dies', bad.good);
  t.like(r, { id: 'dies', frontEnd: false, fromVersion: null });
  await daemon.waitForLog(/device dies: plugin replaced \(no instance was running: .*\): .* serving from it now/);
  t.like(await stats('dies'), { state: 'idle', plugin: bad.good, workerStarts: 2 });
  const again = await VhostUserFrontend.connect(sock('dies'), opts);
  t.teardown(() => again.close());
  const answer = await again.queues[0].submit([], 64);
  // The control build answers every request with its writable length of 0x5a (the looping build never answered).
  t.is(answer.len, 64);
  t.true(answer.data.subarray(0, 64).every((b) => b === 0x5a));
  t.like(await stats('dies'), { state: 'connected', workerStarts: 2 });
});
