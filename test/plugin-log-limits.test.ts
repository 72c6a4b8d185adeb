// A plugin's log lines and error strings reach the host's stderr, which operators read and
// machines parse. Through the real host process, next to a healthy rng device: a plugin
// cannot forge a host line (raw newlines) or drive the terminal (escape sequences), cannot
// write a line longer than 1 KiB, cannot flood (100 lines/s, bursts of 200, per device),
// and every line it loses is counted in the log, also when stderr is a full pipe. A long
// error string is cut and logged once.
import test, { type ExecutionContext } from 'ava';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { buildSdkFixtures, type SdkFixture } from './fixtures/plugins/build-sandbox-fixtures.ts';
import { daemonConfig } from './helpers/multi-host.ts';
import { hostCommand } from './helpers/host-process.ts';

const root = join(import.meta.dirname, '..');
const opts: FrontendOptions = { memoryBytes: 1 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1) };
/** What a host line looks like; anything else on stderr was forged or split. */
const HOST_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (ERROR|WARN |INFO |DEBUG) [^:]+: /;
const NEEDS_RESET = 0x40;

let dir: string;
let sdk: Record<SdkFixture, string>;
let rngFile: string;

interface Host {
  child: ChildProcess;
  socket(label: string): string;
  text(): string;
  lines(): string[];
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

/** The daemon with rng and `label`; stderr is a pipe, or a non-blocking FIFO the test may stop reading. */
async function start(label: string, plugin: string, stderr: 'pipe' | 'nonblocking-fifo' = 'pipe'): Promise<Host> {
  const specs = [
    { label: 'rng', plugin: rngFile, options: { entropy: true } },
    { label, plugin },
  ].map((s) => ({ ...s, options: { ...s.options, cacheDir: join(dir, 'cache') }, callDeadlineMs: 10_000, socket: join(dir, `${s.label}.sock`) }));
  let errFd: number | 'pipe' = 'pipe';
  let reader: Socket | null = null;
  if (stderr === 'nonblocking-fifo') {
    const fifo = join(dir, `${label}.stderr`);
    execFileSync('mkfifo', [fifo]);
    // O_NONBLOCK lives on the open file description the host inherits: a full pipe then
    // refuses its writes instead of blocking them.
    reader = new Socket({ fd: openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK), readable: true, writable: false });
    errFd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  }
  // The daemon users run (`vhost-wasm serve --config`, the built binary) with both devices.
  const daemon = daemonConfig(specs)!;
  writeFileSync(join(dir, `${label}.json`), JSON.stringify(daemon.config));
  const [node, argv] = hostCommand(['serve', '--config', join(dir, `${label}.json`)]);
  const child = spawn(node, argv, {
    cwd: root,
    stdio: ['ignore', 'ignore', errFd],
    env: { ...process.env, XDG_CACHE_HOME: daemon.cacheHome! },
  });
  if (typeof errFd === 'number') closeSync(errFd);
  const stream = reader ?? child.stderr!;
  let text = '';
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => (text += d));
  const lines = () => text.split('\n').slice(0, -1);
  const h: Host = {
    child,
    socket: (l) => specs.find((s) => s.label === l)!.socket,
    text: () => text,
    lines,
    async waitFor(re, timeoutMs = 20_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const hit = lines().find((l) => re.test(l));
        if (hit) return hit;
        if (Date.now() > end || child.exitCode !== null) throw new Error(`host never logged ${re}; its log:\n${text}`);
        await sleep(20);
      }
    },
    pause: () => stream.pause(),
    resume: () => stream.resume(),
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(5000).then(() => child.kill('SIGKILL'))]);
      }
      reader?.destroy();
    },
  };
  await h.waitFor(/vhost-wasm: serving 2 of 2 device/, 60_000);
  return h;
}

async function rngServes(t: ExecutionContext, fe: VhostUserFrontend): Promise<void> {
  const r = await fe.queues[0].submit([], 64);
  t.is(r.len, 64);
  t.true(new Set(r.data).size > 16, 'rng answers with random bytes');
}

