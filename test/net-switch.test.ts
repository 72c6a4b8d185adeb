// The host's network path (--network) through a real host and real front-ends over Unix
// sockets, with a TypeScript net device (test/devices/net-test-device.ts) in place of the C
// plugin: devices granted the same network exchange frames (bytes intact, the sender's port
// named), another network hears none of it; the device's own rules refuse short and long
// frames; a flood towards a device that takes nothing is bounded (queued frames never pass
// the inbox bound, every frame is counted somewhere); a device that holds its rx buffers for
// ever resets cleanly and then exchanges frames again; a send, frame-read or wake-after the host must refuse fails that
// device alone, naming the rule; wake-after comes back as a timer event.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { Host, type HostDevice } from '../host/server/index.ts';
import { setLogSink } from '../host/log/logger.ts';
import { Rule } from '../host/device/answer-check.ts';
import { INBOX_BYTES, INBOX_FRAMES, type NetStats } from '../host/net/link.ts';
import { hostSwitch } from '../host/net/switch.ts';
import { TokenBucket } from '../host/limits/token-bucket.ts';
import { parseNetworkRate } from '../host/cli/args.ts';
import { parseDaemonConfig } from '../host/daemon/config.ts';
import { command, frame, HEADER, RX, STATUS_REFUSED, STATUS_SENT, TX } from './devices/net-test-device.ts';

const MTU = 1500;
let dir: string;
let host: Host;
const lines: string[] = [];
/** Device b waits inside handle() while gate[0] is 1 ("block"), with gate[1] set meanwhile. */
const gate = new Int32Array(new SharedArrayBuffer(8));
/** The same for device e (seg2). */
const gateE = new Int32Array(new SharedArrayBuffer(8));

const opts: FrontendOptions = { memoryBytes: 16 << 20, queues: [256, 256], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: false };

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'net-switch-'));
  const url = new URL('./devices/net-test-device.ts', import.meta.url).href;
  const dev = (label: string, networks: string[], options: Record<string, unknown> = {}) => ({
    label,
    listen: { path: join(dir, `${label}.sock`) },
    source: { kind: 'module' as const, url, options },
    networks,
    // b waits in handle() for as long as the test holds its gate.
    callDeadlineMs: 60_000,
  });
  // Ports are numbered in the order devices join: a 1, b 2, c 3 on seg0; d 1 on seg1; e 1, f 2 on seg2.
  host = await Host.start([
    dev('a', ['seg0']),
    dev('b', ['seg0'], { gate: gate.buffer }),
    dev('c', ['seg0']),
    dev('d', ['seg1']),
    dev('e', ['seg2'], { gate: gateE.buffer }),
    dev('f', ['seg2']),
    // g may send 5 frames a second (--network-rate 5), h hears it.
    { ...dev('g', ['segR']), networkRate: TokenBucket.create(parseNetworkRate('5')) },
    dev('h', ['segR']),
  ]);
  setLogSink((l) => lines.push(l));
});

test.after.always(async () => {
  setLogSink(null);
  await host?.close();
  rmSync(dir, { recursive: true, force: true });
});

const device = (label: string): HostDevice => host.devices.find((d) => d.config.label === label)!;
const stats = (label: string): NetStats => device(label).slot.netStats()!;

