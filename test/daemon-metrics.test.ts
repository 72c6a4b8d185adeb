// The daemon's Prometheus metrics (issue 13 item 3) as an operator scrapes them: the built
// binary, `serve --config` with "metrics" on a Unix socket (and `--metrics 127.0.0.1:0` on TCP),
// real front-ends doing known I/O, and the counts read back from the exposition: requests,
// bytes both ways, latency and plugin-call histograms, batches and calls per batch, in flight, out-of-order completions, plugin memory, a plugin fault,
// a reset, worker starts, state transfers; process fds and memory from prom-client's defaults.
// A malformed address is refused at start with a clear error.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { request } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { BlkDevice, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ } from '../host/frontend/blk.ts';
import { loadState, saveState } from '../host/frontend/migrate.ts';
import { REPO } from './helpers/host-process.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { ctl, deviceStats, spawnDaemon, startDaemon, type DaemonProcess, startDaemonWith } from './helpers/daemon-process.ts';
import { buildHostFixtures } from './fixtures/plugins/build-host-fixtures.ts';
import { FuseClient, fhOfOpen, nodeOf, O, LK, lkIn } from './helpers/fuse.ts';

const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');
const blk = join(REPO, 'dist', 'plugins', 'blk.wasm');
const fsPlugin = join(REPO, 'dist', 'plugins', 'fs.wasm');
/** The file the fs device shares (share/data): 64 KiB of a pattern. */
const SHARED_DATA = new Uint8Array(64 << 10).map((_, i) => (i * 5 + (i >> 12)) & 0xff);
const rngOpts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };

let dir: string;
let daemon: DaemonProcess;
const sock = (name: string) => join(dir, `${name}.sock`);

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  const faulty = await buildHostFixtures(REPO, join(REPO, 'dist', 'test-plugins'));
  dir = mkdtempSync(join(tmpdir(), 'daemon-metrics-'));
  mkdirSync(join(dir, 'share'));
  writeFileSync(join(dir, 'share', 'data'), SHARED_DATA);
  daemon = await startDaemonWith(dir, {
    metrics: `unix:${sock('metrics')}`,
    control: sock('control'),
    // Started at once: the first scrape reads every device's running worker (its plugin's
    // memory); test/daemon-on-connect.test.ts scrapes devices not started yet.
    start: 'eager',
    devices: [
      { id: 'r', tenant: 'acme', socket: 'r.sock', plugin: rng, grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } },
      // Two queue threads: each writes its own cells, a scrape sums them.
      { id: 'disk', tenant: 'globex', socket: 'disk.sock', plugin: blk, grants: { storage: 'memory:1M' }, limits: { callDeadlineMs: 10_000 }, queueThreads: 2 },
      { id: 'trap', socket: 'trap.sock', plugin: faulty.trap, limits: { callDeadlineMs: 10_000 } },
      // One queue thread, driven deep: the calls-per-batch test below.
      { id: 'deep', socket: 'deep.sock', plugin: blk, grants: { storage: 'memory:4M' }, limits: { callDeadlineMs: 10_000 } },
      { id: 'share', socket: 'share.sock', plugin: fsPlugin, grants: { sharedDir: join(dir, 'share') }, limits: { callDeadlineMs: 10_000 } },
    ],
  });
});

test.after.always(async () => {
  if (daemon && daemon.child.exitCode === null) daemon.child.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** GET a path of the endpoint (a Unix socket path, or a TCP URL). */
function get(where: { socketPath: string } | { url: string }, path = '/metrics'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = 'url' in where ? request(new URL(path, where.url)) : request({ socketPath: where.socketPath, path });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error(`GET ${path}: no answer in 15 s`)));
    req.end();
  });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The exposition's sample lines (a reader, for the test only: prom-client wrote them). */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of the one sample named `name` whose labels include `labels`. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hits.length !== 1) throw new Error(`${hits.length} samples of ${name}${JSON.stringify(labels)}`);
  return hits[0].value;
}

async function scrape(): Promise<Sample[]> {
  const r = await get({ socketPath: sock('metrics') });
  if (r.status !== 200) throw new Error(`scrape answered ${r.status}: ${r.body}`);
  return parse(r.body);
}