const sum = (lines: string[], re: RegExp): number => lines.reduce((n, l) => n + Number(re.exec(l)?.[1] ?? 0), 0);

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'plugin-log-limits-'));
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  rngFile = join(root, 'dist', 'plugins', 'rng.wasm');
  sdk = await buildSdkFixtures(root, join(root, 'dist', 'test-plugins'));
});

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test.serial('plugin log lines are escaped, cut at 1 KiB and rate-limited, and every dropped line is counted', async (t) => {
  const host = await start('flood', sdk['log-flood']);
  try {
    const rng = await VhostUserFrontend.connect(host.socket('rng'), opts);
    const flood = await VhostUserFrontend.connect(host.socket('flood'), opts);
    await rngServes(t, rng);
    // One request makes the plugin write 3003 lines, then answer normally.
    const r = await flood.queues[0].submit([Buffer.from('boom')], 8);
    t.is(r.len, 8, 'the device still serves');
    const dropLine = await host.waitFor(/plugin flood: dropped \d+ plugin log lines/);
    t.log(dropLine.replace(/^\S+ /, ''));
    await rngServes(t, rng);
    await rng.close();
    await flood.close();
    await host.stop();

    const lines = host.lines();
    const text = host.text();
    t.deepEqual(lines.filter((l) => !HOST_LINE.test(l)), [], 'every stderr line is a host line: nothing was forged or split');
    t.false(/[\x00-\x08\x0b-\x1f\x7f]/.test(text), 'no raw control character reached stderr');
    t.true(
      lines.some((l) => l.endsWith('WARN  plugin flood: forged\\n2026-01-01T00:00:00.000Z ERROR vhost-wasm: FORGED host line')),
      'the newline is shown escaped, inside the plugin\'s own line',
    );
    t.true(lines.some((l) => l.endsWith('INFO  plugin flood: esc \\x1b[31mred\\x1b[0m cr\\rbell\\x07 tab\\t del\\x7f end')));
    const long = lines.find((l) => /plugin flood: x+…/.test(l));
    t.truthy(long, 'the 4999-byte line was logged, cut');
    t.true(long!.endsWith(`: ${'x'.repeat(1024)}…(3975 bytes cut)`), 'cut at 1 KiB with a marker saying how much');
    const logged = lines.filter((l) => l.endsWith('INFO  plugin flood: flood line')).length;
    const dropped = sum(lines, /plugin flood: dropped (\d+) plugin log lines/);
    t.log(`${logged} flood lines logged, ${dropped} dropped`);
    t.true(dropped > 0, 'the flood was limited');
    t.is(logged + dropped + 3, 3003, 'every line the plugin wrote was either logged or counted as dropped');
  } finally {
    await host.stop();
  }
});

test.serial('a long error string from a plugin is cut, escaped and logged once', async (t) => {
  const host = await start('erring', sdk['long-error']);
  try {
    const rng = await VhostUserFrontend.connect(host.socket('rng'), opts);
    const bad = await VhostUserFrontend.connect(host.socket('erring'), opts);
    const change = new Promise<void>((resolve) => bad.backend!.once('config-change', () => resolve()));
    bad.queues[0].submit([Buffer.from('boom')], 8).catch(() => {});
    await change;
    t.is((await bad.conn.getStatus()) & NEEDS_RESET, NEEDS_RESET);
    // The reset logs too: it must not repeat the plugin's text.
    await bad.conn.resetDevice();
    await host.waitFor(/device replaced by a fresh instance on reset/);
    await rngServes(t, rng);
    await rng.close();
    await bad.close();
    await host.stop();

    const lines = host.lines();
    t.deepEqual(lines.filter((l) => !HOST_LINE.test(l)), []);
    const withError = lines.filter((l) => l.includes('EEEEEEEEEE'));
    t.is(withError.length, 1, `the error text appears once:\n${withError.map((l) => l.slice(0, 200)).join('\n')}`);
    t.regex(withError[0], /plugin bad: handle: EEEEEEEEEE\\n2026-01-01T00:00:00\.000Z ERROR vhost-wasm: FORGEDE+…\(98975 bytes cut\)$/);
    t.true(Buffer.byteLength(withError[0]) < 1300, `the line is ${Buffer.byteLength(withError[0])} bytes`);
  } finally {
    await host.stop();
  }
});

test.serial('lines that do not fit a full non-blocking stderr pipe are counted, not lost silently', async (t) => {
  const host = await start('wide', sdk['log-wide'], 'nonblocking-fifo');
  try {
    const wide = await VhostUserFrontend.connect(host.socket('wide'), opts);
    host.pause(); // nobody reads: the pipe fills
    // 400 lines of 1 KiB; if the host's stderr is blocking after all, this waits for the resume below.
    const answered = wide.queues[0].submit([Buffer.from('boom')], 8);
    await Promise.race([answered, sleep(2000)]);
    host.resume();
    t.is((await answered).len, 8, 'the device answered');
    await host.waitFor(/plugin wide: dropped \d+ plugin log lines/);
    // A full-pipe count is written with the next line that fits, or within a second.
    const fullDrops = () => sum(host.lines(), /log: (\d+) log lines of this thread were dropped: stderr was full/);
    const logged = () => host.lines().filter((l) => /plugin wide: w{1000}$/.test(l)).length;
    const rate = () => sum(host.lines(), /plugin wide: dropped (\d+) plugin log lines/);
    for (let i = 0; i < 100 && logged() + rate() + fullDrops() < 400; i++) await sleep(50);
    t.log(`${logged()} logged, ${rate()} over the rate, ${fullDrops()} on a full stderr`);
    t.true(logged() + rate() <= 400);
    t.true(logged() + rate() + fullDrops() >= 400, 'every one of the 400 lines is logged or counted');
    t.deepEqual(host.lines().filter((l) => !HOST_LINE.test(l)), [], 'no line was split by a partial write');
    await wide.close();
  } finally {
    await host.stop();
  }
});