async function until(what: string, ok: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}:\n${lines.slice(-20).join('')}`);
    await sleep(5);
  }
}

async function connect(label: string): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(join(dir, `${label}.sock`), opts);
}

/** Posts `n` rx buffers and waits until the device holds them all. */
async function postRx(fe: VhostUserFrontend, n: number, size = 2048): Promise<Promise<{ from: number; bytes: Uint8Array; raw: Uint8Array }>[]> {
  const out = Array.from({ length: n }, () =>
    fe.queues[RX].submit([], size).then((c) => ({ from: new DataView(c.data.buffer, c.data.byteOffset).getUint32(0, true), bytes: c.data.slice(HEADER, c.len), raw: c.data.slice(0, c.len) })),
  );
  // Buffers still held when the front-end closes are failed by its driver: expected, not a test failure.
  for (const p of out) p.catch(() => {});
  await until('the rx buffers to be held', () => fe.queues[RX].ring.deviceIdle());
  return out;
}

async function send(fe: VhostUserFrontend, bytes: Uint8Array): Promise<number> {
  const c = await fe.queues[TX].submit([bytes], 1);
  return c.data[0];
}

test.serial('two devices on one network exchange frames, bytes intact and the sender named; another network hears nothing', async (t) => {
  const [a, b, c, d] = await Promise.all(['a', 'b', 'c', 'd'].map(connect));
  try {
    const bRx = await postRx(b, 2);
    const cRx = await postRx(c, 2);
    await postRx(d, 2);
    const aRx = await postRx(a, 1);
    const payload = new Uint8Array(1400).map((_, i) => (i * 7) & 0xff);
    const flood = frame('broadcast', payload);
    t.is(await send(a, flood), STATUS_SENT);
    const [gotB, gotC] = await Promise.all([bRx[0], cRx[0]]);
    t.deepEqual(gotB.bytes, flood);
    t.deepEqual(gotC.bytes, flood);
    t.is(gotB.from, 1, 'the frame names a, port 1 of seg0');
    // b answers a alone (its port, as a plugin would have learned it).
    const reply = frame(gotB.from, 'pong');
    t.is(await send(b, reply), STATUS_SENT);
    const gotA = await aRx[0];
    t.deepEqual(gotA.bytes, reply);
    t.is(gotA.from, 2);
    await until('the counters', () => stats('a').txFrames === 1 && stats('b').txFrames === 1 && stats('c').rxFrames === 1);
    t.is(stats('c').rxFrames, 1, 'c did not get the unicast to a');
    t.is(stats('d').rxFrames + stats('d').rxUnread + stats('d').rxQueueDrops, 0, 'seg1 heard nothing of seg0');
    t.is(stats('a').rxBytes, reply.length);
  } finally {
    await Promise.all([a, b, c, d].map((f) => f.close()));
  }
});

test.serial("the device's own rules: a frame shorter than an Ethernet header or longer than the MTU is refused, nothing sent", async (t) => {
  const a = await connect('a');
  try {
    const before = stats('a').txFrames;
    t.is(await send(a, new Uint8Array(10)), STATUS_REFUSED);
    t.is(await send(a, frame('broadcast', new Uint8Array(MTU + 1))), STATUS_REFUSED);
    t.is(await send(a, frame('broadcast', new Uint8Array(MTU))), STATUS_SENT, 'MTU + 14 bytes is the largest');
    t.is(stats('a').txFrames, before + 1);
  } finally {
    await a.close();
  }
});

test.serial('a flood towards a device that takes nothing is bounded: never more queued than the inbox holds, every frame counted', async (t) => {
  const [a, b] = await Promise.all([connect('a'), connect('b')]);
  try {
    const a0 = stats('a');
    const b0 = stats('b');
    // b's worker waits inside handle() until the gate opens: it takes nothing off its inbox.
    Atomics.store(gate, 0, 1);
    const blocked = send(b, command('block'));
    await until('b to be blocked', () => Atomics.load(gate, 1) === 1);
    const N = 1500;
    const statuses = await Promise.all(Array.from({ length: N }, (_, i) => send(a, frame(2, new Uint8Array(1000).fill(i & 0xff)))));
    t.deepEqual(new Set(statuses), new Set([STATUS_SENT]), 'the guest never waits on the switch');
    // Everything a sent is queued for b, or dropped at a bound (b's inbox, or a's outbox).
    const accounted = () => {
      const s = stats('b');
      return s.rxQueuedFrames + (s.rxQueueDrops - b0.rxQueueDrops) + (stats('a').txDrops - a0.txDrops);
    };
    await until('the switch to forward everything', () => accounted() === N);
    const s = stats('b');
    t.true(s.rxQueuedFrames <= INBOX_FRAMES && s.rxQueuedBytes <= INBOX_BYTES, `queued ${s.rxQueuedFrames} frames, ${s.rxQueuedBytes} bytes`);
    t.true(s.rxQueueDrops > b0.rxQueueDrops, 'frames past the bound were dropped and counted');
    Atomics.store(gate, 0, 0);
    t.is(await blocked, STATUS_SENT);
    await until('b to empty its inbox', () => stats('b').rxQueuedFrames === 0);
    // Every frame a sent to b is accounted for: given to b (it holds no rx buffer: unread) or
    // dropped. Frames b's worker has taken off the inbox are counted once its call returns, so
    // the sum is waited for (until() fails the test if it never gets there), then checked exactly.
    const total = () => {
      const e = stats('b');
      const got = e.rxFrames - b0.rxFrames + (e.rxUnread - b0.rxUnread) + (e.rxQueueDrops - b0.rxQueueDrops) + (e.rxNotRunning - b0.rxNotRunning);
      return got + (stats('a').txDrops - a0.txDrops);
    };
    await until(`all ${N} frames to be accounted for`, () => total() >= N);
    t.is(total(), N);
  } finally {
    Atomics.store(gate, 0, 0);
    await Promise.all([a.close(), b.close()]);
  }
});

test.serial("a small frame sent in one batch with big ones keeps only its own bytes alive at the receiver, not the sender's whole batch buffer", async (t) => {
  // The inbox bound counts frame bytes; what a queued frame really holds is the shared buffer
  // its bytes are in. A sender that puts one small frame for a device among 1.5 KB frames for
  // nobody would otherwise pin its whole batch per queued frame (512 frames x ~1.5 MiB).
  const [e, f] = await Promise.all([connect('e'), connect('f')]);
  try {
    t.is(await send(f, command('buffers')), STATUS_SENT);
    const rx = await postRx(f, 1);
    Atomics.store(gateE, 0, 1);
    const blocked = send(e, command('block'));
    await until('e to be blocked', () => Atomics.load(gateE, 1) === 1);
    // One batch: 200 full frames to a port nobody has, then one small frame to f (port 2).
    const big = Array.from({ length: 200 }, () => send(e, frame(99, new Uint8Array(MTU))));
    const small = frame(2, 'small');
    const sent = send(e, small);
    Atomics.store(gateE, 0, 0);
    t.is(await blocked, STATUS_SENT);
    t.deepEqual(new Set(await Promise.all([...big, sent])), new Set([STATUS_SENT]));
    const got = await rx[0];
    t.deepEqual(got.bytes.subarray(0, small.length), small);
    const kept = new DataView(got.raw.buffer, got.raw.byteOffset).getUint32(HEADER + small.length, true);
    t.true(kept <= 2 * small.length, `the frame's ${small.length} bytes keep a ${kept}-byte buffer alive`);
  } finally {
    Atomics.store(gateE, 0, 0);
    await Promise.all([e.close(), f.close()]);
  }
});

