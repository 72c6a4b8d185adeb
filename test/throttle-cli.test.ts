// The single-device command line's I/O throttle (--iops, --bps and their bursts) against the
// built binary. With --queue-threads the device's threads draw from one budget: a device
// limited to 1000 IOPS and served by two threads still does about 1000 IOPS in all, not 1000
// per thread. Wide bands, no timing assertion (see daemon-throttle.test.ts).
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { hostCommand, REPO, startHost } from './helpers/host-process.ts';

const DEVICE = new URL('./devices/queue-thread-device.ts', import.meta.url).pathname;
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true };
const run = (args: string[]) => spawnSync(...hostCommand(args), { cwd: REPO, encoding: 'utf8', timeout: 30_000 });

/** Keeps `depth` requests in flight on each of the two rings for `ms`; completions per ring and the threads that served them. */
async function load(fe: VhostUserFrontend, ms: number, depth = 16): Promise<{ counts: number[]; threads: Set<number> }> {
  const counts = [0, 0];
  const threads = new Set<number>();
  const end = performance.now() + ms;
  const lane = async (ring: number) => {
    while (performance.now() < end) {
      const r = await fe.queues[ring].submit([Buffer.from('ping')], 12);
      if (r.len !== 12) throw new Error(`ring ${ring}: a ${r.len}-byte answer, not 12`);
      threads.add(new DataView(r.data.buffer, r.data.byteOffset, 12).getUint32(0, true));
      if (performance.now() <= end) counts[ring]++;
    }
  };
  await Promise.all([0, 1].flatMap((ring) => Array.from({ length: depth }, () => lane(ring))));
  return { counts, threads };
}

test('--iops 1000 with --queue-threads 2: both threads draw from one budget', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--device-module', DEVICE, '--queue-threads', '2', '--iops', '1000']);
  t.teardown(() => host.stop());
  t.regex(await host.waitForLog(/runs in 2 queue threads/), /queue threads/);
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  t.teardown(() => fe.close().catch(() => {}));
  const { counts, threads } = await load(fe, 3000);
  const total = counts[0] + counts[1];
  t.log(`3 s: ring 0 ${counts[0]}, ring 1 ${counts[1]}, threads ${[...threads].join(', ')}`);
  t.is(threads.size, 2, 'two threads served');
  t.true(total >= 2000 && total <= 4000, `${total} requests in 3 s over both threads`);
  t.true(counts[0] > 300 && counts[1] > 300, 'both rings got a share');
});

test('--bps limits bytes: 64-byte requests at 64K bytes/s go at about 1000 a second', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--device-module', DEVICE, '--bps', '64K']);
  t.teardown(() => host.stop());
  const fe = await VhostUserFrontend.connect(host.socketPath, { ...opts, queues: [64] });
  t.teardown(() => fe.close().catch(() => {}));
  let n = 0;
  const end = performance.now() + 3000;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (performance.now() < end) {
        // 4 readable + 60 writable bytes: 64 bytes of request data.
        const r = await fe.queues[0].submit([Buffer.from('ping')], 60);
        if (r.len !== 12) throw new Error(`a ${r.len}-byte answer`);
        if (performance.now() <= end) n++;
      }
    }),
  );
  t.log(`3 s: ${n} requests of 64 bytes`);
  t.true(n >= 2000 && n <= 4000, `${n} requests in 3 s`);
});

test('--help documents the throttle flags; bad values are usage errors naming the flag', (t) => {
  const help = run(['--help']);
  t.is(help.status, 0);
  for (const flag of ['--iops', '--iops-burst', '--bps', '--bps-burst']) t.true(help.stdout.includes(flag), `--help lacks ${flag}`);
  const bad: [string[], RegExp][] = [
    [['--iops', 'fast'], /--iops: "fast" is not a whole number/],
    [['--bps', '5 lots'], /--bps: "5 lots" is not a size/],
    [['--iops-burst', '10'], /--iops-burst is a burst of --iops: give --iops too/],
    [['--iops', '100000', '--iops-burst', '5'], /--iops-burst: 5 is less than a millisecond's worth of --iops/],
  ];
  for (const [args, re] of bad) {
    const r = run(['--socket-path', '/tmp/unused-throttle.sock', '--device-module', DEVICE, ...args]);
    t.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re);
  }
});