test.serial('the endpoint is a 0600 Unix socket serving the exposition at /metrics, with process fds and memory', async (t) => {
  t.regex(daemon.log(), new RegExp(`metrics on ${sock('metrics')}`));
  t.is(statSync(sock('metrics')).mode & 0o777, 0o600);
  const r = await get({ socketPath: sock('metrics') });
  t.is(r.status, 200);
  t.regex(r.type, /^text\/plain; version=0\.0\.4/);
  t.regex(r.body, /^# HELP vhost_wasm_device_requests_total /m);
  t.regex(r.body, /^# TYPE vhost_wasm_device_request_duration_seconds histogram$/m);
  const s = parse(r.body);
  const fds = value(s, 'process_open_fds');
  t.true(fds > 10 && fds < 10_000, `process_open_fds ${fds}`);
  t.true(value(s, 'process_resident_memory_bytes') > 20 << 20);
  for (const id of ['r', 'disk', 'trap']) {
    t.is(value(s, 'vhost_wasm_device_up', { device: id }), 1);
    t.is(value(s, 'vhost_wasm_device_worker_starts_total', { device: id }), 1);
  }
  t.is(value(s, 'vhost_wasm_device_requests_total', { device: 'r', tenant: 'acme' }), 0);
  t.is(value(s, 'vhost_wasm_device_requests_total', { device: 'trap', tenant: '' }), 0);
  t.true(value(s, 'vhost_wasm_device_plugin_memory_bytes', { device: 'disk' }) > 0, 'the blk plugin has linear memory');
  t.is((await get({ socketPath: sock('metrics') }, '/')).status, 404);
});

test.serial('requests, bytes and latencies of known I/O through real front-ends', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('r'), rngOpts);
  for (let i = 0; i < 5; i++) t.is((await fe.queues[0].submit([], 64)).len, 64);
  await fe.close();

  t.regex(daemon.log(), /device disk: blk runs in 2 queue threads/);
  const features = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH)) | (1n << BigInt(VIRTIO_BLK_F_MQ));
  const dfe = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64, 64], features });
  const data = new Uint8Array(4096).map((_, i) => i & 0xff);
  // Written through ring 0 (thread 0), read back through ring 1 (thread 1).
  await new BlkDevice(dfe.queues[0]).write(8, data);
  t.deepEqual(await new BlkDevice(dfe.queues[1]).read(8, 4096), data);
  await dfe.close();

  const s = await scrape();
  const r = { device: 'r', tenant: 'acme' };
  t.is(value(s, 'vhost_wasm_device_requests_total', r), 5);
  t.is(value(s, 'vhost_wasm_device_bytes_total', { ...r, direction: 'in' }), 5 * 64);
  t.is(value(s, 'vhost_wasm_device_bytes_total', { ...r, direction: 'out' }), 0);
  t.is(value(s, 'vhost_wasm_device_request_duration_seconds_count', r), 5);
  t.is(value(s, 'vhost_wasm_device_request_duration_seconds_bucket', { ...r, le: '+Inf' }), 5);
  t.true(value(s, 'vhost_wasm_device_request_duration_seconds_sum', r) > 0);
  t.is(value(s, 'vhost_wasm_device_requests_in_flight', r), 0);

  // A write (16-byte header + 4096 bytes out, 1 status byte in), then a read (16 out, 4096 + 1 in),
  // one on each queue thread.
  const d = { device: 'disk', tenant: 'globex' };
  t.is(value(s, 'vhost_wasm_device_requests_total', d), 2);
  t.is(value(s, 'vhost_wasm_device_bytes_total', { ...d, direction: 'out' }), 16 + 4096 + 16);
  t.is(value(s, 'vhost_wasm_device_bytes_total', { ...d, direction: 'in' }), 1 + 4096 + 1);
  // The 4 KiB written and read back, each copied once (each queue thread counts its own).
  t.is(value(s, 'vhost_wasm_device_memory_disk_copied_bytes_total', d), 2 * 4096);
  t.is(value(s, 'vhost_wasm_device_request_duration_seconds_count', d), 2);
  t.is(value(s, 'vhost_wasm_device_requests_in_flight', d), 0);
  t.is(value(s, 'vhost_wasm_device_io_in_flight', d), 0, 'the storage I/O in-flight gauge is exported');
  // Buckets are cumulative and end at the count.
  const buckets = s.filter((x) => x.name === 'vhost_wasm_device_request_duration_seconds_bucket' && x.labels.device === 'disk').map((x) => x.value);
  t.deepEqual([...buckets].sort((a, b) => a - b), buckets);
  t.is(buckets[buckets.length - 1], 2);
  // handle() ran at least once per request batch; its time is counted.
  t.true(value(s, 'vhost_wasm_device_plugin_call_duration_seconds_count', d) >= 2);
  t.true(value(s, 'vhost_wasm_device_plugin_call_duration_seconds_sum', d) > 0);
  // Nothing went to the other devices.
  t.is(value(s, 'vhost_wasm_device_requests_total', { device: 'trap' }), 0);
});

