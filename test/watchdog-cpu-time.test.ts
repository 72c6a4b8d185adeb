// A call's deadline is the CPU time the call used, not the time a loaded machine kept it from
// running: a device demoted to nice 19 (the CPU-share governor's doing) on a busy machine was
// killed by a 200 ms deadline while it only waited for a CPU. The built binary serves a plugin
// (test/fixtures/plugins/bad.c, BAD_SPIN) that spins as many loop turns as a request asks, or
// for ever on "boom", over a real socket. One spinning for ever is killed at its deadline; one
// spinning for a tenth of its deadline on a thread kept off the CPU (nice 19, and as many busy
// processes as cores + 2 started here) is not, though the call outlasts its deadline by the
// clock. Outcomes only: killed or not, the device's status, the answer.
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism, setPriority } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, type FrontendOptions } from '../host/frontend/driver.ts';
import { buildPlugin } from '../plugins/build-plugins.mjs';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const NEEDS_RESET = 0x40;
const DEADLINE_MS = 200;
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };

let spinner: string;

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  spinner = join(REPO, 'dist', 'test-plugins', 'host-spin.wasm');
  await buildPlugin({ root: REPO, sources: [join(REPO, 'test', 'fixtures', 'plugins', 'bad.c')], outFile: spinner, defines: ['BAD_SPIN', 'BAD_TRIGGERED'] });
});

async function serve(t: ExecutionContext): Promise<{ host: HostProcess; fe: VhostUserFrontend; tid: number }> {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', spinner, '--call-deadline', String(DEADLINE_MS), '--log-level', 'debug']);
  t.teardown(() => host.stop().then(() => {}));
  const tid = Number(/worker ready \(Linux thread (\d+)\)/.exec(await host.waitForLog(/worker ready \(Linux thread \d+\)/))![1]);
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  t.teardown(() => fe.close().catch(() => {}));
  return { host, fe, tid };
}

/** A request asking the plugin to spin `turns` loop turns before it answers 8 bytes of 0x5a. */
function spinRequest(turns: number): Buffer {
  const b = Buffer.from('spin\0\0\0\0');
  b.writeUInt32LE(Math.min(0xffff_ffff, Math.max(1, Math.round(turns))), 4);
  return b;
}

/** Thread `tid` of process `pid`: ms on a CPU and ms waiting for one, over its life. */
function schedstat(pid: number, tid: number): { runMs: number; waitMs: number } {
  const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'latin1').split(' ').map(Number);
  return { runMs: run / 1e6, waitMs: wait / 1e6 };
}

test.serial('a plugin that spins in a call is killed once the call has used its deadline of CPU time', async (t) => {
  const { host, fe } = await serve(t);
  fe.queues[0].submit([Buffer.from('boom')], 8).catch(() => {});
  t.log(await host.waitForLog(new RegExp(`a device call ran \\d+ ms, past its ${DEADLINE_MS} ms deadline; worker terminated \\(CPU time;`), 60_000));
  t.is((await fe.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET, 'the device needs a reset');
});

test.serial('a plugin that spins for less than its deadline on a thread kept off the CPU is not killed', async (t) => {
  const { host, fe, tid } = await serve(t);
  const pid = host.child.pid!;
  // A device that fails tells its front-end (NEEDS_RESET, a config-change message): a call that
  // was killed then fails the test at once rather than wait for an answer that never comes.
  const failed = new Promise<never>((_, reject) =>
    fe.backend!.once('config-change', () => reject(new Error(`the device failed: ${host.log().split('\n').find((l) => /worker terminated/.test(l)) ?? host.log()}`))),
  );
  failed.catch(() => {});
  const answered = async (turns: number) => {
    const r = await Promise.race([fe.queues[0].submit([spinRequest(turns)], 8), failed]);
    t.deepEqual([...r.data], new Array(8).fill(0x5a), 'the spinning call answered');
  };
  // How many turns a millisecond of CPU buys: the thread's CPU time over one call, read once it
  // is idle again (exact then). Measured at normal priority, after V8 has had the chance to
  // optimize the loop (a later call only runs faster, so takes less CPU than asked).
  let turnsPerMs = 0;
  for (let i = 0; i < 3; i++) {
    const before = schedstat(pid, tid).runMs;
    const probe = 2_000_000;
    await answered(probe);
    turnsPerMs = Math.max(turnsPerMs, probe / Math.max(0.01, schedstat(pid, tid).runMs - before));
  }

  // Keep the device's thread off the CPU: the lowest priority, and more busy processes than
  // cores, each spinning (it said so) before the first call.
  setPriority(tid, 19);
  const hogs = Array.from({ length: availableParallelism() + 2 }, () => spawn(process.execPath, ['-e', 'process.stdout.write("spinning\\n", () => { for (;;); });'], { stdio: ['ignore', 'pipe', 'ignore'] }));
  t.teardown(() => {
    for (const h of hogs) h.kill('SIGKILL');
  });
  await Promise.all(hogs.map((h) => new Promise((resolve) => h.stdout!.once('data', resolve))));

  // The call must outlast its deadline by the clock, or this shows nothing: a call that was not
  // kept waiting five deadlines' worth is tried again with more work, never half the deadline.
  // (The old watchdog, which discounted only waits that had ended, killed such a call whenever
  // one wait in progress outlasted the deadline.)
  let starved = false;
  for (const cpuMs of [DEADLINE_MS / 10, DEADLINE_MS / 5, DEADLINE_MS / 2.5]) {
    const s0 = schedstat(pid, tid);
    await answered(turnsPerMs * cpuMs);
    const s1 = schedstat(pid, tid);
    t.log(`asked for ${cpuMs} ms of CPU: the call's thread ran ${(s1.runMs - s0.runMs).toFixed(1)} ms on a CPU and waited ${(s1.waitMs - s0.waitMs).toFixed(0)} ms for one`);
    t.is((await fe.conn.getStatus()) & NEEDS_RESET, 0, 'the device does not need a reset');
    if (s1.waitMs - s0.waitMs > 5 * DEADLINE_MS) {
      starved = true;
      break;
    }
  }
  t.true(starved, 'the busy processes kept the thread waiting five times its deadline in one call');
  t.notRegex(host.log(), /worker terminated/);
  await answered(1000);
});
