// Containment: a misbehaving plugin costs its own device a reset and nothing else. One host
// process serves a healthy rng plugin and one faulty plugin per fault, each device on its own
// socket and in its own worker; the front-end driver talks to both over real sockets. For each
// fault: a log line names the plugin and the fault, GET_STATUS carries NEEDS_RESET, a
// CONFIG_CHANGE_MSG arrives on the back-end channel, the rng device keeps serving throughout,
// RESET_DEVICE (and a reconnect) brings a fresh instance that serves again, and the host's fd
// table ends where it started.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { ProtocolFeature } from '../host/protocol/constants.ts';
import { loadPlugin, PluginError } from '../host/plugin/index.ts';
import type { DeviceEvent } from '../host/device/device.ts';
import { buildFixtures, type Fixture } from './fixtures/plugins/build-fixtures.ts';
import { buildHostFixtures, type HostFixture } from './fixtures/plugins/build-host-fixtures.ts';
import { restartQueues, servesAgain, withTimeout } from './helpers/device-checks.ts';
import { RngPump } from './helpers/rng-pump.ts';
import { stableFdCount, startMultiHost, type MultiHost } from './helpers/multi-host.ts';

const root = join(import.meta.dirname, '..');
const request = (id: number, writableLen: number): DeviceEvent => ({ kind: 'request', request: { id, queue: 0, prefix: new Uint8Array(0), readableLen: 0, writableLen } });
const NEEDS_RESET = 0x40;
const LOOP_DEADLINE_MS = 300;
const GROW_LIMIT = 8 << 20;

interface Fault {
  label: string;
  file: () => string;
  options?: Record<string, unknown>;
  callDeadlineMs?: number;
  /** The host log line that names the plugin and the fault. */
  logLine: RegExp;
  /** The worker is killed (watchdog) rather than the instance refusing further calls. */
  killsWorker?: boolean;
}

let dir: string;
let fixtures: Record<Fixture, string>;
let faulty: Record<HostFixture, string>;
let rngFile: string;
let host: MultiHost;
const sockets: Record<string, string> = {};

const FAULTS: Fault[] = [
  { label: 'trap', file: () => faulty.trap, logLine: /plugin bad: handle: trapped: .*unreachable/ },
  {
    label: 'loop',
    file: () => faulty.loop,
    callDeadlineMs: LOOP_DEADLINE_MS,
    logLine: new RegExp(`device loop: bad: a device call ran \\d+ ms, past its ${LOOP_DEADLINE_MS} ms deadline; worker terminated`),
    killsWorker: true,
  },
  {
    label: 'grow',
    file: () => faulty.grow,
    options: { memoryLimitBytes: GROW_LIMIT },
    logLine: new RegExp(`plugin bad: handle: trapped: .*memory \\d+ bytes of its limit of ${GROW_LIMIT}: likely out of memory`),
  },
  {
    label: 'overflow',
    file: () => faulty.overflow,
    // Refused while lifting when it passes what every request the plugin holds could take,
    // else by the answer checks: either way, before a byte is written.
    logLine:
      /plugin bad: handle: returned more list bytes than the call allows|bad: handle\(\) returned an answer the host refuses: action 0 \(answer to request \d+\) breaks the rule "the reply pieces fit the writable area \(writable-len\)": pieces 0\.\.0 cover 9 bytes of a request that can hold 8/,
  },
  {
    label: 'count',
    file: () => faulty.count,
    logLine: /bad: handle\(\) returned an answer the host refuses: the result breaks the rule "every request and io-failed event of the call gets an answer or a hold": request \d+ got neither an answer nor a hold/,
  },
  { label: 'status', file: () => faulty.status, logLine: /plugin bad: handle: returned a malformed value: TypeError: invalid variant discriminant/ },
];

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true };

function fdTable(): string[] {
  const d = `/proc/${host.pid}/fd`;
  return readdirSync(d).map((f) => { try { return `${f}->${readlinkSync(`${d}/${f}`)}`; } catch { return f; } });
}