// The data path's promise (issue 10): one call into the plugin per batch of requests, nothing
// per request. The front-end submits waves of 64 4 KiB requests in one go (one kick each), so the
// worker finds them queued together: a host that called the plugin once per request (or popped
// one at a time) would show calls (or batches) near the request count, not near the wave count.
const WAVE = 64;
const WAVES = 24;
/**
 * Calls a blk device makes outside batches from its start to here: activate, and the config
 * reads and resets a connection may bring (a handful); far below one per request or per wave.
 */
const SETUP_CALLS = 8;

test.serial('blk at queue depth 64: one plugin call per batch, batches far fewer than requests; device-stats and the metrics agree', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('deep'), { memoryBytes: 16 << 20, queues: [256], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  const disk = new BlkDevice(fe.queues[0]);
  const block = (i: number) => new Uint8Array(4096).map((_, k) => (k * 3 + i * 11) & 0xff);
  for (let w = 0; w < WAVES; w++) {
    const base = (w % 8) * WAVE;
    // Even waves write 64 blocks, odd waves read them back (each one checked).
    if (w % 2 === 0) await Promise.all(Array.from({ length: WAVE }, (_, k) => disk.write((base + k) * 8, block(base + k))));
    else {
      const back = await Promise.all(Array.from({ length: WAVE }, (_, k) => disk.read((base - WAVE + k) * 8, 4096)));
      back.forEach((b, k) => t.deepEqual(b, block(base - WAVE + k)));
    }
  }
  const n = WAVE * WAVES;
  const stats = (await deviceStats(sock('control'), 'deep')).work;
  const s = await scrape();
  await fe.close();
  t.is(stats.requests, n);
  // One copy each way between guest memory and the disk's pages: every byte read or written
  // copied once, counted where the copies are made (host/storage/memory.ts).
  t.is(stats.memoryDiskCopiedBytes, n * 4096);
  const calls = stats.handleCalls + stats.otherCalls;
  t.log(`${n} requests in ${stats.batches} batches; ${stats.handleCalls} handle() and ${stats.otherCalls} other calls`);
  // Every batch is one handle() call; any other call is set-up, a few in all.
  t.true(stats.handleCalls <= stats.batches, `${stats.handleCalls} handle() calls for ${stats.batches} batches`);
  t.true(calls <= stats.batches + SETUP_CALLS, `${calls} calls into the plugin for ${stats.batches} batches`);
  // A wave is one batch when the worker wakes after its kick; a preempted worker may find one
  // split in two or three. One batch per request is far above this.
  t.true(stats.batches >= WAVES && stats.batches <= n / 8, `${stats.batches} batches for ${n} requests in ${WAVES} waves`);
  // The exposition says the same.
  const d = { device: 'deep', tenant: '' };
  t.is(value(s, 'vhost_wasm_device_requests_total', d), n);
  t.is(value(s, 'vhost_wasm_device_request_batches_total', d), stats.batches);
  t.is(value(s, 'vhost_wasm_device_plugin_calls_total', { ...d, call: 'handle' }), stats.handleCalls);
  t.is(value(s, 'vhost_wasm_device_plugin_calls_total', { ...d, call: 'other' }), stats.otherCalls);
  t.is(value(s, 'vhost_wasm_device_plugin_call_duration_seconds_count', d), calls);
  t.is(value(s, 'vhost_wasm_device_memory_disk_copied_bytes_total', d), n * 4096);
  t.regex(await get({ socketPath: sock('metrics') }).then((r) => r.body), /^# HELP vhost_wasm_device_plugin_calls_total Calls into the device's own code/m);
});

test.serial('fs with 32 FUSE requests in flight at a time: one plugin call per batch', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('share'), { memoryBytes: 16 << 20, queues: [64, 128], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0, 'INIT');
  const node = nodeOf(await c.lookup(1n, 'data'));
  const open = await c.open(node, O.RDONLY);
  t.is(open.error, 0, 'OPEN');
  const fh = fhOfOpen(open);
  const before = (await deviceStats(sock('control'), 'share')).work;
  const depth = 32;
  const waves = 16;
  for (let w = 0; w < waves; w++) {
    // Reads of the file's 4 KiB blocks (the host fills the guest's buffers from the file) and
    // GETATTRs, all queued before the kick.
    const replies = await Promise.all(Array.from({ length: depth }, (_, k) => (k % 4 === 3 ? c.getattr(node) : c.read(fh, ((w + k) % 16) * 4096, 4096))));
    replies.forEach((r, k) => {
      t.is(r.error, 0);
      if (k % 4 !== 3) t.deepEqual(new Uint8Array(r.body), SHARED_DATA.subarray(((w + k) % 16) * 4096, ((w + k) % 16 + 1) * 4096));
    });
  }
  const after = (await deviceStats(sock('control'), 'share')).work;
  const n = depth * waves;
  const d = { requests: after.requests - before.requests, batches: after.batches - before.batches, handle: after.handleCalls - before.handleCalls, other: after.otherCalls - before.otherCalls };
  t.log(`${n} FUSE requests in ${d.batches} batches; ${d.handle} handle() and ${d.other} other calls`);
  t.is(d.requests, n);
  t.is(after.memoryDiskCopiedBytes, 0, 'no memory disk');
  t.true(d.handle + d.other <= d.batches, `${d.handle + d.other} calls into the plugin for ${d.batches} batches`);
  t.true(d.batches >= waves && d.batches <= n / 4, `${d.batches} batches for ${n} requests in ${waves} waves`);
});

