// Device-state migration between two real host processes running the large-state TS device:
// SAVE on one, LOAD on the other, through a relayed pipe, one pipe host to host and a memfd, with the rings' indexes
// and the device's own counter carrying over.
import test from 'ava';
import { spawn } from 'node:child_process';
import { REPO, hostCommand, type HostProcess } from './helpers/host-process.ts';
import { migrate } from '../host/frontend/migrate.ts';
import { ask, connect, startBigHost } from './devices/migration-helpers.ts';

const hosts: HostProcess[] = [];
test.after.always(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
});

async function pair(opts: Parameters<typeof startBigHost>[0] = {}): Promise<[HostProcess, HostProcess]> {
  const [a, b] = await Promise.all([startBigHost(opts), startBigHost(opts)]);
  hosts.push(a, b);
  return [a, b];
}

for (const channel of ['pipe', 'direct-pipe', 'memfd'] as const) {
  test(`migrate over a ${channel}: 16 MiB of state, indexes and requests continuous`, async (t) => {
    const [a, b] = await pair({ stateBytes: 16 << 20 });
    const fe = await connect(a, { startIndex: 0xfff0 });
    try {
      // Some traffic on the source.
      for (let i = 0; i < 10; i++) t.deepEqual(await ask(fe, `before ${i}`), { seq: i, echo: `before ${i}` });
      // Requests submitted right before the stop: some may be served by the source, the rest by
      // the destination; every one exactly once, in order.
      const inFlight = Array.from({ length: 20 }, (_, i) => ask(fe, `straddle ${i}`));
      const report = await migrate(fe, b.socketPath, { channel });
      t.is(report.channel, channel);
      // Over direct-pipe the bytes never pass through the front-end: the source's log counts them.
      const moved = channel === 'direct-pipe' ? Number(/device state saved: (\d+) bytes/.exec(a.log())?.[1]) : report.bytes;
      t.true(moved > 16 << 20, `moved ${moved} bytes`);
      const straddle = await Promise.all(inFlight);
      straddle.forEach((r, i) => t.deepEqual(r, { seq: 10 + i, echo: `straddle ${i}` }));
      // After: served by the destination, which continues the source's count; the ring crosses
      // the 16-bit wrap (started at 0xfff0) on the way.
      for (let i = 0; i < 10; i++) t.deepEqual(await ask(fe, `after ${i}`), { seq: 30 + i, echo: `after ${i}` });
      t.is(await fe.stopQueue(0), (0xfff0 + 40) & 0xffff);
      t.regex(a.log(), /device state saved: \d+ bytes/);
      t.regex(b.log(), /device state loaded: \d+ bytes/);
      t.log(`${channel}: ${report.bytes} bytes, transfer ${report.transferMs.toFixed(1)} ms, downtime ${report.downtimeMs.toFixed(1)} ms`);
    } finally {
      await fe.close();
    }
  });
}

test('the source can return its own memfd (bit 8 clear); the migration uses it, relayed or handed to the destination', async (t) => {
  const [a, b] = await pair({ stateBytes: 2 << 20, returnMemfd: true });
  const fe = await connect(a);
  try {
    t.is((await ask(fe, 'x')).seq, 0);
    const r = await migrate(fe, b.socketPath, { channel: 'pipe' });
    t.true(r.sourceReturnedFd);
    t.is((await ask(fe, 'y')).seq, 1);
    // Back over direct-pipe: the source's own memfd goes to the destination in place of the pipe.
    const back = await migrate(fe, a.socketPath, { channel: 'direct-pipe' });
    t.true(back.sourceReturnedFd);
    t.is((await ask(fe, 'z')).seq, 2);
  } finally {
    await fe.close();
  }
});

