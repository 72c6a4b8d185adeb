// Inflight tracking (INFLIGHT_SHMFD, GET/SET_INFLIGHT_FD) against the real host process: the
// area GET_INFLIGHT_FD hands out, requests marked while in flight and cleared when used, a host
// SIGKILLed with requests in flight whose successor resubmits exactly those (each completes
// once), an interrupted used-ring update that is finished rather than run twice, and areas
// that are refused (wrong version, size, desc_num, flags) or contradict the ring at start.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../host/native/index.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { ProtocolFeature, featureBit } from '../host/protocol/constants.ts';
import { INFLIGHT_VERSION, SplitInflightRegion, splitInflightAreaBytes } from '../host/virtqueue/inflight.ts';
import { NULL_DEVICE, eventually, startHost, type HostProcess } from './helpers/host-process.ts';

const QSIZE = 16;
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [QSIZE], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, inflight: true };
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

let dir: string;
test.before(() => {
  dir = mkdtempSync(join(tmpdir(), 'inflight-'));
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** A socket path of our own: it outlives the host processes we kill and restart on it. */
const socketPath = () => join(dir, `dev${n++}.sock`);

/** The host binary serving the null (echo) device; `hang`: batches with a request starting "hang" never finish. */
function host(sock: string, hang = false): Promise<HostProcess> {
  // A long call deadline: the watchdog must not end the hanging call before the test kills the host.
  return startHost(['--socket-path', sock, '--device-module', NULL_DEVICE, '--call-deadline', '600000'], {
    env: hang ? { VHOST_WASM_TEST_HANG_ON: 'hang' } : {},
  });
}

/** The host logs a line matching `re` (waits for it: log lines race the replies). */
async function logged(t: { regex: (s: string, re: RegExp) => void }, h: HostProcess, re: RegExp): Promise<void> {
  t.regex(await h.waitForLog(re), re);
}

/** The null device's largest ring: what GET_INFLIGHT_FD sizes each region for. */
const DEVICE_MAX_QUEUE = 1024;

function region(fe: VhostUserFrontend, q = 0): SplitInflightRegion {
  const a = fe.inflight!;
  const stride = a.size / a.numQueues;
  const bytes = a.bytes.subarray(q * stride, (q + 1) * stride);
  return new SplitInflightRegion(bytes, new DataView(bytes.buffer, bytes.byteOffset).getUint16(10, true), q);
}

/** The head in used-ring slot `slot`. */
function usedHead(fe: VhostUserFrontend, slot: number, q = 0): number {
  const ring = fe.queues[q].ring;
  return new DataView(fe.memory.view(ring.usedGpa + 4 + 8 * slot, 4).slice().buffer).getUint32(0, true);
}

function usedIdx(fe: VhostUserFrontend, q = 0): number {
  const ring = fe.queues[q].ring;
  return new DataView(fe.memory.view(ring.usedGpa + 2, 2).slice().buffer).getUint16(0, true);
}

test('GET_INFLIGHT_FD hands out a sealed memfd sized for the rings; the ring start initialises the region', async (t) => {
  const h = await host(socketPath());
  const fe = await VhostUserFrontend.connect(h.socketPath, opts);
  try {
    t.true(fe.conn.hasProtocol(ProtocolFeature.INFLIGHT_SHMFD));
    const a = fe.inflight!;
    // 16-byte header + 16 bytes per descriptor, each queue's region 64-byte aligned; sized for
    // the device's largest ring, whatever queue size was asked for (QEMU 10 asks for 128 and
    // runs rings of 1024).
    t.is(a.size, 16 + 16 * DEVICE_MAX_QUEUE + 48);
    t.is(a.size, splitInflightAreaBytes(1, DEVICE_MAX_QUEUE));
    await h.waitForLog(/inflight area: 16448 bytes for 1 split queue\(s\) of up to 1024 \(asked for 16\)/);
    const info = native.memoryFdInfo(a.fd);
    t.is(info.type, 'file');
    t.is(info.size, a.size);
    t.is(info.seals & 0x6, 0x6, 'sealed against shrinking and growing');
    const r = region(fe);
    t.is(r.version, INFLIGHT_VERSION);
    t.is(r.descNum, DEVICE_MAX_QUEUE);
    t.deepEqual(r.inflightHeads(), []);
    // A geometry the device does not have gets the spec's "no area" answer.
    t.deepEqual(await fe.conn.getInflightFd(4, QSIZE), { fd: null, size: 0, offset: 0 });
    t.regex(await h.waitForLog(/GET_INFLIGHT_FD/), /inflight area for 4 queue\(s\), but the device has 1; answered with inflight area of size 0, no fd/);
  } finally {
    await fe.close();
    await h.stop();
  }
});

test('completed requests are cleared: nothing stays marked, used_idx follows the used ring', async (t) => {
  const h = await host(socketPath());
  const fe = await VhostUserFrontend.connect(h.socketPath, opts);
  try {
    const q = fe.queues[0];
    const done = await Promise.all(['a', 'b', 'c'].map((s) => q.submit([enc(`req-${s}`)], 16)));
    t.deepEqual(done.map((c) => dec(c.data.subarray(0, c.len))), ['req-a', 'req-b', 'req-c']);
    const r = region(fe);
    t.deepEqual(r.inflightHeads(), []);
    t.is(r.usedIdx, 3);
    t.is(usedIdx(fe), 3);
    // Each pop took a counter; the last push heads the last-batch list.
    t.true(r.lastBatchHead < QSIZE);
  } finally {
    await fe.close();
    await h.stop();
  }
});

test('a host killed with requests in flight: its successor resubmits exactly those, each completes once', async (t) => {
  const sock = socketPath();
  const h1 = await host(sock, true);
  const fe = await VhostUserFrontend.connect(sock, opts);
  let h2: HostProcess | null = null;
  try {
    const q = fe.queues[0];
    const first = await q.submit([enc('before')], 16);
    t.is(dec(first.data.subarray(0, first.len)), 'before');
    // Both go out with one kick, so the host pops both into the batch that never finishes.
    const p1 = q.submit([enc('hang-1')], 16);
    const p2 = q.submit([enc('hang-2')], 16);
    const r = region(fe);
    t.true(await eventually(() => r.inflightHeads().length === 2, 10_000), 'both requests marked in flight');
    const marked = r.inflightHeads();
    t.true(r.counterOf(marked[0]) !== r.counterOf(marked[1]));
    t.is(r.usedIdx, 1);
    t.is(usedIdx(fe), 1);

    await h1.stop('SIGKILL');
    // Resubmission follows the counters (the order requests were popped), not head numbers:
    // swap them, and the used ring must show the later-popped request first.
    const [older, newer] = [...marked].sort((a, b) => r.counterOf(a) - r.counterOf(b));
    const a = fe.inflight!;
    const dv = new DataView(a.bytes.buffer, a.bytes.byteOffset, a.bytes.byteLength);
    const counterAt = (head: number) => 16 + 16 * head + 8;
    const [co, cn] = [dv.getBigUint64(counterAt(older), true), dv.getBigUint64(counterAt(newer), true)];
    dv.setBigUint64(counterAt(older), cn, true);
    dv.setBigUint64(counterAt(newer), co, true);
    h2 = await host(sock);
    await fe.reconnect(sock);
    const [c1, c2] = await Promise.all([p1, p2]);
    t.deepEqual([usedHead(fe, 1), usedHead(fe, 2)], [newer, older]);
    t.is(dec(c1.data.subarray(0, c1.len)), 'hang-1');
    t.is(dec(c2.data.subarray(0, c2.len)), 'hang-2');
    await logged(t, h2, /ring 0: resubmitting 2 in-flight request\(s\)/);
    await logged(t, h2, /continuing at avail index 3 \(used idx \+ in flight\), not the front-end's base 1/);
    t.deepEqual(r.inflightHeads(), []);
    // New requests go on after the resubmitted ones; the used ring moved once per request.
    const after = await q.submit([enc('after')], 16);
    t.is(dec(after.data.subarray(0, after.len)), 'after');
    t.is(usedIdx(fe), 4);
    t.is(r.usedIdx, 4);
    t.is(q.inFlight, 0);
  } finally {
    await fe.close();
    await h1.stop();
    await h2?.stop();
  }
});

test('a crash between publishing a used element and clearing its mark: the request is not run again', async (t) => {
  const sock = socketPath();
  const h1 = await host(sock);
  const fe = await VhostUserFrontend.connect(sock, opts);
  let h2: HostProcess | null = null;
  try {
    const q = fe.queues[0];
    await q.submit([enc('one')], 16);
    await q.submit([enc('two')], 16);
    await h1.stop('SIGKILL');
    // Put the region back to where a back-end dying right after the used idx store leaves it:
    // the last pushed head still marked, used_idx one behind the ring's.
    const r = region(fe);
    const head = r.lastBatchHead;
    const a = fe.inflight!;
    const dv = new DataView(a.bytes.buffer, a.bytes.byteOffset, a.bytes.byteLength);
    a.bytes[16 + 16 * head] = 1;
    dv.setUint16(14, 1, true);
    t.deepEqual(r.inflightHeads(), [head]);

    h2 = await host(sock);
    await fe.reconnect(sock);
    const three = await q.submit([enc('three')], 16);
    t.is(dec(three.data.subarray(0, three.len)), 'three');
    await logged(t, h2, /finished an interrupted used-ring update \(1 request\(s\) had completed\)/);
    t.notRegex(h2.log(), /resubmitting/);
    t.is(usedIdx(fe), 3, 'exactly one more completion: the interrupted one was not run twice');
    t.deepEqual(r.inflightHeads(), []);
    t.is(r.usedIdx, 3);
  } finally {
    await fe.close();
    await h1.stop();
    await h2?.stop();
  }
});

test('a region that contradicts the ring at start is not used: nothing is resubmitted, the ring runs from the avail ring', async (t) => {
  const sock = socketPath();
  const h1 = await host(sock, true);
  const fe = await VhostUserFrontend.connect(sock, opts);
  let h2: HostProcess | null = null;
  try {
    const q = fe.queues[0];
    const p = q.submit([enc('hang-x')], 16);
    const r = region(fe);
    t.true(await eventually(() => r.inflightHeads().length === 1, 10_000));
    await h1.stop('SIGKILL');
    // used_idx far behind the used ring: more completions than the ring has descriptors.
    new DataView(fe.inflight!.bytes.buffer, fe.inflight!.bytes.byteOffset).setUint16(14, 0xffff - 40, true);
    h2 = await host(sock);
    await fe.reconnect(sock);
    const c = await p; // taken again from the avail ring at the front-end's base, as without inflight tracking
    t.is(dec(c.data.subarray(0, c.len)), 'hang-x');
    await logged(t, h2, /ring 0: inflight area not used: queue 0: the used ring's idx 0 is 41 ahead of the inflight region's used_idx 65495, more than the ring's 16 descriptors; the ring starts without resubmitting anything/);
    t.notRegex(h2.log(), /resubmitting \d/);
    t.is(usedIdx(fe), 1);
  } finally {
    await fe.close();
    await h1.stop();
    await h2?.stop();
  }
});

/** A memfd holding a one-queue area for rings of QSIZE, version 1, after `mutate`. */
function area(mutate: (dv: DataView, bytes: Uint8Array) => void, fileSize = splitInflightAreaBytes(1, QSIZE)): number {
  const bytes = new Uint8Array(splitInflightAreaBytes(1, QSIZE));
  const dv = new DataView(bytes.buffer);
  dv.setUint16(8, INFLIGHT_VERSION, true);
  dv.setUint16(10, QSIZE, true);
  mutate(dv, bytes);
  const fd = native.memfdCreate('test-inflight', false);
  native.ftruncate(fd, fileSize);
  native.pwrite(fd, bytes.subarray(0, Math.min(fileSize, bytes.length)), 0);
  return fd;
}

/** SET_INFLIGHT_FD on a fresh connection (REPLY_ACK on); the failure's message, or null when accepted. */
async function setInflight(sock: string, fd: number, size: number, numQueues = 1, queueSize = QSIZE): Promise<string | null> {
  const conn = VhostUserConnection.connect(sock);
  try {
    await conn.getFeatures();
    const offered = await conn.getProtocolFeatures();
    await conn.setProtocolFeatures(offered & (featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.INFLIGHT_SHMFD)));
    await conn.setOwner();
    await conn.setInflightFd(fd, size, 0, numQueues, queueSize);
    return null;
  } catch (e) {
    return (e as Error).message;
  } finally {
    native.close(fd);
    conn.close();
    await conn.closed;
  }
}

test('corrupted or truncated areas are refused with the reason in the log', async (t) => {
  const h = await host(socketPath());
  const size = splitInflightAreaBytes(1, QSIZE);
  try {
    const cases: [string, number, number, number, RegExp][] = [
      ['wrong version', area((dv) => dv.setUint16(8, 7, true)), size, QSIZE, /inflight region version is 7, this back-end reads version 1/],
      ['desc_num below the queue size', area((dv) => dv.setUint16(10, 8, true)), size, QSIZE, /inflight region tracks 8 descriptors, fewer than the rings' 16/],
      ['desc_num larger than the regions hold', area((dv) => dv.setUint16(10, 64, true)), size, QSIZE, /tracks 64 descriptors, which need 1088 bytes, but the regions are 320 bytes apart/],
      ['an inflight flag that is neither 0 nor 1', area((_dv, b) => (b[16 + 16 * 3] = 2)), size, QSIZE, /inflight flag of descriptor 3 is 2, not 0 or 1/],
      ['last_batch_head out of range', area((dv) => dv.setUint16(12, 99, true)), size, QSIZE, /last_batch_head 99 is not below the ring size 16/],
      ['a next index out of range', area((dv) => dv.setUint16(16 + 16 * 5 + 6, 16, true)), size, QSIZE, /descriptor 5's next 16 is not below the ring size 16/],
      ['a size too small for the rings', area(() => {}), size - 64, QSIZE, /inflight area size 256 is too small: 1 split queue\(s\) of 16 need 320 bytes/],
      ['a file shorter than the size given', area(() => {}, 100), size, QSIZE, /inflight area: needs bytes \[0x0, 0x140\) of its fd .* only 0x64 bytes/],
      ['a queue size that is no ring size', area(() => {}), size, 12, /inflight area queue size 12 is not a power of two/],
    ];
    for (const [what, fd, sz, qsize, why] of cases) {
      const err = await setInflight(h.socketPath, fd, sz, 1, qsize);
      t.truthy(err, `${what}: refused`);
      t.regex(await h.waitForLog(new RegExp(`SET_INFLIGHT_FD \\(32\\) failed: .*${why.source}`)), why, what);
    }
    // The same area, intact, is taken; so is an all-zero one the front-end made itself (fresh,
    // for rings of the queue size it names).
    t.is(await setInflight(h.socketPath, area(() => {}), size), null);
    const zeros = native.memfdCreate('test-inflight-zeros', false);
    native.ftruncate(zeros, size);
    t.is(await setInflight(h.socketPath, zeros, size), null);
  } finally {
    await h.stop();
  }
});

test('a corrupted area after a crash is refused and the device starts empty: nothing resubmitted from it, the ring serves from the front-end base', async (t) => {
  // QEMU sends SET_INFLIGHT_FD without NEED_REPLY, so a refusal never stops its device start:
  // this front-end does the same (no REPLY_ACK), and the host must then serve the ring as if
  // it had no area, never from what it refused.
  const noAck = { ...opts, protocolFeatures: FRONTEND_PROTOCOL_FEATURES & ~featureBit(ProtocolFeature.REPLY_ACK) };
  const sock = socketPath();
  const h1 = await host(sock, true);
  const fe = await VhostUserFrontend.connect(sock, noAck);
  let h2: HostProcess | null = null;
  try {
    const q = fe.queues[0];
    const p1 = q.submit([enc('hang-1')], 16);
    const p2 = q.submit([enc('hang-2')], 16);
    const r = region(fe);
    t.true(await eventually(() => r.inflightHeads().length === 2, 10_000), 'both requests marked in flight');
    await h1.stop('SIGKILL');
    // The crash left a region the successor cannot trust: a flag that is neither 0 nor 1.
    const spare = [...Array(QSIZE).keys()].find((head) => !r.inflightHeads().includes(head))!;
    fe.inflight!.bytes[16 + 16 * spare] = 2;
    h2 = await host(sock);
    await fe.reconnect(sock);
    await logged(t, h2, new RegExp(`SET_INFLIGHT_FD \\(32\\) failed: .*inflight flag of descriptor ${spare} is 2, not 0 or 1`));
    // The ring restarts at the front-end's base (the used index, 0): the two requests are popped
    // from the avail ring like new ones, each answered once, and nothing came from the area.
    const [c1, c2] = await Promise.all([p1, p2]);
    t.is(dec(c1.data.subarray(0, c1.len)), 'hang-1');
    t.is(dec(c2.data.subarray(0, c2.len)), 'hang-2');
    const after = await q.submit([enc('after')], 16);
    t.is(dec(after.data.subarray(0, after.len)), 'after');
    t.is(usedIdx(fe), 3);
    t.notRegex(h2.log(), /resubmitting \d/);
    t.notRegex(h2.log(), /continuing at avail index/);
    t.is(q.inFlight, 0);
  } finally {
    await fe.close();
    await h1.stop();
    await h2?.stop();
  }
});

test('an area marking requests the driver never made available is not used', async (t) => {
  const sock = socketPath();
  const h1 = await host(sock);
  const fe = await VhostUserFrontend.connect(sock, opts);
  let h2: HostProcess | null = null;
  try {
    const q = fe.queues[0];
    await q.submit([enc('one')], 16);
    await h1.stop('SIGKILL');
    // Well-formed, but three heads marked while every available request was used.
    for (const head of [2, 7, 9]) fe.inflight!.bytes[16 + 16 * head] = 1;
    h2 = await host(sock);
    await fe.reconnect(sock);
    await logged(t, h2, /ring 0: inflight area not used: queue 0: the inflight region marks 3 request\(s\) in flight, but the driver has only 0 available and not used \(avail idx 1, used idx 1\)/);
    const two = await q.submit([enc('two')], 16);
    t.is(dec(two.data.subarray(0, two.len)), 'two');
    t.notRegex(h2.log(), /resubmitting \d/);
    t.is(usedIdx(fe), 2);
  } finally {
    await fe.close();
    await h1.stop();
    await h2?.stop();
  }
});

test('a front-end that shrinks its own inflight area under the host loses the connection, not the host', async (t) => {
  const sock = socketPath();
  const h1 = await host(sock);
  const fe = await VhostUserFrontend.connect(sock, opts);
  let h2: HostProcess | null = null;
  let own: number | null = null;
  try {
    await fe.queues[0].submit([enc('one')], 16);
    await h1.stop('SIGKILL');
    // The area moves to a memfd of the front-end's own, not sealed, which it then truncates.
    const a = fe.inflight!;
    own = native.memfdCreate('test-own-inflight', false);
    native.ftruncate(own, a.size);
    native.pwrite(own, a.bytes, 0);
    h2 = await host(sock);
    const sealedFd = a.fd;
    a.fd = own;
    try {
      await fe.reconnect(sock);
    } finally {
      a.fd = sealedFd;
    }
    native.ftruncate(own, 0);
    const lost = fe.queues[0].submit([enc('two')], 16);
    lost.catch(() => {}); // never completes: the host ends the connection instead
    await logged(t, h2, /front-end shrank the inflight area \(16448 bytes\) behind our back: the file behind it no longer covers it \(\d+ page fault\(s\) contained\); halting every ring/);
    await h2.waitForLog(/connection closed: front-end shrank the inflight area/);
    // The host still serves: a new front-end gets its device.
    const fe2 = await VhostUserFrontend.connect(sock, opts);
    const c = await fe2.queues[0].submit([enc('three')], 16);
    t.is(dec(c.data.subarray(0, c.len)), 'three');
    await fe2.close();
  } finally {
    await fe.close();
    if (own !== null) native.close(own);
    await h1.stop();
    await h2?.stop();
  }
});
