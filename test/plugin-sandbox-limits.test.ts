// The bounds on what a plugin can take from the host, attacked the way issue 9 found them
// open, against the real host process: one host serves a healthy rng device next to each
// hostile plugin, over real sockets. Each attack must fail (or be capped) for its own device
// only, with a log line that says what happened, while rng keeps serving.
import test from 'ava';
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { loadPlugin, PluginError } from '../host/plugin/index.ts';
import { startMultiHost, type MultiHost } from './helpers/multi-host.ts';
import { buildHogFixtures, buildSdkFixtures, type HogFixture, type SdkFixture } from './fixtures/plugins/build-sandbox-fixtures.ts';

const root = join(import.meta.dirname, '..');
const NEEDS_RESET = 0x40;
const MiB = 1 << 20;
const GRAB_LIMIT = 128 * MiB;
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true };

let dir: string;
let sdk: Record<SdkFixture, string>;
let hogs: Record<HogFixture, string>;
let rngFile: string;

interface LimitsHost extends MultiHost {
  sockets: Record<string, string>;
  peakRss(): number;
}

/** A host serving the rng bystander and the given devices, each on a fresh socket. */
async function startMulti(devices: { label: string; plugin: string; options?: Record<string, unknown> }[]): Promise<LimitsHost> {
  const sockets: Record<string, string> = {};
  const specs = [{ label: 'rng', plugin: rngFile, options: { entropy: true } }, ...devices].map((d) => ({
    ...d,
    options: { ...d.options, cacheDir: join(dir, 'cache') },
    callDeadlineMs: 10_000,
    socket: (sockets[d.label] = join(dir, `${d.label}-${Math.random().toString(36).slice(2)}.sock`)),
  }));
  const host = await startMultiHost(specs);
  return {
    ...host,
    sockets,
    peakRss: () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${host.pid}/status`, 'utf8'))![1]) * 1024,
  };
}

/** Three rng requests answered with random bytes. */
async function rngServes(fe: VhostUserFrontend): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const r = await fe.queues[0].submit([], 64);
    if (r.len !== 64 || new Set(r.data).size < 16) throw new Error('rng did not answer with random bytes');
  }
}

/** Sends "boom" to the hostile device; resolves once it reports NEEDS_RESET. */
async function attack(fe: VhostUserFrontend): Promise<void> {
  const change = new Promise<void>((resolve) => fe.backend!.once('config-change', () => resolve()));
  fe.queues[0].submit([Buffer.from('boom')], 8).catch(() => {});
  await change;
}

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'plugin-sandbox-limits-'));
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  rngFile = join(root, 'dist', 'plugins', 'rng.wasm');
  const out = join(root, 'dist', 'test-plugins');
  sdk = await buildSdkFixtures(root, out);
  hogs = await buildHogFixtures(root, out);
});

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test.serial('many core instances, each growing its own memory and table, share one --memory-limit', async (t) => {
  const host = await startMulti([{ label: 'hog', plugin: hogs.grabbing, options: { memoryLimitBytes: GRAB_LIMIT } }]);
  try {
    const rng = await VhostUserFrontend.connect(host.sockets.rng, opts);
    const hog = await VhostUserFrontend.connect(host.sockets.hog, opts);
    await rngServes(rng);
    // The hog component loaded and serves: its 14 extra instances grabbed what they could at start.
    const r = await hog.queues[0].submit([Buffer.from('ping')], 8);
    t.deepEqual([...r.data], new Array(8).fill(0x5a));
    // Its trap reports the memory of the whole plugin: every memory of every instance.
    await attack(hog);
    const line = await host.waitForLog(/plugin bad: handle: trapped: .*memory \d+ bytes of its limit/);
    const used = Number(/memory (\d+) bytes of its limit of (\d+)/.exec(line)![1]);
    t.log(line.replace(/^\S+ /, ''));
    t.true(used <= GRAB_LIMIT, `all memories together (${used}) stay within the limit`);
    t.true(used > GRAB_LIMIT * 0.75, `the hogs did take (nearly) all of it (${used})`);
    t.is((await hog.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET);
    await rngServes(rng);
    // 15 memories each grown to the limit would be 1.9 GiB; the whole host must stay far below.
    const peak = host.peakRss();
    t.log(`host peak RSS ${(peak / MiB).toFixed(0)} MiB`);
    t.true(peak < GRAB_LIMIT + 768 * MiB, `host peak RSS ${peak} stays near one limit's worth of plugin memory`);
    await rng.close();
    await hog.close();
  } finally {
    await host.stop();
  }
});

