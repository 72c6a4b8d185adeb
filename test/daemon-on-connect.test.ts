// Devices whose worker starts on their first front-end connection ("start": "on-connect"), as an
// operator meets them: the built `vhost-wasm serve --config` and `vhost-wasm ctl`. A plugin that
// can never load is still refused at serve start and at device-add, with the error an eager
// start gives; one that fails as it is built is reported when a front-end connects (the
// connection closed, the log, device-stats and the start_failed fault say why; later connections
// try again only after a wait doubling from 1 s, which set-limits ends; device-del removes it). A device never connected can be listed,
// measured, deleted, upgraded, migrated to, and stopped by SIGTERM.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, type FrontendOptions } from '../host/frontend/driver.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { migrate } from '../host/frontend/migrate.ts';
import { REPO } from './helpers/host-process.ts';
import { randomFrom } from './helpers/device-checks.ts';
import { ctl, scrapeMetrics, startDaemon, type DaemonProcess, deviceStats, startDaemonWith } from './helpers/daemon-process.ts';
import { buildFixtures } from './fixtures/plugins/build-fixtures.ts';
import { buildPlugin } from '../plugins/build-plugins.mjs';
import type { MethodResults } from '../host/daemon/methods.ts';

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };
const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const fixtures = join(REPO, 'dist', 'test-plugins');
const blk030 = join(fixtures, 'upgrade-blk-0.3.0.wasm');
const rngFork = join(fixtures, 'upgrade-rng-fork.wasm');
const startTrap = join(fixtures, 'start-trap.wasm');

let dir: string;
let daemon: DaemonProcess;
let bad: Awaited<ReturnType<typeof buildFixtures>>;
const sock = (name: string) => join(dir, `${name}.sock`);
const control = () => sock('control');

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  bad = await buildFixtures(REPO, fixtures);
  await buildPlugin({ root: REPO, sources: [join(REPO, 'test', 'fixtures', 'plugins', 'upgrade-blk.c')], outFile: blk030 });
  await buildPlugin({ root: REPO, sources: [join(REPO, 'test', 'fixtures', 'plugins', 'upgrade-rng.c')], outFile: rngFork, defines: ['UPGRADE_OTHER_NAME'] });
  await buildPlugin({ root: REPO, sources: [join(REPO, 'test', 'fixtures', 'plugins', 'bad.c')], outFile: startTrap, defines: ['BAD_START_TRAP'] });
  dir = mkdtempSync(join(tmpdir(), 'daemon-on-connect-'));
  const r = (id: string) => ({ id, socket: `${id}.sock`, plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } });
  daemon = await startDaemonWith(dir, {
    control: 'control.sock',
    metrics: `unix:${sock('metrics')}`,
    start: 'on-connect',
    devices: [
      r('r'),
      r('dst'),
      r('idle'),
      r('gone'),
      { ...r('e'), start: 'eager' },
      { id: 'disk', socket: 'disk.sock', plugin: blk, grants: { storage: 'memory:1M' }, limits: { callDeadlineMs: 10_000 } },
      // Instantiate, then trap in identity() / fail the identity check: only a start can tell.
      { id: 'trapstart', socket: 'trapstart.sock', plugin: startTrap },
      { id: 'badname', socket: 'badname.sock', plugin: bad.name },
      // Can never load: refused at start, as an eager device would be.
      { id: 'old', socket: 'old.sock', plugin: bad.version },
      { id: 'core', socket: 'core.sock', plugin: bad['core-module'] },
      { id: 'import', socket: 'import.sock', plugin: bad.import },
      { id: 'unused', socket: 'unused.sock', plugin: rng, grants: { storage: 'memory:1M' } },
    ],
  });
});

