// A daemon device whose plugin spins (in process(), far from its call deadline) is still
// removed by device-del, set-limits can shorten the deadline of the call it is spinning in, and
// SIGTERM still ends the daemon cleanly with one spinning; the other devices serve throughout. The built binary, `serve --config`, a faulty plugin that loops on a
// request starting with "boom" (test/fixtures/plugins/bad.c).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, type FrontendOptions } from '../host/frontend/driver.ts';
import { buildHostFixtures } from './fixtures/plugins/build-host-fixtures.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { REPO } from './helpers/host-process.ts';
import { RngPump } from './helpers/rng-pump.ts';
import { ctl, startDaemon } from './helpers/daemon-process.ts';

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };

test('device-del, a shorter deadline from set-limits, and SIGTERM end a device whose plugin spins; the rest serve on', async (t) => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  const faulty = await buildHostFixtures(REPO, join(REPO, 'dist', 'test-plugins'));
  const dir = mkdtempSync(join(tmpdir(), 'daemon-stuck-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const sock = (n: string) => join(dir, `${n}.sock`);
  const spinner = (id: string) => ({ id, socket: `${id}.sock`, plugin: faulty.loop, limits: { callDeadlineMs: 60_000 } });
  writeFileSync(
    join(dir, 'c.json'),
    JSON.stringify({
      control: 'control.sock',
      devices: [{ id: 'rng', socket: 'rng.sock', plugin: join(REPO, 'dist', 'plugins', 'rng.wasm'), grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } }, spinner('spin1'), spinner('spin2'), spinner('spin3')],
    }),
  );
  const daemon = await startDaemon(['--config', join(dir, 'c.json')]);
  t.teardown(() => void daemon.stop());
  const bystander = await VhostUserFrontend.connect(sock('rng'), opts);
  t.teardown(() => bystander.close());
  const pump = RngPump.start(t, bystander);
  await pump.more(3);

  const spin = async (id: string) => {
    const fe = await VhostUserFrontend.connect(sock(id), opts);
    t.teardown(() => fe.close().catch(() => {}));
    fe.queues[0].submit([Buffer.from('boom')], 8).catch(() => {}); // spins for a minute
    await fe.conn.getStatus(); // the session answers while the worker spins
    return fe;
  };
  await spin('spin1');
  const del = await withTimeout(ctl(['--control', join(dir, 'control.sock'), 'del', 'spin1']), 10_000, 'device-del of a spinning device');
  t.is(del.code, 0, del.stderr);
  t.false(existsSync(sock('spin1')));
  await pump.more(5);

  // set-limits shortens the deadline of the call in progress: the watchdog ends that one device.
  await spin('spin3');
  const set = await ctl(['--control', join(dir, 'control.sock'), 'set-limits', 'spin3', '--call-deadline', '200']);
  t.is(set.code, 0, set.stderr);
  t.is(set.stdout, 'spin3: call deadline 200 ms\n');
  t.log(await daemon.waitForLog(/device spin3: .*past its 200 ms deadline; worker terminated/));
  const stats = await ctl(['--control', join(dir, 'control.sock'), '--json', 'stats', 'spin3']);
  t.like(JSON.parse(stats.stdout), { devices: [{ id: 'spin3', state: 'failed', limits: { callDeadlineMs: 200 } }] });
  await pump.more(5);

  await spin('spin2');
  await pump.more(3);
  const code = await withTimeout(daemon.stop(), 10_000, 'daemon exit after SIGTERM');
  t.is(code, 0, daemon.log());
  t.notRegex(daemon.log(), /forcing the exit/);
  for (const n of ['rng', 'spin2', 'spin3', 'control']) t.false(existsSync(sock(n)), `${n}.sock removed`);
});
