// Containment: a misbehaving plugin costs its own device a reset and nothing else. One host
// process serves a healthy rng plugin and one faulty plugin per fault, each device on its own
// socket and in its own worker; the front-end driver talks to both over real sockets. For each
// fault: a log line names the plugin and the fault, GET_STATUS carries NEEDS_RESET, a
// CONFIG_CHANGE_MSG arrives on the back-end channel, the rng device keeps serving throughout,
// RESET_DEVICE (and a reconnect) brings a fresh instance that serves again, and the host's fd
// table ends where it started.
import test, { type ExecutionContext } from 'ava';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, readFileSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, VirtioStatus, type FrontendOptions } from '../host/frontend/driver.ts';
import { DriverQueue } from '../host/frontend/queue.ts';
import { ProtocolFeature } from '../host/protocol/constants.ts';
import { loadPlugin, PluginError } from '../host/plugin/index.ts';
import { buildFixtures, type Fixture } from './fixtures/plugins/build-fixtures.ts';
import { buildHostFixtures, type HostFixture } from './fixtures/plugins/build-host-fixtures.ts';

const root = join(import.meta.dirname, '..');
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
let host: ChildProcess;
let stderr = '';
const sockets: Record<string, string> = {};

const FAULTS: Fault[] = [
  { label: 'trap', file: () => faulty.trap, logLine: /plugin bad: process: trapped: .*unreachable/ },
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
    logLine: new RegExp(`plugin bad: process: trapped: .*memory \\d+ bytes of its limit of ${GROW_LIMIT}: likely out of memory`),
  },
  { label: 'overflow', file: () => faulty.overflow, logLine: /plugin bad: process: response 0 on queue 0 has 9 bytes but the request can hold only 8/ },
  { label: 'count', file: () => faulty.count, logLine: /plugin bad: process: returned 0 responses for 1 requests on queue 0/ },
  { label: 'status', file: () => faulty.status, logLine: /plugin bad: process: returned a malformed value: TypeError: invalid variant discriminant/ },
];

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true };

function fdTable(): string[] {
  const d = `/proc/${host.pid}/fd`;
  return readdirSync(d).map((f) => { try { return `${f}->${readlinkSync(`${d}/${f}`)}`; } catch { return f; } });
}

function hostFds(): number {
  return readdirSync(`/proc/${host.pid}/fd`).length;
}

async function stableHostFds(): Promise<number> {
  let last = hostFds();
  for (let same = 0; same < 3; ) {
    await sleep(60);
    const now = hostFds();
    same = now === last ? same + 1 : 0;
    last = now;
  }
  return last;
}


function logCount(re: RegExp): number {
  return stderr.split('\n').filter((l) => re.test(l)).length;
}

async function waitForLog(re: RegExp, after = 0, timeoutMs = 10_000): Promise<string> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const hits = stderr.split('\n').filter((l) => re.test(l));
    if (hits.length > after) return hits[after];
    if (Date.now() > end) throw new Error(`host never logged ${re}; its log:\n${stderr}`);
    await sleep(20);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms))),
  ]);
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
  host = spawn(process.execPath, ['--import', 'tsx', join(root, 'test', 'fixtures', 'plugins', 'multi-device-host.ts'), JSON.stringify(specs)], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  host.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  await waitForLog(/multi-device-host: serving rng, /, 0, 60_000);
  for (const s of specs) if (!existsSync(s.socket)) throw new Error(`no socket ${s.socket}`);
});

