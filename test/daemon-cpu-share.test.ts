// The CPU share (issue 13, "limits per device") as an operator meets it: `vhost-wasm serve
// --config FILE` (the built binary) with a device whose code spins in every call
// (test/devices/hog-blk-device.mjs) kept busy by a real front-end, and a well-behaved rng device
// beside it. The hog is demoted (device-stats says so, and its worker thread runs at nice 19 in
// /proc), the rng device is not; set-limits gives the hog a share it stays under and it gets its
// priority back. A device that polls its rings (pollMaxNs) spins between requests in no call at
// all: that spin is counted as its demand too, so it is held to its share where the same device
// not polling, under the same load, is not: its calls run for microseconds, and one the scheduler
// preempts for milliseconds on this loaded machine counts by the CPU it ran, not by its wall
// clock. What the demotion buys in latency is measured by bench/tenancy.ts cpu, not here (no
// timing assertion).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend } from '../host/frontend/driver.ts';
import { REPO } from './helpers/host-process.ts';
import type { CpuShareStats } from '../host/limits/cpu-share.ts';
import { ctl, rawRpc, scrapeMetrics, spawnDaemon, startDaemon, type DaemonProcess } from './helpers/daemon-process.ts';

const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const hog = join(REPO, 'test', 'devices', 'hog-blk-device.mjs');

let dir: string;
let daemon: DaemonProcess;
const sock = (name: string) => join(dir, `${name}.sock`);
const control = () => sock('control');

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'daemon-cpu-'));
  writeFileSync(
    join(dir, 'daemon.json'),
    JSON.stringify({
      control: 'control.sock',
      metrics: `unix:${join(dir, 'metrics.sock')}`,
      devices: [
        // A demoted hog waits for a CPU inside its calls, for seconds on a loaded machine; its
        // 200 ms deadline counts only the CPU time a call uses (50 ms at most: it spins 50 ms of
        // wall clock), so it must never be killed for it.
        { id: 'hog', socket: 'hog.sock', module: hog, limits: { callDeadlineMs: 200 } },
        { id: 'calm', socket: 'calm.sock', plugin: rng, grants: { entropy: true } },
      ],
    }),
  );
  daemon = await startDaemon(['--config', join(dir, 'daemon.json')], { env: { VHOST_WASM_TEST_HOG_SPIN_MS: '50' } });
});

