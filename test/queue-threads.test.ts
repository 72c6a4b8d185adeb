// --queue-threads N against the real host binary: a device whose queues are independent runs in
// N worker threads, ring i on thread i mod N, each thread with its own instance; a failure in
// one thread fails the device as a whole; a device whose queues share state is not split. The
// test device (test/devices/queue-thread-device.ts) answers every request with the id of the
// thread that served it and how many requests its instance has served.
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { eventually, startHost, type HostProcess } from './helpers/host-process.ts';
import { restartQueues, withTimeout } from './helpers/device-checks.ts';
import { loadState, saveState } from '../host/frontend/migrate.ts';

const DEVICE = new URL('./devices/queue-thread-device.ts', import.meta.url).pathname;
const NEEDS_RESET = 0x40;
const SIZE = 64;
/** The device offers 4 queues; the front-end uses 2 of them (as QEMU does with num-queues=2). */
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [SIZE, SIZE], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true };

interface Served {
  thread: number;
  queue: number;
  /** Requests the serving instance had answered, this one included. */
  count: number;
}

async function ask(fe: VhostUserFrontend, ring: number, word = 'ping'): Promise<Served> {
  const r = await withTimeout(fe.queues[ring].submit([Buffer.from(word)], 12), 10_000, `a request on ring ${ring}`);
  if (r.len !== 12) throw new Error(`ring ${ring}: the answer is ${r.len} bytes, not 12`);
  const v = new DataView(r.data.buffer, r.data.byteOffset, 12);
  return { thread: v.getUint32(0, true), queue: v.getUint32(4, true), count: v.getUint32(8, true) };
}

const start = (threads: string, env: NodeJS.ProcessEnv = {}) =>
  startHost(['--socket-path', '{socket}', '--device-module', DEVICE, '--queue-threads', threads, '--log-level', 'debug'], { env });

async function needsReset(fe: VhostUserFrontend): Promise<boolean> {
  return ((await fe.conn.getStatus()) & NEEDS_RESET) !== 0;
}

/** Every request of a burst on both rings: which threads served each ring. */
async function threadsOf(fe: VhostUserFrontend): Promise<Set<number>[]> {
  const burst = await Promise.all(Array.from({ length: 40 }, (_, i) => ask(fe, i % 2).then((s) => ({ ring: i % 2, s }))));
  const by = [new Set<number>(), new Set<number>()];
  for (const { ring, s } of burst) {
    if (s.queue !== ring) throw new Error(`a request on ring ${ring} reached the device as queue ${s.queue}`);
    by[ring].add(s.thread);
  }
  return by;
}

async function stopped(t: ExecutionContext, host: HostProcess): Promise<void> {
  t.is(await host.stop(), 0, `the host exits cleanly:\n${host.log()}`);
}

test.serial('--queue-threads 2: two rings are served by two threads, each ring always by the same one; fds and mappings go back after the front-end leaves', async (t) => {
  const host = await start('2');
  try {
    t.regex(await host.waitForLog(/runs in 2 queue threads/), /thread ids \d+, \d+/);
    const warm = await VhostUserFrontend.connect(host.socketPath, opts);
    await warm.close();
    t.true(await eventually(() => host.memfdMappings() === 0), 'no guest memory mapped between connections');
    const baseline = host.fdCount();
    const fe = await VhostUserFrontend.connect(host.socketPath, opts);
    try {
      const [ring0, ring1] = await threadsOf(fe);
      t.is(ring0.size, 1, 'ring 0 is served by one thread');
      t.is(ring1.size, 1, 'ring 1 is served by one thread');
      const [a] = ring0;
      const [b] = ring1;
      t.not(a, b, 'the two rings are served by two different threads');
      // The host says the same: which queue thread (and thread id) serves which ring.
      t.truthy(await host.waitForLog(new RegExp(`ring 0 is served by queue thread 0 \\(thread id ${a}\\)`)));
      t.truthy(await host.waitForLog(new RegExp(`ring 1 is served by queue thread 1 \\(thread id ${b}\\)`)));
      t.true(host.memfdMappings() >= 2, 'guest memory is mapped by each thread');
    } finally {
      await fe.close();
    }
    t.true(await eventually(() => host.memfdMappings() === 0), `every thread unmapped guest memory (${host.memfdMappings()} left)`);
    t.true(await eventually(() => host.fdCount() === baseline), `fds back to ${baseline}: ${host.fdCount()}`);
  } finally {
    await stopped(t, host);
  }
});

