// One front-end per device, and nobody else left hanging or refused by a full backlog: with a
// front-end connected to a device, the next connections (up to 4) wait and are served in
// order as each previous one disconnects; connections past those are accepted and closed at
// once (the peer sees EOF, the host logs that the device is busy) instead of filling the
// kernel's backlog until connect() fails with EAGAIN. Another device of the same process
// serves throughout. Against the real host process: the built binary serving both devices
// (`vhost-wasm serve --config`).
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, type FrontendOptions } from '../host/frontend/driver.ts';
import { MAX_WAITING_CONNECTIONS } from '../host/resources/fd-budget.ts';
import { REPO } from './helpers/host-process.ts';
import { until } from './helpers/multi-host.ts';
import { startDaemon, type DaemonProcess } from './helpers/daemon-process.ts';
import { RngPump } from './helpers/rng-pump.ts';

const EXTRA = 40; // well past the listen backlog of 16
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };
let dir: string;
let host: DaemonProcess;
const sock = (l: string) => join(dir, `${l}.sock`);

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'listener-busy-'));
  const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
  // Two devices in one process: the daemon (the built binary), its transpile cache private to this test.
  const devices = ['other', 'busy'].map((id) => ({ id, socket: sock(id), plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } }));
  writeFileSync(join(dir, 'daemon.json'), JSON.stringify({ devices }));
  host = await startDaemon(['--config', join(dir, 'daemon.json')], { env: { XDG_CACHE_HOME: join(dir, 'cache') } });
});

test.after.always(async () => {
  if (host) await host.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A plain connection: resolves 'closed by the host' on EOF, rejects on a connect error (EAGAIN). */
function rawConnection(path: string): { connected: Promise<void>; closedByHost: Promise<void>; destroy(): void } {
  const s = createConnection(path);
  const connected = new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  const closedByHost = new Promise<void>((resolve) => s.once('end', resolve));
  s.resume();
  connected.catch(() => {});
  return { connected, closedByHost, destroy: () => s.destroy() };
}

test('a busy device queues a few connections, closes the rest at once, and serves the queued ones in order', async (t) => {
  const other = await VhostUserFrontend.connect(sock('other'), opts);
  const pump = RngPump.start(t, other);
  await pump.more(3);
  await sleep(100);
  const baseline = host.fdCount();

  const first = await VhostUserFrontend.connect(sock('busy'), opts);
  const firstPump = RngPump.start(t, first);
  await firstPump.more(3);

  // These wait: connect() works, the handshake is answered once it is their turn.
  const waiting: Promise<VhostUserFrontend>[] = [];
  for (let i = 0; i < MAX_WAITING_CONNECTIONS; i++) {
    waiting.push(VhostUserFrontend.connect(sock('busy'), opts));
    await host.waitForLog(new RegExp(`listener busy: a front-end connected while the device is busy with another; .*\\(${i + 1} waiting\\)`));
  }
  // These are refused: every connect() succeeds (no EAGAIN from a full backlog) and then sees EOF.
  // In bursts of 10, each well under the backlog: what matters is that the host keeps draining.
  const extra: ReturnType<typeof rawConnection>[] = [];
  for (let i = 0; i < EXTRA; i += 10) {
    const burst = Array.from({ length: 10 }, () => rawConnection(sock('busy')));
    extra.push(...burst);
    await Promise.all(burst.map((c) => c.connected));
    await Promise.all(burst.map((c) => c.closedByHost));
  }
  t.pass(`${EXTRA} extra connections were accepted and closed by the host`);
  const busyLines = host.log().split('\n').filter((l) => /listener busy: device busy: closed a new front-end connection/.test(l));
  t.true(busyLines.length >= 1 && busyLines.length <= 3, `busy lines are rate-limited (${busyLines.length})`);
  t.log(busyLines.at(-1)!.replace(/^\S+ /, ''));
  await firstPump.more(3); // the connected front-end was never disturbed
  await firstPump.stop();
  await pump.more(3);

  // Each disconnect lets the oldest waiting front-end in.
  await first.close();
  const pending = waiting.map((p, i) => p.then((fe) => ({ fe, i })));
  for (let n = 0; n < MAX_WAITING_CONNECTIONS; n++) {
    const next = await Promise.race(pending.filter((_, i) => i >= n));
    t.is(next.i, n, 'served in the order they connected');
    const r = await next.fe.queues[0].submit([], 32);
    t.is(r.len, 32, `waiting front-end ${n} is served`);
    await next.fe.close();
  }
  for (const c of extra) c.destroy();
  t.true((await pump.stop()) > 9, 'the other device served throughout');
  await other.close();
  await until(() => host.fdCount() <= baseline - 1, `fds back to the baseline (${baseline - 1}, now ${host.fdCount()})`);
  t.notRegex(host.log(), /accept failed/);
});
