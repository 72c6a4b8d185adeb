// I/O throttling (issue 13, "limits per device") as an operator meets it: `vhost-wasm serve
// --config FILE` (the built binary) with a device limited to 1000 IOPS, two devices of a tenant
// sharing one throttle group, and an unthrottled bystander; real front-ends keep many requests
// in flight and count what completes. The bands are wide on purpose (no timing assertion): a
// throttle that does not hold, is not shared, or turns back-pressure into errors falls far
// outside them. set-limits changes a running device's limits; bad values name the field.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, type FrontendOptions } from '../host/frontend/driver.ts';
import { REPO } from './helpers/host-process.ts';
import { ctl, rawRpc, spawnDaemon, type DaemonProcess, deviceStats, startDaemonWith } from './helpers/daemon-process.ts';

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };
const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');

let dir: string;
let daemon: DaemonProcess;
const sock = (name: string) => join(dir, `${name}.sock`);
const control = () => sock('control');

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'daemon-throttle-'));
  const dev = (id: string, extra: object = {}) => ({ id, tenant: 'acme', socket: `${id}.sock`, plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 }, ...extra });
  daemon = await startDaemonWith(dir, {
    control: 'control.sock',
    devices: [
      dev('slow', { limits: { callDeadlineMs: 10_000, iops: 1000 } }),
      dev('free'),
      dev('g1', { throttleGroup: 'pair', limits: { callDeadlineMs: 10_000, iops: 1000 } }),
      // Takes the group's limits.
      dev('g2', { throttleGroup: 'pair' }),
    ],
  });
});