// Out-of-order completion, arranged: a SETLKW that must wait is held by the fs plugin while
// requests made available after it on the same ring complete; each of those overtook it.
test.serial('completions out of order: an fs SETLKW held while GETATTRs on its ring complete is counted, an in-order device counts none', async (t) => {
  const SETLK = 32;
  const SETLKW = 33;
  const fe = await VhostUserFrontend.connect(sock('share'), { memoryBytes: 16 << 20, queues: [64, 128], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0, 'INIT');
  const node = nodeOf(await c.lookup(1n, 'data'));
  const fhA = fhOfOpen(await c.open(node, O.RDWR));
  const fhB = fhOfOpen(await c.open(node, O.RDWR));
  const before = (await deviceStats(sock('control'), 'share')).work.completionsOutOfOrder;
  const s0 = await scrape();
  t.is(value(s0, 'vhost_wasm_device_completions_out_of_order_total', { device: 'share' }), before, 'the exposition and device-stats agree');
  t.is((await c.req(SETLK, 0n, lkIn(fhA, 1n, 0n, LK.END, LK.WRLCK, 100))).error, 0, 'owner 1 locks the file');
  let answered = false;
  const waiting = c.req(SETLKW, 0n, lkIn(fhB, 2n, 0n, LK.END, LK.WRLCK, 100)).then((r) => ((answered = true), r));
  const GETATTRS = 5;
  for (let i = 0; i < GETATTRS; i++) t.is((await c.getattr(node)).error, 0);
  t.false(answered, 'the SETLKW waits for the lock');
  // The unlock completes ahead of the SETLKW too; the SETLKW itself overtakes nothing.
  t.is((await c.req(SETLK, 0n, lkIn(fhA, 1n, 0n, LK.END, LK.UNLCK, 100))).error, 0, 'owner 1 unlocks');
  t.is((await waiting).error, 0, 'the held SETLKW is answered once the lock is free');
  const after = (await deviceStats(sock('control'), 'share')).work.completionsOutOfOrder;
  t.is(after - before, GETATTRS + 1, 'each GETATTR and the unlock overtook the held SETLKW');
  const s = await scrape();
  t.is(value(s, 'vhost_wasm_device_completions_out_of_order_total', { device: 'share', tenant: '' }), after);
  t.regex((await get({ socketPath: sock('metrics') })).body, /^# HELP vhost_wasm_device_completions_out_of_order_total Completions that overtook a request/m);
  // rng answers every request as it comes; the memory disk (64-deep waves above) completes each batch in the order it was popped.
  t.is(value(s, 'vhost_wasm_device_completions_out_of_order_total', { device: 'r' }), 0);
  t.is(value(s, 'vhost_wasm_device_completions_out_of_order_total', { device: 'deep' }), 0);
  t.is((await deviceStats(sock('control'), 'deep')).work.completionsOutOfOrder, 0);
});

test.serial('a plugin fault, the reset after it, and state transfers are counted', async (t) => {
  const fe = await VhostUserFrontend.connect(sock('trap'), rngOpts);
  t.teardown(() => fe.close());
  // The fixture traps in handle() on a request starting with "boom": the device fails, the
  // request is never answered, and the front-end is told (NEEDS_RESET).
  void fe.queues[0].submit([Buffer.from('boom')], 64).catch(() => {});
  // The fault is counted when the failure reaches the main thread: poll for it (bounded).
  let s = await scrape();
  for (let i = 0; i < 500 && value(s, 'vhost_wasm_device_faults_total', { device: 'trap', kind: 'device_failed' }) === 0; i++) {
    await sleep(20);
    s = await scrape();
  }
  t.is(value(s, 'vhost_wasm_device_faults_total', { device: 'trap', kind: 'device_failed' }), 1);
  t.is(value(s, 'vhost_wasm_device_requests_total', { device: 'trap' }), 1);
  t.is(value(s, 'vhost_wasm_device_faults_total', { device: 'trap', kind: 'ring_broken' }), 0);
  t.is(value(s, 'vhost_wasm_device_faults_total', { device: 'r', kind: 'device_failed' }), 0);
  await fe.conn.resetDevice();
  s = await scrape();
  t.is(value(s, 'vhost_wasm_device_resets_total', { device: 'trap' }), 1);
  t.is(value(s, 'vhost_wasm_device_requests_in_flight', { device: 'trap' }), 0, 'the reset dropped the unanswered request');

  // A save from the rng device, then a load of bytes that are not a state: one ok, one failed.
  const rfe = await VhostUserFrontend.connect(sock('r'), rngOpts);
  t.teardown(() => rfe.close());
  await rfe.stopQueue(0);
  const saved = await saveState(rfe.conn);
  t.true(saved.length > 0);
  await t.throwsAsync(loadState(rfe.conn, Buffer.from('not a device state')));
  s = await scrape();
  const r = { device: 'r' };
  t.is(value(s, 'vhost_wasm_device_state_transfers_total', { ...r, direction: 'save', result: 'ok' }), 1);
  t.is(value(s, 'vhost_wasm_device_state_transfers_total', { ...r, direction: 'load', result: 'failed' }), 1);
  t.is(value(s, 'vhost_wasm_device_state_transfers_total', { ...r, direction: 'load', result: 'ok' }), 0);
  t.is(value(s, 'vhost_wasm_device_state_transfer_duration_seconds_count', { ...r, direction: 'save' }), 1);
  t.is(value(s, 'vhost_wasm_device_state_transfers_running', { ...r, direction: 'load' }), 0);
});

test.serial("a live plugin upgrade counts the guest's requests only, not those the new instance is warmed up with", async (t) => {
  const features = (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << BigInt(VIRTIO_BLK_F_FLUSH)) | (1n << BigInt(VIRTIO_BLK_F_MQ));
  const dfe = await VhostUserFrontend.connect(sock('disk'), { memoryBytes: 16 << 20, queues: [64, 64], features });
  const data = new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);
  await new BlkDevice(dfe.queues[0]).write(16, data);
  const d = { device: 'disk', tenant: 'globex' };
  const s0 = await scrape();
  const before = value(s0, 'vhost_wasm_device_requests_total', d);
  const copiedBefore = value(s0, 'vhost_wasm_device_memory_disk_copied_bytes_total', d);
  // Both queue threads' new instances serve read requests on a scratch ring before the switch.
  const up = await ctl(['--control', sock('control'), 'upgrade', 'disk', '--plugin', blk]);
  t.is(up.code, 0, up.stderr);
  t.deepEqual(await new BlkDevice(dfe.queues[1]).read(16, 4096), data);
  await dfe.close();
  const s = await scrape();
  t.is(value(s, 'vhost_wasm_device_requests_total', d), before + 1, 'the one read after the upgrade');
  t.is(value(s, 'vhost_wasm_device_memory_disk_copied_bytes_total', d), copiedBefore + 4096, "the warm-up's reads copy into its scratch meter");
  t.is(value(s, 'vhost_wasm_device_requests_in_flight', d), 0);
});

test('--metrics on TCP: the address it got is logged and answers; the flag overrides the file', async (t) => {
  const config = join(dir, 'tcp.json');
  writeFileSync(config, JSON.stringify({ metrics: 'unix:/nonexistent/dir/metrics.sock', devices: [{ id: 'x', socket: 'x.sock', plugin: rng, grants: { entropy: true } }] }));
  const d = await startDaemon(['--config', config, '--metrics', '127.0.0.1:0']);
  t.teardown(() => d.stop());
  const line = await d.waitForLog(/metrics on http:\/\/127\.0\.0\.1:\d+\/metrics/);
  const url = /(http:\/\/\S+)/.exec(line)![1];
  const r = await get({ url }, '/metrics');
  t.is(r.status, 200);
  t.is(value(parse(r.body), 'vhost_wasm_device_up', { device: 'x' }), 1);
  t.is(await d.stop(), 0);
});

test('a malformed metrics address is refused at start with what to give, and nothing starts', async (t) => {
  const config = join(dir, 'plain.json');
  writeFileSync(config, JSON.stringify({ devices: [{ id: 'y', socket: 'y.sock', plugin: rng, grants: { entropy: true } }] }));
  for (const [bad, why] of [
    ['127.0.0.1', /--metrics: "127\.0\.0\.1" is not an address: give IP:PORT .* or unix:PATH/],
    ['localhost:9464', /--metrics: "localhost" is not an IP address/],
    ['127.0.0.1:99999', /--metrics: "127\.0\.0\.1:99999": port 99999 is above 65535/],
    ['unix:relative.sock', /--metrics: "unix:relative\.sock": the socket path must be absolute/],
  ] as const) {
    const d = spawnDaemon(['--config', config, '--metrics', bad]);
    t.is(await d.exited, 2, bad);
    t.regex(d.log(), why);
  }
  const inFile = join(dir, 'bad-field.json');
  writeFileSync(inFile, JSON.stringify({ metrics: '::1:9464', devices: [] }));
  const d = spawnDaemon(['--config', inFile]);
  t.is(await d.exited, 2);
  t.regex(d.log(), /config .*: metrics: "::1:9464" is not an address.*\[ERR_CONFIG\]/);
  t.false(existsSync(sock('y')), 'no device was started');
});

test('a metrics port that is taken stops the daemon with the reason (exit 1)', async (t) => {
  const config = join(dir, 'taken.json');
  writeFileSync(config, JSON.stringify({ devices: [{ id: 'z', socket: 'z.sock', plugin: rng, grants: { entropy: true } }] }));
  const first = await startDaemon(['--config', config, '--metrics', '127.0.0.1:0']);
  t.teardown(() => first.stop());
  const port = /127\.0\.0\.1:(\d+)/.exec(await first.waitForLog(/metrics on http:/))![1];
  const config2 = join(dir, 'taken2.json');
  writeFileSync(config2, JSON.stringify({ devices: [{ id: 'z2', socket: 'z2.sock', plugin: rng, grants: { entropy: true } }] }));
  const second = spawnDaemon(['--config', config2, '--metrics', `127.0.0.1:${port}`]);
  t.is(await second.exited, 1);
  t.regex(second.log(), new RegExp(`metrics endpoint 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
});