test.serial('a device that fails in one queue thread fails as a whole: NEEDS_RESET once, and a reset gives every thread a fresh instance', async (t) => {
  const host = await start('2');
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  try {
    const before = await ask(fe, 0);
    await ask(fe, 0);
    const change = new Promise<void>((resolve) => fe.backend!.once('config-change', () => resolve()));
    fe.queues[1].submit([Buffer.from('fail')], 12).catch(() => {});
    await withTimeout(change, 10_000, 'CONFIG_CHANGE_MSG after the failure');
    t.true(await needsReset(fe), 'NEEDS_RESET');
    t.truthy(await host.waitForLog(/device needs a reset \(DEVICE_NEEDS_RESET set\): queue thread 1: .*told to fail on queue 1/));
    t.is(host.log().split('device needs a reset').length - 1, 1, 'reported once, not once per thread');
    await fe.conn.resetDevice();
    t.false(await needsReset(fe));
    await restartQueues(fe, [SIZE, SIZE]);
    const after0 = await ask(fe, 0);
    const after1 = await ask(fe, 1);
    t.is(after0.thread, before.thread, 'ring 0 stays on its thread (it did not die)');
    t.is(after0.count, 1, 'ring 0 is served by a fresh instance: thread 0 was failed with the device, not only reset');
    t.is(after1.count, 1, 'ring 1 is served by a fresh instance');
  } finally {
    await fe.close();
    await stopped(t, host);
  }
});

test.serial('a queue thread that dies takes the device down with it: NEEDS_RESET, and a reset starts every thread afresh', async (t) => {
  const host = await start('2');
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  try {
    const old = await threadsOf(fe);
    const change = new Promise<void>((resolve) => fe.backend!.once('config-change', () => resolve()));
    await ask(fe, 1, 'crash');
    await withTimeout(change, 10_000, 'CONFIG_CHANGE_MSG after the crash');
    t.true(await needsReset(fe), 'NEEDS_RESET');
    t.truthy(await host.waitForLog(/device needs a reset \(DEVICE_NEEDS_RESET set\): queue thread 1: worker crashed: .*crashed its thread on queue 1/));
    await fe.conn.resetDevice();
    await host.waitForLog(/device restarted with a fresh instance after reset/);
    t.false(await needsReset(fe));
    await restartQueues(fe, [SIZE, SIZE]);
    const now = await threadsOf(fe);
    for (const ring of [0, 1]) {
      t.is(now[ring].size, 1);
      t.false(old[0].has([...now[ring]][0]) || old[1].has([...now[ring]][0]), `ring ${ring} is served by a new thread: the old ones are gone`);
    }
    t.not([...now[0]][0], [...now[1]][0]);
  } finally {
    await fe.close();
    await stopped(t, host);
  }
});

test.serial('each queue thread has its own watchdog: a call past the deadline on thread 1 kills that thread and fails the device', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--device-module', DEVICE, '--queue-threads', '2', '--call-deadline', '300']);
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  try {
    await ask(fe, 0);
    const change = new Promise<void>((resolve) => fe.backend!.once('config-change', () => resolve()));
    fe.queues[1].submit([Buffer.from('spin')], 12).catch(() => {});
    await withTimeout(change, 10_000, 'CONFIG_CHANGE_MSG after the deadline');
    t.truthy(await host.waitForLog(/\(queue thread 1\): queue-threads-test: a device call ran \d+ ms, past its 300 ms deadline; worker terminated/));
    t.true(await needsReset(fe), 'NEEDS_RESET');
    t.regex(host.log(), /device needs a reset \(DEVICE_NEEDS_RESET set\): queue thread 1: /);
    await fe.conn.resetDevice();
    await host.waitForLog(/device restarted with a fresh instance after reset/);
    await restartQueues(fe, [SIZE, SIZE]);
    const [on0, on1] = [await ask(fe, 0), await ask(fe, 1)];
    t.not(on0.thread, on1.thread);
    t.is(on1.count, 1);
  } finally {
    await fe.close();
    await stopped(t, host);
  }
});