test.serial('a device that holds its rx buffers for ever is reset cleanly when its front-end goes, and the next one exchanges frames', async (t) => {
  const c1 = await connect('c');
  const a = await connect('a');
  try {
    const held = await postRx(c1, 4);
    t.is(await send(c1, command('deaf')), STATUS_SENT);
    const unread = stats('c').rxUnread;
    t.is(await send(a, frame(3, 'into the void')), STATUS_SENT);
    await until('the frame to reach c unread', () => stats('c').rxUnread === unread + 1);
    let settled = false;
    void Promise.allSettled(held).then(() => (settled = true));
    await sleep(0);
    t.false(settled, 'the held rx buffers were never completed');
    await c1.close();
    const c2 = await connect('c');
    try {
      const rx = await postRx(c2, 1);
      const f = frame(3, 'after the reset');
      t.is(await send(a, f), STATUS_SENT);
      t.deepEqual((await rx[0]).bytes, f);
    } finally {
      await c2.close();
    }
  } finally {
    await a.close();
  }
});

for (const [cmd, rule] of [
  ['bad-long', Rule.sendLength],
  ['bad-range', Rule.sendRange],
  ['bad-net', Rule.sendNetwork],
  ['bad-read', Rule.frameRead],
  ['bad-timers', Rule.timers],
] as const) {
  test.serial(`an action the host refuses (${cmd}) fails that device alone, naming the rule; the others keep exchanging frames`, async (t) => {
    lines.length = 0;
    const [a, b, c] = await Promise.all([connect('a'), connect('b'), connect('c')]);
    try {
      const cRx = await postRx(c, 1);
      void a.queues[TX].submit([command(cmd)], 1).catch(() => {});
      await until('a to fail', () => lines.some((l) => l.includes('device needs a reset') && l.includes(rule)));
      t.true(lines.some((l) => /session a: device needs a reset/.test(l)));
      const f = frame(3, 'still flowing');
      t.is(await send(b, f), STATUS_SENT);
      t.deepEqual((await cRx[0]).bytes, f);
    } finally {
      await Promise.all([a, b, c].map((f) => f.close()));
    }
  });
}