test.after.always(async () => {
  if (daemon && daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const stats = (id: string) => deviceStats(control(), id);

async function listed(): Promise<Map<string, string>> {
  const r = await ctl(['--control', control(), '--json', 'list']);
  if (r.code !== 0) throw new Error(`ctl list failed (${r.code}): ${r.stderr}`);
  return new Map((JSON.parse(r.stdout) as MethodResults['device-list']).devices.map((d) => [d.id, d.state]));
}

const metrics = () => scrapeMetrics(sock('metrics'));

function sample(body: string, name: string, labels: string): number {
  const m = body.match(new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, 'm'));
  if (!m) throw new Error(`no ${name}{${labels}} in the exposition`);
  return Number(m[1]);
}

test.serial('serve start: plugins that can never load are refused with the loader\'s own error; the others wait for a front-end', async (t) => {
  const log = daemon.log();
  t.regex(log, /device old not started: plugin component [0-9a-f]{12}: load: this plugin is built for vhost:device@0\.1\.0; this host speaks vhost:device@0\.2\.0 to @0\.2\.\d+/);
  t.regex(log, /device core not started: .*this is a core wasm module, not a component/);
  t.regex(log, /device import not started: .*imports vhost:device\/clock@0\.2\.\d+, which this host .* does not provide/);
  t.regex(log, /device unused not started: .*was granted storage \(memory:1048576\) but does not import vhost:device\/storage@0\.2\.\d+/);
  t.regex(log, /serving 8 of 12 device\(s\); not started: old, core, import, unused/);
  t.regex(log, /serving r: .*rng\.wasm, started when a front-end connects on /);
  const states = await listed();
  t.deepEqual([...states], [['r', 'not-started'], ['dst', 'not-started'], ['idle', 'not-started'], ['gone', 'not-started'], ['e', 'idle'], ['disk', 'not-started'], ['trapstart', 'not-started'], ['badname', 'not-started']]);
  const human = await ctl(['--control', control(), 'list']);
  t.regex(human.stdout, new RegExp(`^r\\s+-\\s+not-started\\s+\\(starts on connect\\)\\s+${sock('r')}$`, 'm'));
  t.regex(human.stdout, new RegExp(`^e\\s+-\\s+idle\\s+rng \\(4, 1q\\)\\s+${sock('e')}$`, 'm'));
  t.like(await stats('idle'), { start: 'on-connect', workerStarts: 0, lastFailure: null, name: null, frontEnd: false });
  t.like(await stats('e'), { start: 'eager', workerStarts: 1, name: 'rng' });
});

async function fdBudget(): Promise<number> {
  const r = await ctl(['--control', control(), '--json', 'stats']);
  return (JSON.parse(r.stdout) as MethodResults['device-stats']).process.fdBudget.budget;
}

test.serial('the first connection starts the worker: the front-end is answered and served, and the device\'s fds are reserved then', async (t) => {
  const before = await fdBudget();
  const c = VhostUserConnection.connect(sock('disk'));
  t.teardown(() => c.close());
  t.not(await c.getFeatures(), 0n, 'GET_FEATURES answered by the blk device started for this connection');
  c.close();
  t.true((await fdBudget()) < before, 'the started device\'s own fds are kept out of the share budget');
  await randomFrom(sock('r'));
  t.like(await stats('r'), { workerStarts: 1, name: 'rng', state: 'idle', connectionsAccepted: 1 });
  // Started once: the next front-end finds the worker running.
  await randomFrom(sock('r'));
  t.like(await stats('r'), { workerStarts: 1, connectionsAccepted: 2 });
});

test.serial('device-add of a plugin that can never load is refused at once, with the error an eager start gives', async (t) => {
  const before = await listed();
  for (const start of ['on-connect', 'eager']) {
    const r = await ctl(['--control', control(), 'add', '--id', `v-${start}`, '--socket', sock(`v-${start}`), '--plugin', bad.version, '--start', start]);
    t.is(r.code, 1, r.stdout);
    t.regex(r.stderr, /plugin component [0-9a-f]{12}: load: this plugin is built for vhost:device@0\.1\.0; this host speaks vhost:device@0\.2\.0 to @0\.2\.\d+: rebuild it against wit\//);
    const u = await ctl(['--control', control(), 'add', '--id', `u-${start}`, '--socket', sock(`u-${start}`), '--plugin', rng, '--storage', 'memory:1M', '--start', start]);
    t.is(u.code, 1, u.stdout);
    t.regex(u.stderr, /was granted storage \(memory:1048576\) but does not import vhost:device\/storage@0\.2\.\d+: it is not a block device/);
    t.false(existsSync(sock(`v-${start}`)) || existsSync(sock(`u-${start}`)), 'no socket is left');
  }
  const typo = await ctl(['--control', control(), 'add', '--id', 'x', '--socket', sock('x'), '--plugin', rng, '--start', 'lazy']);
  t.is(typo.code, 1);
  t.regex(typo.stderr, /params\.start: "lazy" is not one of "eager", "on-connect"/);
  t.deepEqual(await listed(), before);
});

test.serial('a plugin that fails as it is built is reported when a front-end connects; reconnections retry after a doubling wait that set-limits ends; device-del removes it', async (t) => {
  const first = VhostUserConnection.connect(sock('badname'));
  t.teardown(() => first.close());
  await t.throwsAsync(first.getFeatures(), undefined, 'the front-end\'s connection is closed');
  await daemon.waitForLog(/listener badname: cannot start the device for a new connection: .*identity name "Not A Name!"/);
  const s = await stats('badname');
  t.like(s, { state: 'failed', workerStarts: 1, frontEnd: false });
  t.regex(s.lastFailure ?? '', /^did not start: .*identity name "Not A Name!"/);
  t.is(sample(await metrics(), 'vhost_wasm_device_faults_total', 'device="badname",tenant="",kind="start_failed"'), 1);
  t.is(sample(await metrics(), 'vhost_wasm_device_up', 'device="badname",tenant=""'), 0);

  t.like(s.startBackoff, { failures: 1 });

  // A front-end reconnecting at once, again and again, does not start a worker each time: starts
  // wait 1 s after a failure, doubling per failure in a row. Whatever the time the connections
  // took, the starts stay within what those waits allow (k starts need 1 + 2 + ... + 2^(k-2) s).
  const quick = 20;
  const t0 = performance.now();
  for (let i = 0; i < quick; i++) {
    const c = VhostUserConnection.connect(sock('badname'));
    t.teardown(() => c.close());
    await t.throwsAsync(c.getFeatures(), undefined, `connection ${i} is closed`);
  }
  const elapsed = (performance.now() - t0) / 1000;
  const during = (await stats('badname')).workerStarts - 1;
  const allowed = Math.floor(Math.log2(elapsed + 1)) + 1;
  t.log(`${quick} connections over ${elapsed.toFixed(1)} s started ${during} worker(s) (at most ${allowed})`);
  t.true(during <= allowed, `${during} starts for ${quick} connections over ${elapsed.toFixed(1)} s`);
  t.true(during < quick / 2);
  const waitLine = await daemon.waitForLog(/listener badname: cannot start the device for a new connection: .*not retried for another \d+ s/);
  t.regex(waitLine, /the next connection after \d+ s tries again/);
  const waiting = await stats('badname');
  t.true((waiting.startBackoff?.failures ?? 0) >= 1, 'device-stats shows the failed starts in a row');
  const shown = await ctl(['--control', control(), 'stats', 'badname']);
  t.regex(shown.stdout, /failed start\(s\) in a row, next try/);

  // set-limits ends the wait: the next connection starts a worker at once.
  const before = waiting.workerStarts;
  const lim = await ctl(['--control', control(), 'set-limits', 'badname', '--call-deadline', '5000']);
  t.is(lim.code, 0, lim.stderr);
  t.is((await stats('badname')).startBackoff, null);
  const again = VhostUserConnection.connect(sock('badname'));
  t.teardown(() => again.close());
  await t.throwsAsync(again.getFeatures());
  t.like(await stats('badname'), { state: 'failed', workerStarts: before + 1, startBackoff: { failures: 1 } });
  await randomFrom(sock('r')); // the others serve on

  const del = await ctl(['--control', control(), 'del', 'badname']);
  t.is(del.code, 0, del.stderr);
  t.false(existsSync(sock('badname')));
});

test.serial('a plugin that traps as it starts: the front-end\'s connection is closed and the trap is what device-stats and the log say', async (t) => {
  const c = VhostUserConnection.connect(sock('trapstart'));
  t.teardown(() => c.close());
  await t.throwsAsync(c.getFeatures());
  const line = await daemon.waitForLog(/listener trapstart: cannot start the device for a new connection: /);
  t.regex(line, /trap|unreachable/i);
  const s = await stats('trapstart');
  t.like(s, { state: 'failed', workerStarts: 1 });
  t.regex(s.lastFailure ?? '', /^did not start: .*(trap|unreachable)/i);
  await randomFrom(sock('r'));
});

test.serial('device-stats and metrics of a device never connected; device-del of one', async (t) => {
  const body = await metrics();
  t.is(sample(body, 'vhost_wasm_device_up', 'device="idle",tenant=""'), 1, 'served, waiting for its first front-end');
  t.is(sample(body, 'vhost_wasm_device_worker_starts_total', 'device="idle",tenant=""'), 0);
  t.is(sample(body, 'vhost_wasm_device_faults_total', 'device="idle",tenant="",kind="start_failed"'), 0);
  const del = await ctl(['--control', control(), 'del', 'gone']);
  t.is(del.code, 0, del.stderr);
  t.false(existsSync(sock('gone')));
  t.false((await listed()).has('gone'));
});

test.serial('plugin-upgrade of a device never connected: checked against the running build, then it stays unstarted and starts from the new build', async (t) => {
  const other = await ctl(['--control', control(), 'upgrade', 'idle', '--plugin', rngFork]);
  t.is(other.code, 1);
  t.regex(other.stderr, /the new plugin is "rng-fork", not "rng"/);
  t.like(await stats('idle'), { state: 'not-started', workerStarts: 0, plugin: rng });
  const r = await ctl(['--control', control(), '--json', 'upgrade', 'disk', '--plugin', blk030]);
  t.is(r.code, 0, r.stderr);
  t.like(JSON.parse(r.stdout) as MethodResults['plugin-upgrade'], { id: 'disk', name: 'blk', fromVersion: '0.2.0', toVersion: '0.3.0', frontEnd: false });
  t.like(await stats('disk'), { state: 'idle', plugin: blk030 }, 'disk was connected once (GET_FEATURES above)');
  // idle: never connected, its build checked by starting it for the check only.
  const same = await ctl(['--control', control(), '--json', 'upgrade', 'idle', '--plugin', rng]);
  t.is(same.code, 0, same.stderr);
  t.like(JSON.parse(same.stdout) as MethodResults['plugin-upgrade'], { name: 'rng', frontEnd: false });
  t.like(await stats('idle'), { state: 'not-started', workerStarts: 0 });
  await daemon.waitForLog(/device idle: plugin upgraded \(device not started yet: it starts from the new build when a front-end connects\)/);
});

test.serial('migration to a device never connected: the state loads into the worker its first connection starts', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('r'), opts);
  t.teardown(() => fe.close());
  await fe.queues[0].submit([], 64);
  t.is((await stats('dst')).state, 'not-started');
  const report = await migrate(fe, sock('dst'));
  t.true(report.bytes > 0);
  const got = await fe.queues[0].submit([], 64);
  t.is(got.len, 64, 'the destination serves the migrated rings');
  t.like(await stats('dst'), { state: 'connected', workerStarts: 1, frontEnd: true });
  await fe.close();
});

test.serial('SIGTERM with devices never connected stops the daemon and removes their sockets', async (t) => {
  t.is((await stats('idle')).state, 'not-started');
  t.is(await daemon.stop(), 0, daemon.log());
  for (const s of ['r', 'dst', 'idle', 'e', 'disk', 'control', 'metrics']) t.false(existsSync(sock(s)), `${s}.sock removed`);
});

test('a plugin not in the transpile cache yet is transpiled and checked at serve start (in a worker), before any front-end; the first one is served', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'daemon-on-connect-cold-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  const cache = join(d, 'cache');
  writeFileSync(
    join(d, 'daemon.json'),
    JSON.stringify({
      devices: [
        { id: 'cold', socket: 'cold.sock', plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } },
        { id: 'cold-old', socket: 'cold-old.sock', plugin: bad.version },
      ],
    }),
  );
  const p = await startDaemon(['--config', join(d, 'daemon.json')], { env: { XDG_CACHE_HOME: cache } });
  t.teardown(() => void p.stop());
  t.regex(p.log(), /device cold-old not started: plugin component [0-9a-f]{12}: load: this plugin is built for vhost:device@0\.1\.0/);
  t.regex(p.log(), /serving 1 of 2 device\(s\)/);
  const entries = readdirSync(join(cache, 'vhost-wasm'));
  t.is(entries.filter((e) => !e.includes('.tmp-')).length, 1, `the transpile cache holds rng already: ${entries.join(', ')}`);
  await randomFrom(join(d, 'cold.sock'));
  t.is(await p.stop(), 0);
});