test.serial('a device whose queues share state is not split: the flag is ignored with a log line saying why', async (t) => {
  const host = await start('2', { VHOST_WASM_TEST_INDEPENDENT: '0' });
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  try {
    t.regex(host.log(), /--queue-threads 2 is ignored for queue-threads-test: its queues share state in one instance \(device-info queues-independent is false\), so it runs in one worker thread/);
    const [ring0, ring1] = await threadsOf(fe);
    t.deepEqual([...ring0], [...ring1], 'both rings are served by the one thread');
  } finally {
    await fe.close();
    await stopped(t, host);
  }
});

test.serial('device state with two instances: SAVE needs every thread\'s rings stopped and carries instance 0\'s state; LOAD puts it into every instance', async (t) => {
  const [src, dst] = await Promise.all([start('2'), start('2')]);
  try {
    const fe = await VhostUserFrontend.connect(src.socketPath, opts);
    for (let i = 0; i < 3; i++) await ask(fe, 0);
    for (let i = 0; i < 5; i++) await ask(fe, 1);
    await fe.stopQueue(0);
    // Ring 1 (thread 1) still runs: the device is not stopped.
    await t.throwsAsync(saveState(fe.conn, 'pipe'));
    t.truthy(await src.waitForLog(/ring\(s\) 1 still run: rings must be stopped with GET_VRING_BASE first/));
    await fe.stopQueue(1);
    const state = await saveState(fe.conn, 'pipe');
    await fe.close();
    const to = await VhostUserFrontend.connect(dst.socketPath, opts);
    try {
      const bases = [await to.stopQueue(0), await to.stopQueue(1)];
      await loadState(to.conn, state, 'pipe');
      for (const i of [0, 1]) await to.startQueue(i, bases[i]);
      const [on0, on1] = [await ask(to, 0), await ask(to, 1)];
      t.not(on0.thread, on1.thread);
      t.is(on0.count, 4, 'instance 0 carries on from the saved count, instance 0\'s (3)');
      t.is(on1.count, 4, 'so does instance 1: the state was loaded into every instance');
    } finally {
      await to.close();
    }
  } finally {
    await stopped(t, src);
    await stopped(t, dst);
  }
});

test.serial('with an inflight area: a host killed with a request in flight on ring 1 comes back on two threads and thread 1 resubmits it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'queue-threads-'));
  const sock = join(dir, 'dev.sock');
  const args = ['--socket-path', sock, '--device-module', DEVICE, '--queue-threads', '2'];
  const h1 = await startHost(args, { env: { VHOST_WASM_TEST_HOLD: '1' } });
  const fe = await VhostUserFrontend.connect(sock, { ...opts, inflight: true });
  let h2: HostProcess | null = null;
  try {
    t.is((await ask(fe, 0)).count, 1);
    const held = fe.queues[1].submit([Buffer.from('hold')], 12);
    await ask(fe, 1);
    t.true(await eventually(() => fe.queues[1].inFlight === 1), 'the held request stays in flight');
    await h1.stop('SIGKILL');
    h2 = await startHost(args);
    await fe.reconnect(sock);
    const r = await withTimeout(held, 10_000, 'the resubmitted request');
    const v = new DataView(r.data.buffer, r.data.byteOffset, 12);
    t.is(v.getUint32(4, true), 1, 'answered on queue 1');
    t.is(v.getUint32(8, true), 1, 'by the new process: its instance\'s first request');
    t.truthy(await h2.waitForLog(/\(queue thread 1\): ring 1: resubmitting 1 in-flight request\(s\)/));
    const after = await ask(fe, 1);
    t.is(after.thread, v.getUint32(0, true), 'ring 1 goes on on the thread that resubmitted');
    t.is((await ask(fe, 0)).count, 1, 'ring 0 (thread 0) had nothing in flight and serves on');
  } finally {
    await fe.close();
    await h1.stop();
    if (h2) await stopped(t, h2);
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('more queue threads than the device has queues: one thread per queue', async (t) => {
  const host = await start('8');
  try {
    t.truthy(await host.waitForLog(/--queue-threads 8: queue-threads-test has 4 queue\(s\), so 4 thread\(s\) are started/));
    t.truthy(await host.waitForLog(/runs in 4 queue threads/));
  } finally {
    await stopped(t, host);
  }
});