test.after.always(async () => {
  if (process.env.FAULTS_HOST_LOG) writeFileSync(process.env.FAULTS_HOST_LOG, stderr);
  if (host && host.exitCode === null) {
    const exited = new Promise((r) => host.once('exit', r));
    host.kill('SIGTERM');
    await Promise.race([exited, sleep(5000).then(() => host.kill('SIGKILL'))]);
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Keeps rng requests flowing one after another; records when each one completed. */
class RngPump {
  readonly done: number[] = [];
  private stopped = false;
  private error: Error | null = null;
  private readonly loop: Promise<void>;

  constructor(private readonly fe: VhostUserFrontend) {
    this.loop = this.run().catch((e: Error) => {
      this.error = e;
    });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const r = await withTimeout(this.fe.queues[0].submit([], 64), 5000, 'rng request');
      if (r.len !== 64) throw new Error(`rng answered ${r.len} bytes for 64`);
      if (new Set(r.data).size < 16) throw new Error('rng answer does not look random');
      this.done.push(performance.now());
    }
  }

  between(from: number, to = Infinity): number {
    return this.done.filter((t) => t >= from && t < to).length;
  }

  async waitFor(n: number, from: number): Promise<void> {
    const end = Date.now() + 5000;
    while (this.between(from) < n) {
      if (this.error) throw this.error;
      if (Date.now() > end) throw new Error(`rng served only ${this.between(from)} of ${n} requests in 5 s`);
      await sleep(5);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    if (this.error) throw this.error;
  }
}

/** After RESET_DEVICE the driver starts over on the same connection: features, then the ring. */
async function restartQueue(fe: VhostUserFrontend): Promise<void> {
  const conn = fe.conn;
  fe.queues[0].close();
  const status = conn.hasProtocol(ProtocolFeature.STATUS);
  const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = VirtioStatus;
  if (status) await conn.setStatus(ACKNOWLEDGE | DRIVER);
  await conn.setFeatures(fe.features);
  if (status) await conn.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
  const size = opts.queues![0];
  const q = new DriverQueue(fe.memory, { index: 0, size, eventIdx: fe.hasFeature(VIRTIO_F_EVENT_IDX), indirectEntries: 0 });
  fe.queues[0] = q;
  const a = q.addresses();
  await conn.setVringNum(0, size);
  await conn.setVringBase(0, 0);
  await conn.setVringAddr({ index: 0, flags: 0, descUserAddr: BigInt(a.desc), usedUserAddr: BigInt(a.used), availUserAddr: BigInt(a.avail), logGuestAddr: BigInt(q.ring.usedGpa) });
  await conn.setVringKick(0, q.kickFd);
  await conn.setVringCall(0, q.callFd);
  q.start();
  await conn.setVringEnable(0, true);
  if (status) await conn.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/** The fixture's healthy answer: the writable length filled with 0x5a. */
async function servesAgain(t: ExecutionContext, fe: VhostUserFrontend, what: string): Promise<void> {
  const r = await withTimeout(fe.queues[0].submit([Buffer.from('ping')], 8), 5000, what);
  t.is(r.len, 8, what);
  t.deepEqual([...r.data], new Array(8).fill(0x5a), what);
}

for (const fault of FAULTS) {
  test.serial(`${fault.label}: faulty device needs a reset, rng keeps serving, a reset brings a fresh instance`, async (t) => {
    // Warm connections first, so lazily created fds (loops, pools) exist before counting.
    for (const s of ['rng', fault.label]) await (await VhostUserFrontend.connect(sockets[s], opts)).close();
    const fdsBefore = await stableHostFds();
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

      const line = await waitForLog(fault.logLine, logsBefore);
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
      await waitForLog(freshLine, freshBefore);
      await restartQueue(bad);
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
    t.is(host.exitCode, null, 'the host process is still running');
  });
}

test.serial('the state-size fault is refused by the runtime (no protocol path to drive it yet)', async (t) => {
  // Until the migration issue adds SET_DEVICE_STATE_FD the only way to reach get-state is the
  // runtime itself: the check that fires is the one a save through the host goes through.
  const dev = await loadPlugin(readFileSync(fixtures['state-size']), { grants: { log() {} }, cacheDir: join(dir, 'cache') });
  t.is(dev.getState(0, 4).remaining, 4);
  const err = t.throws(() => dev.getState(4, 4), { instanceOf: PluginError }) as PluginError;
  t.is(err.kind, 'invalid');
  t.regex(err.message, /^plugin bad: get-state: state size changed between calls: 8 bytes, now 11 at offset 4/);
  t.regex(dev.unusable() ?? '', /invalid in get-state/);
  t.throws(() => dev.process(0, [{ readable: [], writableLen: 8 }]), { message: /not called: instance unusable after invalid in get-state/ });
  // The host's answer is the one it gives every failed device: a fresh instance on reset.
  const fresh = await loadPlugin(readFileSync(fixtures['state-size']), { grants: { log() {} }, cacheDir: join(dir, 'cache') });
  t.is(fresh.getState(0, 4).remaining, 4, 'a fresh instance starts a save over');
  t.deepEqual([...fresh.process(0, [{ readable: [], writableLen: 3 }])[0].data], [0x5a, 0x5a, 0x5a]);
});
