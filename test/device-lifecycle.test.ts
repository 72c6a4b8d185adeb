// The device lifecycle against hostile plugins and front-ends (issue 9, items 4, 6, 11, 14):
// one real host process (the CLI's shutdown path) serves a healthy rng device next to each
// faulty one, every device on its own socket and in its own worker. For each fault: the faulty
// device fails alone (NEEDS_RESET or a refused request, with a log line saying why), the rng
// device keeps serving through it, and the faulty device comes back after a reset or a
// reconnect where it can. Last, SIGTERM ends the host although one device's worker is stuck
// in a system call no terminate() reaches.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, rmSync, truncateSync, writeFileSync, constants as fsc } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { VhostUserError } from '../host/frontend/connection.ts';
import { saveState } from '../host/frontend/migrate.ts';
import { native } from '../host/native/index.ts';
import { FORCED_EXIT_CODE } from '../host/server/shutdown.ts';
import { buildHostFixtures, type HostFixture } from './fixtures/plugins/build-host-fixtures.ts';
import { restartQueues, servesAgain, withTimeout } from './helpers/device-checks.ts';
import { RngPump } from './helpers/rng-pump.ts';
import { startHost } from './helpers/host-process.ts';
import { startMultiHost, type MultiHost } from './helpers/multi-host.ts';
import { STATE_CALL_BYTES } from '../host/device/runner.ts';

const root = join(import.meta.dirname, '..');
const NEEDS_RESET = 0x40;
const QUEUE_SIZE = 64;
const LOAD_DEADLINE_MS = 1000;
const BLOCK_DEADLINE_MS = 500;
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [QUEUE_SIZE], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true };

let dir: string;
let disk: string;
let fifo: string;
let faulty: Record<HostFixture, string>;
let host: MultiHost;
const sockets: Record<string, string> = {};

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'device-lifecycle-'));
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  faulty = await buildHostFixtures(root, join(root, 'dist', 'test-plugins'));
  disk = join(dir, 'identity-loop.disk');
  writeFileSync(disk, Buffer.alloc(4096));
  fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const cacheDir = join(dir, 'cache');
  const rng = join(root, 'dist', 'plugins', 'rng.wasm');
  const specs = [
    // Generous call deadlines for every device that must not be the one to fail on a deadline.
    { label: 'rng', plugin: rng, options: { entropy: true, cacheDir }, callDeadlineMs: 10_000 },
    { label: 'victim', plugin: rng, options: { entropy: true, cacheDir }, callDeadlineMs: 10_000 },
    {
      label: 'identity-loop',
      plugin: faulty['identity-loop'],
      options: { storage: { kind: 'file', path: disk, readOnly: false }, cacheDir },
      callDeadlineMs: 10_000,
      loadDeadlineMs: LOAD_DEADLINE_MS,
    },
    { label: 'state-long', plugin: faulty['state-long'], options: { cacheDir }, callDeadlineMs: 10_000 },
    { label: 'state-huge', plugin: faulty['state-huge'], options: { cacheDir }, callDeadlineMs: 10_000 },
    { label: 'block', module: join(root, 'test', 'devices', 'hostile-device.ts'), options: { fifo }, callDeadlineMs: BLOCK_DEADLINE_MS },
  ].map((s) => ({ ...s, socket: (sockets[s.label] = join(dir, `${s.label}.sock`)) }));
  host = await startMultiHost(specs);
});