test.after.always(async () => {
  if (daemon) await daemon.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function cpu(id: string): Promise<CpuShareStats> {
  const r = await ctl(['--control', control(), '--json', 'stats', id]);
  if (r.code !== 0) throw new Error(`ctl stats failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout).devices[0].cpu;
}

/** Asks `check` every 200 ms until it holds; fails (rather than hang) after `bound` ms. */
async function until<T>(what: string, get: () => Promise<T>, check: (v: T) => boolean, bound = 60_000): Promise<T> {
  const end = Date.now() + bound;
  for (;;) {
    const v = await get();
    if (check(v)) return v;
    if (Date.now() > end) throw new Error(`${what} never happened; last seen: ${JSON.stringify(v)}; daemon log:\n${daemon.log()}`);
    await sleep(200);
  }
}

const scrape = () => scrapeMetrics(join(dir, 'metrics.sock'));

/** The nice value of every thread of the daemon, by thread id. */
function threadNice(): Map<number, number> {
  const pid = daemon.child.pid!;
  const out = new Map<number, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1');
      // Fields after "(comm)": state is field 3, nice field 19.
      out.set(Number(tid), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]));
    } catch {
      // a thread that ended meanwhile
    }
  }
  return out;
}

/** Keeps one request in flight on each front-end until stop() is called. */
function keepBusy(fes: VhostUserFrontend[]): { stop: () => Promise<void>; done: number[] } {
  let running = true;
  const done = fes.map(() => 0);
  const lanes = fes.map(async (fe, i) => {
    while (running) {
      await fe.queues[0].submit([], 16);
      done[i]++;
    }
  });
  return {
    done,
    // Bounded: a lane whose device failed has a request nobody will answer; fail, never hang.
    stop: async () => {
      running = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bound = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`a front-end's last request was not answered within 30 s (requests: ${done.join(', ')}); daemon log:\n${daemon.log()}`)), 30_000);
      });
      try {
        await Promise.race([Promise.all(lanes), bound]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

test.serial('a device whose code spins in every call is demoted to nice 19; a calm one beside it is not; a larger share restores it', async (t) => {
  const hogFe = await VhostUserFrontend.connect(sock('hog'), { memoryBytes: 1 << 20, queues: [64] });
  const calmFe = await VhostUserFrontend.connect(sock('calm'), { memoryBytes: 1 << 20, queues: [64] });
  t.teardown(() => hogFe.close().catch(() => {}));
  t.teardown(() => calmFe.close().catch(() => {}));
  t.deepEqual([...threadNice().values()].filter((n) => n === 19), [], 'no thread starts demoted');

  const load = keepBusy([hogFe, calmFe]);
  const demoted = await until('the hog being demoted', () => cpu('hog'), (c) => c.demoted);
  t.is(demoted.limit, 0.5, 'the default share');
  t.true(demoted.demotions >= 1);
  t.true(demoted.demand > 0, `its code ran in long calls (${demoted.demand} CPU over the last second)`);
  t.is(demoted.restoreRefused, null);
  // Its worker thread (and only it: one hog, one thread) runs at the lowest priority.
  const low = [...threadNice().entries()].filter(([, n]) => n === 19);
  t.is(low.length, 1, `threads at nice 19: ${JSON.stringify(low)}`);

  const metrics = await scrape();
  t.regex(metrics, /^vhost_wasm_device_cpu_demoted\{device="hog",tenant=""\} 1$/m);
  t.regex(metrics, /^vhost_wasm_device_cpu_demoted\{device="calm",tenant=""\} 0$/m);
  const longCalls = Number(/^vhost_wasm_device_long_call_seconds_total\{device="hog",tenant=""\} (\S+)$/m.exec(metrics)?.[1]);
  t.true(longCalls > 0, `the hog's long calls are counted (${longCalls} s)`);

  const calm = await cpu('calm');
  t.log(`hog: ${JSON.stringify(demoted)}; calm: ${JSON.stringify(calm)}; requests: hog ${load.done[0]}, calm ${load.done[1]}`);
  t.false(calm.demoted, 'the rng device answering in microseconds is not demoted');
  t.is(calm.demotions, 0);
  t.true(load.done[1] > 0, 'the calm device served meanwhile');

  // The hog keeps spinning; a share of 4 CPUs is more than one thread can use.
  const set = await ctl(['--control', control(), '--json', 'set-limits', 'hog', '--cpu-share', '4']);
  t.is(set.code, 0, set.stderr);
  t.is(JSON.parse(set.stdout).limits.cpuShare, 4);
  const restored = await until('the hog getting its priority back', () => cpu('hog'), (c) => !c.demoted);
  t.is(restored.limit, 4);
  t.deepEqual([...threadNice().values()].filter((n) => n === 19), [], 'no thread left at nice 19');
  await load.stop();
  t.notRegex(daemon.log(), /worker terminated/, 'the demoted hog was never killed for the time it waited for a CPU');
  t.regex(await scrape(), /^vhost_wasm_device_faults_total\{device="hog",tenant="",kind="device_failed"\} 0$/m);
  t.is((await ctl(['--control', control(), 'set-limits', 'hog', '--cpu-share', '0.5'])).code, 0);
});

test.serial('a device polling its rings (ctl add --poll-max-ns) is held to its share as a device whose code runs long calls is: its spin is counted and it is demoted for it; a non-polling one beside it under the same load claims no spin and is not demoted', async (t) => {
  const add = (id: string, extra: string[]) => ctl(['--control', control(), 'add', '--id', id, '--socket', sock(id), '--plugin', rng, '--entropy', '--cpu-share', '0.1', '--call-deadline', '10000', ...extra]);
  for (const r of await Promise.all([add('spinner', ['--poll-max-ns', '1000000']), add('still', [])])) t.is(r.code, 0, r.stderr);
  t.teardown(async () => {
    await ctl(['--control', control(), 'del', 'spinner']);
    await ctl(['--control', control(), 'del', 'still']);
  });
  const spinFe = await VhostUserFrontend.connect(sock('spinner'), { memoryBytes: 1 << 20, queues: [64] });
  const stillFe = await VhostUserFrontend.connect(sock('still'), { memoryBytes: 1 << 20, queues: [64] });
  t.teardown(() => spinFe.close().catch(() => {}));
  t.teardown(() => stillFe.close().catch(() => {}));

  // The same load on both: one request at a time, the next sent as soon as one is answered.
  // rng answers in microseconds, so neither runs a long call; between requests the polling
  // worker spins (the next request comes well within its 1 ms window).
  const load = keepBusy([spinFe, stillFe]);
  const demoted = await until('the polling device being demoted', () => cpu('spinner'), (c) => c.demoted);
  const still = await cpu('still');
  t.log(`spinner: ${JSON.stringify(demoted)}; still: ${JSON.stringify(still)}; requests: spinner ${load.done[0]}, still ${load.done[1]}`);
  t.is(demoted.limit, 0.1);
  t.true(demoted.demotions >= 1);
  t.true(demoted.pollSpin > 0, `its spin is counted (${demoted.pollSpin} CPU over the last second)`);
  t.true(demoted.demand >= demoted.pollSpin, 'the spin is part of the demand its share limits');
  // The same device under the same load, not polling, claims no spin, and its calls run for
  // microseconds: it stays at normal priority, even on a loaded machine where the scheduler
  // preempts some of its calls for milliseconds (slowCalls: those count by the CPU they ran).
  t.is(still.pollSpin, 0);
  t.false(still.demoted, `the non-polling device is not demoted (slow calls: ${still.slowCalls} CPU)`);
  t.is(still.demotions, 0);
  t.true(load.done[1] > 0, 'the non-polling device served meanwhile');

  // What an operator sees: ctl stats, metrics and the log. (Demoted, the spinner polls less and
  // may get its priority back and lose it again meanwhile: its demotions only grow.)
  const text = await ctl(['--control', control(), 'stats', 'spinner']);
  t.is(text.code, 0, text.stderr);
  t.regex(text.stdout, /^ {2}polling: spins on its rings for up to 1000000 ns after a batch before it waits for a kick$/m);
  t.regex(text.stdout, /^ {2}CPU: it claimed [\d.]+ \(share 0\.1: long calls, and [\d.]+ spinning on its rings\), its threads [\d.]+ CPU over the last second; .*demoted [1-9]\d* time\(s\)$/m);
  const metrics = await scrape();
  t.true(Number(/^vhost_wasm_device_poll_spin_seconds_total\{device="spinner",tenant=""\} (\S+)$/m.exec(metrics)?.[1]) > 0, 'its spin is in the metrics');
  t.regex(metrics, /^vhost_wasm_device_poll_spin_seconds_total\{device="still",tenant=""\} 0$/m);
  // Demoted with its spin counted: the log says what it claimed.
  const why = /spinner: its code ran in long calls \(2 ms or more of CPU\) for ([\d.]+) and spun polling its rings for ([\d.]+) CPU's worth of the last 1000 ms, more than its share of 0\.1/.exec(daemon.log());
  t.truthy(why, `the demotion is logged with the spin; the log:\n${daemon.log()}`);
  t.log(`at its demotion: long calls ${why?.[1]}, spin ${why?.[2]} CPU`);
  t.true(Number(why![2]) > 0, 'its spin was part of what took it over its share');

  // Idle, it claims nothing: its priority comes back.
  await load.stop();
  t.notRegex(daemon.log(), /still: its code ran/, 'the non-polling device was never demoted while the load ran');
  const restored = await until('the polling device getting its priority back', () => cpu('spinner'), (c) => !c.demoted);
  t.true(restored.demotions >= demoted.demotions);
  t.deepEqual([...threadNice().values()].filter((n) => n === 19), [], 'no thread left at nice 19');
});

test.serial('a bad CPU share is refused naming the field, by set-limits and in a config file', async (t) => {
  const bad: [unknown, RegExp][] = [
    [0, /params\.cpuShare: 0 is out of range \(0\.01\.\.64 CPUs\)/],
    [100, /params\.cpuShare: 100 is out of range/],
    ['half', /params\.cpuShare: must be a number of CPUs/],
  ];
  const answers = (await rawRpc(
    control(),
    bad.map(([v], i) => JSON.stringify({ jsonrpc: '2.0', id: i, method: 'set-limits', params: { id: 'hog', cpuShare: v } })),
    bad.length,
  )) as { id: number; error?: { message: string; data?: { field?: string } } }[];
  for (const [i, [, re]] of bad.entries()) {
    const a = answers.find((x) => x.id === i)!;
    t.regex(a.error?.message ?? '', re);
    t.is(a.error?.data?.field, 'params.cpuShare');
  }
  t.is((await cpu('hog')).limit, 0.5, 'nothing changed');

  const usage = await ctl(['--control', control(), 'set-limits', 'hog', '--cpu-share', 'lots']);
  t.not(usage.code, 0);
  t.regex(usage.stderr, /--cpu-share: "lots" is not a number of CPUs/);

  writeFileSync(join(dir, 'bad.json'), JSON.stringify({ devices: [{ id: 'x', socket: 'x.sock', plugin: rng, limits: { cpuShare: -1 } }] }));
  const d = spawnDaemon(['--config', join(dir, 'bad.json')]);
  t.not(await d.exited, 0);
  t.regex(d.log(), /devices\[0\]\.limits\.cpuShare: -1 is out of range/);
});