test('the migrate CLI moves a device between two running hosts, relayed and direct-pipe; a refused migration exits 1', async (t) => {
  const [a, b] = await pair({ stateBytes: 2 << 20 });
  const other = await startBigHost({ name: 'other-plugin' });
  hosts.push(other);
  const run = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn(...hostCommand(['migrate', ...args]), { cwd: REPO });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d) => (stdout += d));
      c.stderr.on('data', (d) => (stderr += d));
      c.on('exit', (code) => resolve({ code, stdout, stderr }));
    });
  const ok = await run(['--from', a.socketPath, '--to', b.socketPath, '--before', '5', '--after', '7', '--json', '--channel', 'memfd']);
  t.is(ok.code, 0, ok.stderr);
  const rep = JSON.parse(ok.stdout);
  t.true(rep.stateBytes > 2 << 20);
  t.deepEqual(rep.ringBases, [5]);
  t.deepEqual(rep.nextAvail, [12]);
  await b.waitForLog(/device state loaded/);
  const bad = await run(['--from', a.socketPath, '--to', other.socketPath, '--before', '1']);
  t.is(bad.code, 1, bad.stderr);
  t.regex(bad.stderr, /CHECK_DEVICE_STATE failed.*the source resumed/);
  // One pipe host to host: the tool carries no byte (so it reports none), the destination
  // continues the source's count; refused, the source resumes (exit 1) as with a relayed pipe.
  const loaded = b.log().length;
  const direct = await run(['--from', a.socketPath, '--to', b.socketPath, '--before', '3', '--after', '2', '--json', '--channel', 'direct-pipe']);
  t.is(direct.code, 0, direct.stderr);
  const drep = JSON.parse(direct.stdout);
  t.is(drep.channel, 'direct-pipe');
  t.is(drep.stateBytes, null);
  t.deepEqual(drep.ringBases, [3]);
  t.deepEqual(drep.nextAvail, [5]);
  t.regex(b.log().slice(loaded), /device state loaded: \d+ bytes/);
  const badDirect = await run(['--from', a.socketPath, '--to', other.socketPath, '--before', '1', '--channel', 'direct-pipe']);
  t.is(badDirect.code, 1, badDirect.stderr);
  t.regex(badDirect.stderr, /destination: CHECK_DEVICE_STATE failed.*the source resumed/);
  const usage = await run(['--from', a.socketPath]);
  t.is(usage.code, 2);
});

test('host-held resources travel as extra sections next to the device bytes', async (t) => {
  const env = { VHOST_WASM_TEST_EXTRA_SECTION_BYTES: String(5 << 20) };
  const [a, b] = await pair({ stateBytes: 1 << 20, env });
  const fe = await connect(a);
  try {
    t.is((await ask(fe, 'x')).seq, 0);
    const r = await migrate(fe, b.socketPath, { channel: 'pipe' });
    t.true(r.bytes > 6 << 20);
    t.regex(a.log(), /device state saved: \d+ bytes \(device \d+, scratch 5242880\)/);
    t.is((await ask(fe, 'y')).seq, 1);
  } finally {
    await fe.close();
  }
  // A destination without that resource, or with one of another size, refuses.
  const none = await startBigHost({ stateBytes: 1 << 20 });
  const small = await startBigHost({ stateBytes: 1 << 20, env: { VHOST_WASM_TEST_EXTRA_SECTION_BYTES: String(1 << 20) } });
  const src = await startBigHost({ stateBytes: 1 << 20, env });
  hosts.push(none, small, src);
  const fe2 = await connect(src);
  try {
    await t.throwsAsync(migrate(fe2, none.socketPath), { message: /CHECK_DEVICE_STATE failed/ });
    t.regex(none.log(), /section 256 \(scratch\) is not one this device has/);
    await t.throwsAsync(migrate(fe2, small.socketPath, { channel: 'memfd' }), { message: /CHECK_DEVICE_STATE failed/ });
    t.regex(small.log(), /scratch is 1048576 bytes here, the state has 5242880/);
    t.is((await ask(fe2, 'source still serves')).seq, 0);
  } finally {
    await fe2.close();
  }
});