function logCount(re: RegExp): number {
  return host.lines(re).length;
}

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'plugin-host-faults-'));
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  rngFile = join(root, 'dist', 'plugins', 'rng.wasm');
  const out = join(root, 'dist', 'test-plugins');
  fixtures = await buildFixtures(root, out);
  faulty = await buildHostFixtures(root, out);
  const cacheDir = join(dir, 'cache');
  const specs = [
    // A generous deadline for the healthy device: it must never be the one that fails.
    { label: 'rng', plugin: rngFile, options: { entropy: true, cacheDir }, callDeadlineMs: 10_000 },
    ...FAULTS.map((f) => ({ label: f.label, plugin: f.file(), options: { ...f.options, cacheDir }, callDeadlineMs: f.callDeadlineMs ?? 10_000 })),
  ].map((s) => ({ ...s, socket: (sockets[s.label] = join(dir, `${s.label}.sock`)) }));
  host = await startMultiHost(specs);
});

test.after.always(async () => {
  if (host) {
    if (process.env.FAULTS_HOST_LOG) writeFileSync(process.env.FAULTS_HOST_LOG, host.log());
    await host.stop();
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

for (const fault of FAULTS) {
  test.serial(`${fault.label}: faulty device needs a reset, rng keeps serving, a reset brings a fresh instance`, async (t) => {
    // Warm connections first, so lazily created fds (loops, pools) exist before counting.
    for (const s of ['rng', fault.label]) await (await VhostUserFrontend.connect(sockets[s], opts)).close();
    const fdsBefore = await stableFdCount(host);
    const tableBefore = fdTable();
    const logsBefore = logCount(fault.logLine);

    const rng = await VhostUserFrontend.connect(sockets.rng, opts);
    const bad = await VhostUserFrontend.connect(sockets[fault.label], opts);
    const pump = new RngPump(rng);
    try {
      t.truthy(bad.backend, 'the back-end request channel was negotiated');
      t.true(bad.conn.hasProtocol(ProtocolFeature.STATUS));
      await pump.waitFor(5, 0);
      t.is(await bad.conn.getStatus() & NEEDS_RESET, 0, 'healthy before the fault');

      const configChange = new Promise<number>((resolve) => bad.backend!.once('config-change', () => resolve(performance.now())));
      const tFault = performance.now();
      const doomed = bad.queues[0].submit([Buffer.from('boom')], 8);
      doomed.catch(() => {}); // never completes: the device failed on it
      const tChange = await withTimeout(configChange, 10_000, 'CONFIG_CHANGE_MSG');

      const line = await host.waitForLog(fault.logLine, logsBefore);
      t.log(`log: ${line.replace(/^\S+ /, '')}`);
      t.log(`config change ${(tChange - tFault).toFixed(0)} ms after the faulty request; rng served ${pump.between(tFault, tChange)} requests meanwhile`);
      if (fault.killsWorker) {
        // The loop ran for the whole deadline: the other device must have served through it.
        t.true(tChange - tFault >= LOOP_DEADLINE_MS * 0.9, 'the watchdog waited for the deadline');
        t.true(pump.between(tFault, tChange) >= 3, 'rng served while the faulty plugin spun');
      }
      t.is((await bad.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET, 'GET_STATUS has DEVICE_NEEDS_RESET');
      const afterFault = performance.now();
      await pump.waitFor(10, afterFault);

      // RESET_DEVICE: a fresh instance (a fresh worker after the watchdog) that serves again.
      const freshLine = fault.killsWorker ? /session loop: device restarted with a fresh instance after reset/ : /device replaced by a fresh instance on reset/;
      const freshBefore = logCount(freshLine);
      await bad.conn.resetDevice();
      t.is((await bad.conn.getStatus()) & NEEDS_RESET, 0, 'NEEDS_RESET cleared by RESET_DEVICE');
      await host.waitForLog(freshLine, freshBefore);
      await restartQueues(bad, opts.queues!);
      await servesAgain(t, bad, 'after RESET_DEVICE');
      await bad.close();

      // Once more, this time left unreset: a reconnect gets a working device too.
      const again = await VhostUserFrontend.connect(sockets[fault.label], opts);
      try {
        const change = new Promise<void>((resolve) => again.backend!.once('config-change', () => resolve()));
        again.queues[0].submit([Buffer.from('boom')], 8).catch(() => {});
        await withTimeout(change, 10_000, 'second CONFIG_CHANGE_MSG');
        t.is((await again.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET);
      } finally {
        await again.close();
      }
      const fresh = await VhostUserFrontend.connect(sockets[fault.label], opts);
      try {
        t.is((await fresh.conn.getStatus()) & NEEDS_RESET, 0, 'a new connection starts without NEEDS_RESET');
        await servesAgain(t, fresh, 'after reconnecting');
      } finally {
        await fresh.close();
      }

      const tEnd = performance.now();
      await pump.waitFor(5, tEnd);
      t.true(pump.between(afterFault) >= 15, 'rng served during and after the faulty device\'s recovery');
    } finally {
      await pump.stop().catch((e: Error) => t.fail(`rng stopped serving: ${e.message}`));
      await rng.close();
      await bad.close();
    }
    // A worker killed by the watchdog takes its event loop's fds with it and the fresh one may
    // open fewer (lazily created handles), so "no more than before" is the check there; what
    // the session owns (sockets, guest memory, ring eventfds) must all be gone either way.
    // Wait for the real condition, not just the count: after a watchdog kill the fresh worker's
    // smaller fd set can make the count match while the session is still releasing its fds.
    const sessionFds = (table: string[]) => table.filter((f) => !tableBefore.includes(f) && /socket:|memfd:/.test(f));
    const settled = () => {
      const table = fdTable();
      return sessionFds(table).length === 0 && (fault.killsWorker ? table.length <= fdsBefore : table.length === fdsBefore);
    };
    for (let i = 0; i < 250 && !settled(); i++) await sleep(20);
    const after = fdTable();
    const fdsAfter = after.length;
    const appeared = after.filter((f) => !tableBefore.includes(f));
    if (fdsAfter !== fdsBefore) t.log(`fds gone: ${tableBefore.filter((f) => !after.includes(f)).join(' ')}; new: ${appeared.join(' ')}`);
    if (fault.killsWorker) t.true(fdsAfter <= fdsBefore, `no fd leaked in the host process (${fdsBefore} before, ${fdsAfter} after)`);
    else t.is(fdsAfter, fdsBefore, 'no fd leaked in the host process');
    t.deepEqual(sessionFds(after), [], 'no socket or guest-memory fd left behind');
    t.is(host.child.exitCode, null, 'the host process is still running');
  });
}

test.serial('the state-size fault is refused by the runtime', async (t) => {
  // Driven through the runtime, not the protocol: a save through the host (SET_DEVICE_STATE_FD,
  // test/device-lifecycle.test.ts drives bad state that way) asks for the state in 1 MiB
  // chunks, so this fixture's 8 bytes come in one call and the size never changes between
  // calls. Asking 4 bytes at a time reaches the check every save goes through.
  const dev = await loadPlugin(readFileSync(fixtures['state-size']), { grants: { log() {} }, cacheDir: join(dir, 'cache') });
  t.is(dev.getState(0, 4).remaining, 4);
  const err = t.throws(() => dev.getState(4, 4), { instanceOf: PluginError }) as PluginError;
  t.is(err.kind, 'invalid');
  t.regex(err.message, /^plugin bad: get-state: state size changed between calls: 8 bytes, now 11 at offset 4/);
  t.regex(dev.unusable() ?? '', /invalid in get-state/);
  t.throws(() => dev.handle([request(0, 8)]), { message: /not called: instance unusable after invalid in get-state/ });
  // The host's answer is the one it gives every failed device: a fresh instance on reset.
  const fresh = await loadPlugin(readFileSync(fixtures['state-size']), { grants: { log() {} }, cacheDir: join(dir, 'cache') });
  t.is(fresh.getState(0, 4).remaining, 4, 'a fresh instance starts a save over');
  const [a] = fresh.handle([request(0, 3)]);
  t.deepEqual(a.kind === 'answer' && a.answer.reply[0].kind === 'bytes' ? [...a.answer.reply[0].bytes] : a, [0x5a, 0x5a, 0x5a]);
});