test.serial('wake-after comes back as a timer event with its token', async (t) => {
  const d = await connect('d');
  try {
    const rx = await postRx(d, 1);
    t.is(await send(d, command('timer 5')), STATUS_SENT);
    t.is(new TextDecoder().decode((await rx[0]).raw), 'TIMER 5');
  } finally {
    await d.close();
  }
});

test.serial('a device whose later network cannot be joined (a TAP interface that cannot be opened) leaves no port behind on the networks before it', async (t) => {
  const url = new URL('./devices/net-test-device.ts', import.meta.url).href;
  // lo is no TAP interface: TUNSETIFF refuses it.
  const bad = { label: 'g', listen: { path: join(dir, 'g.sock') }, source: { kind: 'module' as const, url }, networks: ['segG', 'tap:lo'] };
  for (let i = 0; i < 3; i++) await t.throwsAsync(Host.start([bad]), { message: /tap:lo|TAP interface lo/ });
  t.is(hostSwitch().segment('segG').ports.size, 0, 'no ghost ports on segG');
});

test.serial('--network-rate: a guest that sends faster than its rate has the excess dropped at the switch and counted; every tx request still completes', async (t) => {
  const [g, h] = await Promise.all(['g', 'h'].map(connect));
  try {
    await postRx(h, 64);
    const before = stats('g').txRateDrops;
    const heard = () => {
      const s = stats('h');
      return s.rxFrames + s.rxUnread + s.rxQueueDrops + s.rxNotRunning;
    };
    const heard0 = heard();
    const start = Date.now();
    const sent = 100;
    for (let i = 0; i < sent; i++) t.is(await send(g, frame('broadcast', new Uint8Array(100).fill(i))), STATUS_SENT, 'the guest\'s tx request completes');
    const seconds = (Date.now() - start) / 1000;
    const dropped = () => stats('g').txRateDrops - before;
    await until('every frame forwarded or dropped', () => heard() - heard0 + dropped() === sent);
    // 5 a second with a burst of 1: what passed is bounded by the time the sends took.
    t.true(heard() - heard0 <= 2 + Math.ceil(5 * (seconds + 1)), `${heard() - heard0} frames passed in ${seconds} s`);
    t.true(dropped() > 0, 'the excess was dropped and counted');
  } finally {
    await Promise.all([g.close(), h.close()]);
  }
});

test('--network-rate is checked where it enters: a bad value names the option (command line) or the field (config)', (t) => {
  t.deepEqual(parseNetworkRate('1000:10M'), { iops: 1000, iopsBurst: 100, bytesPerSecond: 10 << 20, bytesBurst: 1 << 20 });
  t.throws(() => parseNetworkRate('fast'), { message: /--network-rate/ });
  t.throws(() => parseNetworkRate('1:2:3'), { message: /--network-rate: "1:2:3" is not FRAMES or FRAMES:BYTES/ });
  const cfg = (limits: object, grants: object = { network: ['seg0'] }) => () =>
    parseDaemonConfig(JSON.stringify({ devices: [{ id: 'n', socket: 'n.sock', plugin: 'net.wasm', grants, limits }] }), '/d.json');
  t.deepEqual(cfg({ networkRate: '10' })().devices[0].limits.networkRate, { iops: 10, iopsBurst: 1, bytesPerSecond: 0, bytesBurst: 0 });
  t.throws(cfg({ networkRate: 'x' }), { message: /devices\[0\]\.limits\.networkRate: / });
  t.throws(cfg({ networkRate: '10' }, {}), { message: /devices\[0\]\.limits\.networkRate: .*give grants.network/ });
});