for (const [fixture, error] of [
  ['too-many-instances', /load: creates 17 core wasm instances; a plugin may have at most 16/],
  ['memory-minimum', /load: needs \d+ bytes of linear memory at start \(9 memories in 10 core instances\), more than the memory limit of 67108864 bytes/],
  ['table-minimum', /load: its tables need \d+ elements at start; a plugin may have at most 65536 in all/],
] as [HogFixture, RegExp][]) {
  test.serial(`a component whose ${fixture} cannot fit is refused at start, before it runs`, async (t) => {
    const socket = join(dir, `${fixture}.sock`);
    const cli = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'host', 'cli', 'main.ts'), '--socket-path', socket, '--plugin', hogs[fixture], '--memory-limit', '64M'], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, XDG_CACHE_HOME: join(dir, 'xdg') },
      timeout: 60_000,
    });
    t.is(cli.status, 1);
    t.regex(cli.stderr, error);
    t.false(existsSync(socket), 'no socket was opened');
  });
}

for (const [fixture, error] of [
  ['alias-list', /plugin bad: handle: returned a list of \d{6,} entries where at most \d{4} are allowed/],
  ['alias-entry', /plugin bad: handle: returned more list bytes than the call allows \(a \d{8,}-byte list with \d{1,3} bytes of its budget left\)/],
  ['past-end', /plugin bad: handle: a returned list at \d+ of 4 bytes lies outside the plugin's \d+-byte memory/],
] as [SdkFixture, RegExp][]) {
  test.serial(`${fixture}: the answer is refused before the host copies it, and only its device fails`, async (t) => {
    const host = await startMulti([{ label: 'bad', plugin: sdk[fixture] }]);
    try {
      const rng = await VhostUserFrontend.connect(host.sockets.rng, opts);
      const bad = await VhostUserFrontend.connect(host.sockets.bad, opts);
      await rngServes(rng);
      const served = await bad.queues[0].submit([Buffer.from('ping')], 8);
      t.is(served.len, 8, 'healthy before the attack');
      const peakBefore = host.peakRss();
      await attack(bad);
      t.log((await host.waitForLog(error)).replace(/^\S+ /, ''));
      t.is((await bad.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET, 'the device needs a reset');
      await rngServes(rng);
      // jco's own lift would have copied 64 (or 1) x 32 MiB before anyone looked at it.
      const grown = host.peakRss() - peakBefore;
      t.true(grown < 32 * MiB, `host peak RSS grew by ${grown} bytes during the attack`);
      await rng.close();
      await bad.close();
    } finally {
      await host.stop();
    }
  });
}

test('a state chunk pointing past the end of plugin memory fails the save instead of saving nothing', async (t) => {
  const dev = await loadPlugin(readFileSync(sdk['state-past-end']), { grants: { log() {} }, cacheDir: join(dir, 'cache') });
  const err = t.throws(() => dev.getState(0, 4), { instanceOf: PluginError }) as PluginError;
  t.is(err.kind, 'invalid');
  t.regex(err.message, /^plugin bad: get-state: a returned list at \d+ of 4 bytes lies outside the plugin's \d+-byte memory/);
  t.regex(dev.unusable() ?? '', /invalid in get-state/);
});