test.after.always(async () => {
  if (daemon) await daemon.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * Keeps `depth` rng requests in flight on each front-end for `ms`, and counts those that
 * completed; every answer must be a full one (throttling is back-pressure, never an error).
 */
async function load(fes: VhostUserFrontend[], ms: number, depth = 32): Promise<number[]> {
  const counts = fes.map(() => 0);
  const end = performance.now() + ms;
  const lane = async (fe: VhostUserFrontend, i: number) => {
    while (performance.now() < end) {
      const r = await fe.queues[0].submit([], 64);
      if (r.len !== 64) throw new Error(`a throttled request was answered with ${r.len} bytes, not 64`);
      if (performance.now() <= end) counts[i]++;
    }
  };
  await Promise.all(fes.flatMap((fe, i) => Array.from({ length: depth }, () => lane(fe, i))));
  return counts;
}

async function connect(t: { teardown(fn: () => unknown): void }, id: string): Promise<VhostUserFrontend> {
  const fe = await VhostUserFrontend.connect(sock(id), opts);
  t.teardown(() => fe.close().catch(() => {}));
  return fe;
}

const stats = (id: string) => deviceStats(control(), id);

test.serial('a device limited to 1000 IOPS does about 3000 requests in 3 s while an unthrottled bystander does far more', async (t) => {
  const [slow, free] = [await connect(t, 'slow'), await connect(t, 'free')];
  const [throttled, bystander] = await load([slow, free], 3000);
  t.log(`3 s: throttled ${throttled}, bystander ${bystander}`);
  // 3000, plus the 100-request burst it starts with.
  t.true(throttled >= 2000 && throttled <= 4000, `the throttled device did ${throttled} requests in 3 s`);
  t.true(bystander > 2 * throttled, `the bystander did ${bystander}`);
  const s = await stats('slow');
  t.deepEqual(s.limits.throttle, { iops: 1000, iopsBurst: 100, bytesPerSecond: 0, bytesBurst: 0 });
  t.true(s.throttled.waits > 0, 'its ring waited for the budget');
});

test.serial('two devices of one throttle group share its 1000 IOPS', async (t) => {
  const [g1, g2] = [await connect(t, 'g1'), await connect(t, 'g2')];
  const [a, b] = await load([g1, g2], 3000);
  t.log(`3 s: g1 ${a}, g2 ${b}`);
  t.true(a + b >= 2000 && a + b <= 4000, `the group did ${a + b} requests in 3 s`);
  t.true(a > 300 && b > 300, 'both devices got a share');
  const s = await stats('g2');
  t.is(s.throttleGroup, 'pair');
  t.deepEqual(s.limits.throttle, { iops: 1000, iopsBurst: 100, bytesPerSecond: 0, bytesBurst: 0 }, "g2 took the group's limits");
});

test.serial('set-limits changes a running device: 200 IOPS, then no limit', async (t) => {
  const slow = await connect(t, 'slow');
  const set = await ctl(['--control', control(), 'set-limits', 'slow', '--iops', '200', '--iops-burst', '20']);
  t.is(set.code, 0, set.stderr);
  t.is(set.stdout, 'slow: call deadline 10000 ms, 200 IOPS (burst 20)\n');
  const [at200] = await load([slow], 3000);
  t.log(`3 s at 200 IOPS: ${at200}`);
  t.true(at200 >= 300 && at200 <= 1000, `${at200} requests in 3 s at 200 IOPS`);

  const lift = await ctl(['--control', control(), 'set-limits', 'slow', '--iops', '0']);
  t.is(lift.code, 0, lift.stderr);
  t.is(lift.stdout, 'slow: call deadline 10000 ms\n');
  const [unlimited] = await load([slow], 3000);
  t.log(`3 s without a limit: ${unlimited}`);
  t.true(unlimited > 4000, `${unlimited} requests in 3 s without a limit`);
  t.is((await stats('slow')).limits.throttle, null);

  // Back to 1000 for whoever comes next.
  t.is((await ctl(['--control', control(), 'set-limits', 'slow', '--iops', '1000'])).code, 0);
});

test.serial('bad throttle values are refused naming the field, and nothing changes', async (t) => {
  const before = await stats('slow');
  const bad: [Record<string, unknown>, RegExp, string][] = [
    [{ iops: -5 }, /params\.iops: -5 is out of range/, 'params.iops'],
    [{ iops: 1.5 }, /params\.iops: must be a whole number/, 'params.iops'],
    [{ iops: 'fast' }, /params\.iops: must be a whole number/, 'params.iops'],
    [{ bytesPerSecond: '10 lots' }, /params\.bytesPerSecond: "10 lots" is not a size/, 'params.bytesPerSecond'],
    [{ bytesBurst: 4096 }, /params\.bytesBurst: is a burst of "bytesPerSecond", which is not limited/, 'params.bytesBurst'],
    [{ iops: 100_000, iopsBurst: 5 }, /params\.iopsBurst: 5 is less than a millisecond's worth/, 'params.iopsBurst'],
    // One bad field refuses the whole request: the good callDeadlineMs is not applied either.
    [{ callDeadlineMs: 50, iops: -1 }, /params\.iops/, 'params.iops'],
    [{ iopsRate: 5 }, /params\.iopsRate: unknown parameter/, 'params.iopsRate'],
  ];
  const answers = (await rawRpc(
    control(),
    bad.map(([p], i) => JSON.stringify({ jsonrpc: '2.0', id: i, method: 'set-limits', params: { id: 'slow', ...p } })),
    bad.length,
  )) as { id: number; error?: { message: string; data?: { field?: string } } }[];
  for (const a of answers) {
    const [, re, field] = bad[a.id];
    t.truthy(a.error, `request ${a.id} was refused`);
    t.regex(a.error!.message, re);
    t.is(a.error!.data?.field, field);
  }
  const after = await stats('slow');
  t.deepEqual(after.limits, before.limits);

  const usage = await ctl(['--control', control(), 'set-limits', 'slow', '--iops', 'lots']);
  t.is(usage.code, 2);
  t.regex(usage.stderr, /--iops: "lots" is not a whole number/);
});

test.serial('device-add into a throttle group with other limits is refused naming the field', async (t) => {
  const r = await ctl(['--control', control(), 'add', '--id', 'g3', '--tenant', 'acme', '--socket', sock('g3'), '--plugin', rng, '--entropy', '--throttle-group', 'pair', '--iops', '5000']);
  t.is(r.code, 1);
  t.regex(r.stderr, /params\.limits: throttle group "pair" of tenant acme is already limited to/);
  // The same name in another tenant is another group.
  const other = await ctl(['--control', control(), '--json', 'add', '--id', 'g3', '--tenant', 'globex', '--socket', sock('g3'), '--plugin', rng, '--entropy', '--throttle-group', 'pair', '--iops', '5000']);
  t.is(other.code, 0, other.stderr);
  t.deepEqual((await stats('g3')).limits.throttle, { iops: 5000, iopsBurst: 500, bytesPerSecond: 0, bytesBurst: 0 });
});

const CONFIG_BAD: [string, unknown[], RegExp][] = [
  ['an IOPS that is not a number', [{ limits: { iops: 'fast' } }], /devices\[0\]\.limits\.iops: must be a whole number/],
  ['a bytes/s that is not a size', [{ limits: { bytesPerSecond: '5 lots' } }], /devices\[0\]\.limits\.bytesPerSecond: "5 lots" is not a size/],
  ['a burst without its rate', [{ limits: { iopsBurst: 10 } }], /devices\[0\]\.limits\.iopsBurst: is a burst of "iops"/],
  ['a group whose devices disagree', [{ throttleGroup: 'g', limits: { iops: 10 } }, { throttleGroup: 'g', limits: { iops: 20 } }], /devices\[1\]\.limits: throttle group "g" is already limited to .* by devices\[0\]/],
];

for (const [what, extras, re] of CONFIG_BAD) {
  test(`a config with ${what} names the field and starts nothing`, async (t) => {
    const d = mkdtempSync(join(tmpdir(), 'daemon-throttle-config-'));
    t.teardown(() => rmSync(d, { recursive: true, force: true }));
    const devices = extras.map((e, i) => ({ id: `d${i}`, socket: `d${i}.sock`, plugin: rng, grants: { entropy: true }, ...(e as object) }));
    writeFileSync(join(d, 'c.json'), JSON.stringify({ devices }));
    const p = spawnDaemon(['--config', join(d, 'c.json')]);
    t.is(await p.exited, 2, p.log());
    t.regex(p.log(), re);
  });
}