test.after.always(async () => {
  if (host && process.env.LIFECYCLE_HOST_LOG) writeFileSync(process.env.LIFECYCLE_HOST_LOG, host.log());
  if (fifo && existsSync(fifo)) {
    // Releases a worker still blocked opening the FIFO, whatever happened above.
    try {
      closeSync(openSync(fifo, fsc.O_RDWR | fsc.O_NONBLOCK));
    } catch {
      // gone already
    }
  }
  if (host && host.child.exitCode === null && host.child.signalCode === null) host.child.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs `body` with the rng device serving throughout, and checks it served during and after. */
async function withBystander(t: import('ava').ExecutionContext, body: (pump: RngPump) => Promise<void>): Promise<void> {
  const rng = await VhostUserFrontend.connect(sockets.rng, opts);
  const pump = new RngPump(rng);
  try {
    await pump.waitFor(3, 0);
    const t0 = performance.now();
    await body(pump);
    await pump.waitFor(5, performance.now());
    t.true(pump.between(t0) >= 5, 'the rng device served during and after the fault');
  } finally {
    await pump.stop().catch((e: Error) => t.fail(`rng stopped serving: ${e.message}`));
    await rng.close();
  }
  t.is(host.child.exitCode, null, 'the host process is still running');
}

async function needsReset(fe: VhostUserFrontend): Promise<boolean> {
  return ((await fe.conn.getStatus()) & NEEDS_RESET) !== 0;
}

test.serial('a plugin that loops in identity() once re-instantiated: its device fails on a deadline, the host serves on', async (t) => {
  await withBystander(t, async (pump) => {
    const bad = await VhostUserFrontend.connect(sockets['identity-loop'], opts);
    try {
      await servesAgain(t, bad, 'before the fault');
      const change = new Promise<void>((resolve) => bad.backend!.once('config-change', () => resolve()));
      // The mark a fresh instance spins on: the disk grown past 1 MiB (a 0.2 plugin cannot write
      // its disk itself; the running instance saw the old size at load). Then the trap.
      truncateSync(disk, 2 << 20);
      bad.queues[0].submit([Buffer.from('boom')], 8).catch(() => {});
      await withTimeout(change, 10_000, 'CONFIG_CHANGE_MSG after the trap');
      t.true(await needsReset(bad), 'NEEDS_RESET after the trap');

      // RESET_DEVICE rebuilds the failed instance; the fresh one spins in identity().
      const deadlineLine = new RegExp(`loading the device \\(its instantiation, identity or info\\) ran \\d+ ms, past its ${LOAD_DEADLINE_MS} ms deadline; worker terminated`);
      const before = host.lines(deadlineLine).length;
      const tReset = performance.now();
      const err = await t.throwsAsync(bad.conn.resetDevice(), { instanceOf: VhostUserError });
      t.log(`RESET_DEVICE: ${err?.message}`);
      t.log(await host.waitForLog(deadlineLine, before));
      t.true(pump.between(tReset) >= 3, 'rng served while the fresh instance spun');
      t.true(await needsReset(bad), 'NEEDS_RESET stays set: the device is still not usable');
      await host.waitForLog(/RESET_DEVICE \(34\) failed: .*past its 1000 ms deadline/);

      // Again: a fresh worker this time, which spins at load too. Still refused, still serving.
      await t.throwsAsync(bad.conn.resetDevice(), { instanceOf: VhostUserError });
      await host.waitForLog(deadlineLine, before + 1);
      t.true(await needsReset(bad));
    } finally {
      await bad.close();
    }

    // A new front-end cannot be given a device that does not load: its connection is closed, with a line saying why.
    const refusedBefore = host.lines(/listener identity-loop: cannot start the device for a new connection: .*past its 1000 ms deadline/).length;
    await t.throwsAsync(VhostUserFrontend.connect(sockets['identity-loop'], opts));
    await host.waitForLog(/listener identity-loop: cannot start the device for a new connection: .*past its 1000 ms deadline/, refusedBefore);

    // Once the operator clears the plugin's disk, the device loads and serves again: on the
    // first connection after the start back-off (device-slot.ts), as a reconnecting front-end
    // finds it; the ones before are closed at once with a line naming the wait.
    writeFileSync(disk, Buffer.alloc(4096));
    let fresh: VhostUserFrontend | null = null;
    for (let i = 0; fresh === null; i++) {
      try {
        fresh = await VhostUserFrontend.connect(sockets['identity-loop'], opts);
      } catch (e) {
        if (i >= 200) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    try {
      t.false(await needsReset(fresh));
      await servesAgain(t, fresh, 'after the disk was cleared');
    } finally {
      await fresh.close();
    }
  });
});

for (const [label, logLine] of [
  // The host asks for STATE_CALL_BYTES per call; the plugin returns one byte more.
  ['state-long', new RegExp(`plugin bad: get-state: returned more list bytes than the call allows \\(a ${STATE_CALL_BYTES + 1}-byte list with ${STATE_CALL_BYTES} bytes of its budget left\\)`)],
  ['state-huge', /plugin bad: get-state: claims 18446744073709551615 bytes remaining/],
] as const) {
  test.serial(`${label}: bad state data fails the device; a reset or a reconnect brings a fresh instance`, async (t) => {
    await withBystander(t, async () => {
      const fe = await VhostUserFrontend.connect(sockets[label], opts);
      try {
        await servesAgain(t, fe, 'before the save');
        await fe.conn.getVringBase(0); // a save needs stopped rings
        const before = host.lines(logLine).length;
        await t.throwsAsync(saveState(fe.conn, 'pipe'), undefined, 'the save fails');
        t.log(await host.waitForLog(logLine, before));
        t.true(await needsReset(fe), 'NEEDS_RESET after the bad state');
        const replaced = host.lines(/device replaced by a fresh instance on reset/).length;
        await fe.conn.resetDevice();
        await host.waitForLog(/device replaced by a fresh instance on reset/, replaced);
        t.false(await needsReset(fe), 'RESET_DEVICE cleared NEEDS_RESET');
        await restartQueues(fe, [QUEUE_SIZE]);
        await servesAgain(t, fe, 'after RESET_DEVICE');
        // The fresh instance saves badly too, and this time the front-end just leaves.
        await fe.conn.getVringBase(0);
        await t.throwsAsync(saveState(fe.conn, 'pipe'));
        t.true(await needsReset(fe));
      } finally {
        await fe.close();
      }
      const again = await VhostUserFrontend.connect(sockets[label], opts);
      try {
        t.false(await needsReset(again), 'a new connection gets a working device');
        await servesAgain(t, again, 'after reconnecting');
      } finally {
        await again.close();
      }
    });
  });
}

/** A pipe whose buffer is full, switched to blocking: a write to it never returns. */
function fullBlockingPipe(): [number, number] {
  const [r, w] = native.pipe2();
  const chunk = Buffer.alloc(65536, 1);
  while (native.write(w, chunk) > 0) {
    // fill it
  }
  native.setNonBlocking(w, false);
  return [r, w];
}

test.serial('call, err and kick fds that are not eventfds are refused; a saturated blocking call eventfd does not wedge the worker', async (t) => {
  await withBystander(t, async () => {
    const fe = await VhostUserFrontend.connect(sockets.victim, opts);
    const [pr, pw] = fullBlockingPipe();
    const sat = native.eventfd(0);
    try {
      const q = fe.queues[0];
      const rngAnswer = async (what: string) => {
        const r = await withTimeout(q.submit([], 16), 5000, what);
        t.is(r.len, 16, what);
      };
      await rngAnswer('before');
      for (const [what, send, line] of [
        ['call', () => fe.conn.setVringCall(0, pw), /SET_VRING_CALL \(13\) failed: ring 0: the call fd is a pipe, not an eventfd/],
        ['err', () => fe.conn.setVringErr(0, pw), /SET_VRING_ERR \(14\) failed: ring 0: the err fd is a pipe, not an eventfd/],
        ['kick', () => fe.conn.setVringKick(0, pr), /SET_VRING_KICK \(12\) failed: ring 0: the kick fd is a pipe, not an eventfd/],
      ] as const) {
        const before = host.lines(line).length;
        await t.throwsAsync(send(), { instanceOf: VhostUserError }, `a pipe as ${what} fd is refused`);
        await host.waitForLog(line, before);
        // The ring keeps the fds it had: it still takes kicks and still notifies.
        await rngAnswer(`after the refused ${what} fd`);
      }
      // A refused kick fd's number is not watched later: re-enabling the ring changes nothing.
      await fe.conn.setVringEnable(0, false);
      await fe.conn.setVringEnable(0, true);
      await rngAnswer('after re-enabling the ring');
      t.false(await needsReset(fe), 'refused fds do not fail the device');

      // A blocking eventfd whose counter is full: a write to it would block for ever. The host
      // drops the notification instead (one is pending already); the driver reaps by polling.
      for (let i = 0; i < 2048; i++) native.eventfdWrite(sat, 2 ** 53 - 1);
      t.true(native.eventfdWrite(sat, 2046), 'the counter is at 2^64-2');
      native.setNonBlocking(sat, false);
      await fe.conn.setVringCall(0, sat);
      const pending = q.submit([], 16);
      let done = false;
      void pending.then(() => (done = true), () => {});
      for (let i = 0; i < 250 && !done; i++) {
        q.poll();
        await new Promise((r) => setTimeout(r, 20));
      }
      t.true(done, 'the request completed although its notification could not be written');
      t.false(await needsReset(fe), 'the device is fine');
      await fe.conn.getVringBase(0); // the worker answers: it is not stuck in a write
      t.pass('the worker still answers requests');
    } finally {
      await fe.close();
      for (const fd of [pr, pw, sat]) native.close(fd);
    }
    const again = await VhostUserFrontend.connect(sockets.victim, opts);
    const r = await withTimeout(again.queues[0].submit([], 16), 5000, 'after reconnecting');
    t.is(r.len, 16);
    await again.close();
  });
});

test.serial('a worker that crashes (an exception nothing catches): its device needs a reset, a reset brings a fresh worker', async (t) => {
  await withBystander(t, async () => {
    const fe = await VhostUserFrontend.connect(sockets.block, opts);
    try {
      await servesAgain(t, fe, 'before the crash');
      const change = new Promise<void>((resolve) => fe.backend!.once('config-change', () => resolve()));
      await withTimeout(fe.queues[0].submit([Buffer.from('crash')], 8), 5000, 'the request before the crash');
      await withTimeout(change, 10_000, 'CONFIG_CHANGE_MSG after the crash');
      t.log(await host.waitForLog(/device block: worker crashed: .*hostile device crashed its worker/));
      t.true(await needsReset(fe), 'GET_STATUS reports NEEDS_RESET, not 0');
      const restarted = host.lines(/session block: device restarted with a fresh instance after reset/).length;
      await fe.conn.resetDevice();
      await host.waitForLog(/session block: device restarted with a fresh instance after reset/, restarted);
      t.false(await needsReset(fe));
      await restartQueues(fe, [QUEUE_SIZE]);
      await servesAgain(t, fe, 'after RESET_DEVICE');
    } finally {
      await fe.close();
    }
  });
});

test.serial('a call eventfd made blocking and full after SET_VRING_CALL: the one notification write blocks, and the watchdog fails that device alone', async (t) => {
  await withBystander(t, async (pump) => {
    const fe = await VhostUserFrontend.connect(sockets.block, opts);
    const sat = native.eventfd(0);
    try {
      await servesAgain(t, fe, 'before the fault');
      // O_NONBLOCK when it arrives: the host notifies it with a single write, no poll first.
      await fe.conn.setVringCall(0, sat);
      // Then the front-end fills the counter (2^64-2) and makes its shared file blocking.
      for (let i = 0; i < 2048; i++) native.eventfdWrite(sat, 2 ** 53 - 1);
      t.true(native.eventfdWrite(sat, 2046));
      native.setNonBlocking(sat, false);
      const change = new Promise<void>((resolve) => fe.backend!.once('config-change', () => resolve()));
      const failed = host.lines(/device block: .*a notification write to the front-end's call or err eventfd ran/).length;
      const tFault = performance.now();
      fe.queues[0].submit([Buffer.from('ping')], 8).catch(() => {});
      await withTimeout(change, 10_000, 'CONFIG_CHANGE_MSG after the notify deadline');
      t.log(
        await host.waitForLog(
          new RegExp(`device block: .*a notification write to the front-end's call or err eventfd ran \\d+ ms, past its ${BLOCK_DEADLINE_MS} ms deadline; worker terminated`),
          failed,
        ),
      );
      t.true(await needsReset(fe), 'NEEDS_RESET');
      t.true(pump.between(tFault) >= 3, 'rng served while the block device was stuck in the write');
      t.true(native.eventfdRead(sat) > 2 ** 53, 'the counter was full'); // and now the blocked write can finish
      const restarted = host.lines(/session block: device restarted with a fresh instance after reset/).length;
      await fe.conn.resetDevice();
      await host.waitForLog(/session block: device restarted with a fresh instance after reset/, restarted);
      t.false(await needsReset(fe));
      await restartQueues(fe, [QUEUE_SIZE]);
      await servesAgain(t, fe, 'after RESET_DEVICE, from a fresh worker');
    } finally {
      await fe.close();
      native.close(sat);
    }
  });
});

test.serial('a worker stuck in open() of a FIFO: the device fails alone and is served again by a fresh worker', async (t) => {
  await withBystander(t, async (pump) => {
    const fe = await VhostUserFrontend.connect(sockets.block, opts);
    try {
      await servesAgain(t, fe, 'before the fault');
      const change = new Promise<void>((resolve) => fe.backend!.once('config-change', () => resolve()));
      const tFault = performance.now();
      fe.queues[0].submit([Buffer.from('boom')], 8).catch(() => {});
      await withTimeout(change, 10_000, 'CONFIG_CHANGE_MSG after the deadline');
      t.log(await host.waitForLog(new RegExp(`device block: hostile: a device call ran \\d+ ms, past its ${BLOCK_DEADLINE_MS} ms deadline; worker terminated`)));
      t.true(await needsReset(fe), 'NEEDS_RESET');
      t.true(pump.between(tFault) >= 3, 'rng served while the block device was stuck');
      // The terminated worker never exits (it is still in open()); a reset goes on without it.
      await fe.conn.resetDevice();
      await host.waitForLog(/device block: the worker did not exit within \d+ ms of being terminated/);
      await host.waitForLog(/session block: device restarted with a fresh instance after reset/);
      t.false(await needsReset(fe));
      await restartQueues(fe, [QUEUE_SIZE]);
      await servesAgain(t, fe, 'after RESET_DEVICE, from a fresh worker');
    } finally {
      await fe.close();
    }
  });
});

test.serial('SIGTERM ends the host although a worker is stuck in a system call, naming the device and removing every socket', async (t) => {
  t.is(host.child.exitCode, null);
  const t0 = performance.now();
  const code = await host.stop(); // SIGTERM; null if it took a SIGKILL after 10 s
  t.log(`exited with ${code} ${(performance.now() - t0).toFixed(0)} ms after SIGTERM`);
  t.is(code, FORCED_EXIT_CODE, 'the forced exit');
  t.regex(host.log(), /forcing the exit: the worker of device\(s\) block would not stop/);
  for (const [label, path] of Object.entries(sockets)) t.false(existsSync(path), `socket of ${label} removed`);
});

test.serial('the CLI: SIGTERM ends the host although its device worker is stuck in open(), and removes the socket', async (t) => {
  const fifo2 = join(dir, 'cli-fifo');
  execFileSync('mkfifo', [fifo2]);
  const h = await startHost(['--socket-path', '{socket}', '--device-module', join(root, 'test', 'devices', 'hostile-device.ts'), '--call-deadline', '300'], {
    env: { VHOST_WASM_TEST_FIFO: fifo2 },
  });
  try {
    const fe = await VhostUserFrontend.connect(h.socketPath, opts);
    await servesAgain(t, fe, 'before the fault');
    fe.queues[0].submit([Buffer.from('boom')], 8).catch(() => {});
    await h.waitForLog(/hostile: a device call ran \d+ ms, past its 300 ms deadline; worker terminated/);
    t.true(await needsReset(fe));
    // The front-end stays connected: the host has to end its session and the stuck worker both.
    const code = await withTimeout(h.stop('SIGTERM'), 10_000, 'CLI exit after SIGTERM');
    t.is(code, FORCED_EXIT_CODE);
    t.regex(h.log(), /vhost-wasm: .*forcing the exit: the worker of device\(s\) .* would not stop/);
    t.false(existsSync(h.socketPath), 'socket removed');
    await fe.close().catch(() => {});
  } finally {
    try {
      closeSync(openSync(fifo2, fsc.O_RDWR | fsc.O_NONBLOCK));
    } catch {
      // gone
    }
    await h.stop('SIGKILL');
  }
});

test.serial('the CLI: SIGTERM ends the host cleanly while a plugin spins in process() far from its deadline', async (t) => {
  const h = await startHost(['--socket-path', '{socket}', '--plugin', faulty.loop, '--call-deadline', '60000']);
  try {
    const fe = await VhostUserFrontend.connect(h.socketPath, opts);
    await servesAgain(t, fe, 'before the loop');
    fe.queues[0].submit([Buffer.from('boom')], 8).catch(() => {}); // spins for a minute
    await fe.conn.getStatus(); // the session still answers while the worker spins
    // The session's reset waits on the spinning worker; after its grace the host terminates it.
    const code = await withTimeout(h.stop('SIGTERM'), 10_000, 'CLI exit after SIGTERM');
    t.is(code, 0, 'a clean exit: terminate() reaches a spinning plugin');
    t.notRegex(h.log(), /forcing the exit/);
    t.false(existsSync(h.socketPath), 'socket removed');
    await fe.close().catch(() => {});
  } finally {
    await h.stop('SIGKILL');
  }
});
