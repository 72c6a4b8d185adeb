// A hostile front-end against a real host process serving two devices: the attack costs the
// attacker its own connection at most, the host process survives, and the other device (the
// bystander) keeps serving. Covers memory fds that do not back the region they claim (refused
// at message time), memory shrunk after it was mapped (SIGBUS contained, connection dropped),
// refused back-end request and kick fds (closed, never kept), NEED_REPLY without REPLY_ACK,
// and requests that always have a reply but are not supported (a failure reply, not a hang-up).
import test from 'ava';
import { mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../host/native/index.ts';
import { frame } from '../host/protocol/codec.ts';
import { FLAG_NEED_REPLY, FLAG_REPLY, ProtocolFeature, VERSION, featureBit } from '../host/protocol/constants.ts';
import { Req } from '../host/protocol/requests.ts';
import type { RawMessage } from '../host/protocol/messages.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { startHost, eventually, NULL_DEVICE, REPO, type HostProcess } from './helpers/host-process.ts';
import { connectRaw, type RawFrontend } from './helpers/raw-frontend.ts';

const opts: FrontendOptions = { memoryBytes: 1 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1) };

let host: HostProcess;
let dir: string;
let bystanderPath: string;
let baseFds: number;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'frontend-faults-'));
  bystanderPath = join(dir, 'bystander.sock');
  const devices = [
    { label: 'victim', socket: '{socket}', module: NULL_DEVICE, options: { mode: 'echo' } },
    { label: 'bystander', socket: bystanderPath, module: NULL_DEVICE, options: { mode: 'echo' } },
  ];
  host = await startHost([JSON.stringify(devices)], { entry: join(REPO, 'test', 'fixtures', 'module-devices-host.ts') });
  baseFds = host.fdCount();
});

test.after.always(async () => {
  await host?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The other device of the process answers a request (echo) end to end. */
async function bystanderServes(t: { is: (a: unknown, b: unknown, m?: string) => void }): Promise<void> {
  const fe = await VhostUserFrontend.connect(bystanderPath, opts);
  try {
    const r = await fe.queues[0].submit([Buffer.from('still here')], 32);
    t.is(Buffer.from(r.data.subarray(0, r.len)).toString(), 'still here', 'the bystander device answers');
  } finally {
    await fe.close();
  }
}

/** The victim's device serves again on a new connection (it was reset, not lost). */
async function victimServesAgain(t: { is: (a: unknown, b: unknown, m?: string) => void }): Promise<void> {
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  try {
    const r = await fe.queues[0].submit([Buffer.from('again')], 16);
    t.is(Buffer.from(r.data.subarray(0, r.len)).toString(), 'again', 'the victim device serves a new connection');
  } finally {
    await fe.close();
  }
}

async function backToIdle(t: { true: (v: boolean, m?: string) => void }): Promise<void> {
  t.true(await eventually(() => host.fdCount() === baseFds), `host fds ${host.fdCount()} != ${baseFds} at idle`);
  t.true(await eventually(() => host.memfdMappings() === 0), 'host still maps guest memory');
}

/** Log lines written since `mark` (host.log().length at some earlier point). */
function logSince(mark: number): string {
  return host.log().slice(mark);
}

async function waitForLogSince(mark: number, re: RegExp): Promise<string> {
  const ok = await eventually(() => re.test(logSince(mark)), 15_000);
  if (!ok) throw new Error(`host never logged ${re}; since the mark:\n${logSince(mark)}`);
  return logSince(mark).split('\n').find((l) => re.test(l))!;
}

const connect = (path = host.socketPath): RawFrontend => connectRaw(path);

const u64Of = (m: RawMessage | null): bigint => {
  if (!m) throw new Error('no reply');
  return new DataView(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength).getBigUint64(0, true);
};

/** GET_FEATURES, protocol features (REPLY_ACK unless `replyAck` is false, LOG_SHMFD, BACKEND_REQ), SET_OWNER, SET_FEATURES. */
async function handshake(c: RawFrontend, replyAck = true): Promise<void> {
  const features = u64Of(await c.request({ code: Req.GET_FEATURES }));
  await c.request({ code: Req.GET_PROTOCOL_FEATURES });
  const pf =
    (replyAck ? featureBit(ProtocolFeature.REPLY_ACK) : 0n) |
    featureBit(ProtocolFeature.LOG_SHMFD) |
    featureBit(ProtocolFeature.BACKEND_REQ) |
    featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS);
  await c.request({ code: Req.SET_PROTOCOL_FEATURES, features: pf }, replyAck);
  await c.request({ code: Req.SET_OWNER }, replyAck);
  await c.request({ code: Req.SET_FEATURES, features }, replyAck);
}

function memfd(size: number): number {
  const fd = native.memfdCreate('frontend-faults-test', false);
  native.ftruncate(fd, size);
  return fd;
}

const MiB = 1 << 20;
const region = (fd: number, size: bigint, mmapOffset = 0n) => ({ guestPhysAddr: 0n, memorySize: size, userspaceAddr: 0x10000000n, mmapOffset, fd });

test.serial('memory regions their fd does not cover are refused at message time, naming region and sizes', async (t) => {
  const mark = host.log().length;
  const c = connect();
  await handshake(c);
  const cases: { name: string; fd: () => number; size: bigint; offset?: bigint; expect: RegExp }[] = [
    { name: 'region larger than its memfd', fd: () => memfd(64 * 1024), size: BigInt(MiB), expect: /memory region 0 \(GPA 0x0\): needs bytes \[0x0, 0x100000\).*only 0x10000 bytes/ },
    { name: 'mmap offset past the end of the memfd', fd: () => memfd(MiB), size: 4096n, offset: BigInt(2 * MiB), expect: /memory region 0 \(GPA 0x0\): needs bytes \[0x200000, 0x201000\).*only 0x100000 bytes/ },
    { name: '/dev/zero with an offset', fd: () => openSync('/dev/zero', 'r+'), size: BigInt(MiB), offset: 4096n, expect: /memory region 0 \(GPA 0x0\): its fd is a character device/ },
    { name: 'a directory', fd: () => openSync(dir, 'r'), size: 4096n, expect: /memory region 0 \(GPA 0x0\): its fd is a directory/ },
  ];
  for (const k of cases) {
    const fd = k.fd();
    const reply = await c.request({ code: Req.SET_MEM_TABLE, regions: [region(fd, k.size, k.offset)] }, true);
    native.close(fd);
    t.not(u64Of(reply), 0n, `${k.name}: SET_MEM_TABLE must be refused`);
    t.regex(await waitForLogSince(mark, k.expect), /SET_MEM_TABLE \(5\) failed/, k.name);
  }
  // The same through ADD_MEM_REG.
  const small = memfd(64 * 1024);
  const add = await c.request({ code: Req.ADD_MEM_REG, region: region(small, BigInt(MiB)) }, true);
  native.close(small);
  t.not(u64Of(add), 0n, 'ADD_MEM_REG must be refused');
  await waitForLogSince(mark, /ADD_MEM_REG \(37\) failed: added memory region \(GPA 0x0\): needs bytes \[0x0, 0x100000\).*only 0x10000 bytes/);
  // The connection is still usable: a correct table is taken.
  const good = memfd(MiB);
  t.is(u64Of(await c.request({ code: Req.SET_MEM_TABLE, regions: [region(good, BigInt(MiB))] }, true)), 0n);
  native.close(good);
  await waitForLogSince(mark, /memory region 0 \(GPA 0x0\): not sealed against shrinking/);
  c.ch.close();
  await bystanderServes(t);
  await backToIdle(t);
});

test.serial('SET_LOG_BASE with a 1 MiB log over a 0-byte memfd is refused with a failure reply', async (t) => {
  const mark = host.log().length;
  const c = connect();
  await handshake(c);
  const empty = memfd(0);
  const reply = await c.request({ code: Req.SET_LOG_BASE, log: { mmapSize: BigInt(MiB), mmapOffset: 0n }, fd: empty }, false, true);
  native.close(empty);
  t.not(u64Of(reply), 0n);
  await waitForLogSince(mark, /SET_LOG_BASE failed: dirty log area: needs bytes \[0x0, 0x100000\).*only 0x0 bytes/);
  t.truthy(await c.request({ code: Req.GET_FEATURES }), 'the connection still answers');
  c.ch.close();
  await bystanderServes(t);
  await backToIdle(t);
});

test.serial('guest memory shrunk after SET_MEM_TABLE: the fault is contained, that connection is dropped, the host and the bystander go on', async (t) => {
  const mark = host.log().length;
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  const closed = fe.conn.closed;
  try {
    t.is((await fe.queues[0].submit([Buffer.from('before')], 16)).len, 6);
    // The front-end takes its memory away under the mapping (unsealed memfd), then kicks: the
    // worker's next look at the avail ring touches pages past the file's end.
    native.ftruncate(fe.memory.regions[0].fd, 0);
    native.eventfdWrite(fe.queues[0].kickFd);
    const line = await waitForLogSince(mark, /front-end shrank memory region 0 \(GPA 0x0, size 0x100000\) behind our back/);
    t.regex(line, /page fault\(s\) contained/);
    await closed;
    t.true(fe.conn.isClosed, 'the host hung up on this front-end');
    await waitForLogSince(mark, /session victim.*connection closed: front-end shrank memory region 0/);
  } finally {
    await fe.close();
  }
  t.is(host.child.exitCode, null, 'the host process is alive');
  t.is(host.child.signalCode, null, 'the host process took no fatal signal');
  await bystanderServes(t);
  await victimServesAgain(t);
  await backToIdle(t);
});

test.serial('the dirty log shrunk under a running ring: contained, that connection is dropped', async (t) => {
  const mark = host.log().length;
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  const closed = fe.conn.closed;
  try {
    const log = await fe.startDirtyLog();
    t.is((await fe.queues[0].submit([Buffer.from('logged')], 16)).len, 6);
    native.ftruncate(log.fd, 0);
    // Writing the used ring marks the log: the first mark past the shrunk file faults.
    void fe.queues[0].submit([Buffer.from('after')], 16).catch(() => {});
    await waitForLogSince(mark, /front-end shrank the dirty log area \(\d+ bytes\) behind our back/);
    await closed;
    t.true(fe.conn.isClosed, 'the host hung up on this front-end');
  } finally {
    await fe.close();
  }
  t.is(host.child.exitCode, null, 'the host process is alive');
  await bystanderServes(t);
  await victimServesAgain(t);
  await backToIdle(t);
});

test.serial('SET_BACKEND_REQ_FD: every refused fd is closed (100 messages)', async (t) => {
  const mark = host.log().length;
  const c = connect();
  await handshake(c);
  const file = join(dir, 'plain-file');
  writeFileSync(file, 'x');
  mkdirSync(join(dir, 'a-dir'), { recursive: true });
  const kinds: [string, () => number][] = [
    ['memfd', () => memfd(4096)],
    ['regular file', () => openSync(file, 'r')],
    ['directory', () => openSync(join(dir, 'a-dir'), 'r')],
    ['/dev/null', () => openSync('/dev/null', 'r')],
    [
      'pipe',
      () => {
        const [r, w] = native.pipe2();
        native.close(w);
        return r;
      },
    ],
  ];
  for (let i = 0; i < 100; i++) {
    const [name, open] = kinds[i % kinds.length];
    const fd = open();
    const reply = await c.request({ code: Req.SET_BACKEND_REQ_FD, fd }, true);
    native.close(fd);
    t.not(u64Of(reply), 0n, `${name} must be refused`);
  }
  await waitForLogSince(mark, /SET_BACKEND_REQ_FD \(21\) failed: the back-end request fd is not a socket it can use: it is a regular file or memfd/);
  await waitForLogSince(mark, /SET_BACKEND_REQ_FD \(21\) failed: the back-end request fd is not a socket it can use: it is a directory or device/);
  // Still connected, and holding none of the 100 fds (only its socket beyond the idle count).
  t.truthy(await c.request({ code: Req.GET_FEATURES }));
  t.true(await eventually(() => host.fdCount() === baseFds + 1), `host holds ${host.fdCount() - baseFds - 1} refused fds`);
  c.ch.close();
  await backToIdle(t);
});

test.serial('a refused kick fd changes nothing: the ring keeps its kick fd and the refused number is never watched', async (t) => {
  const mark = host.log().length;
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  try {
    const q = fe.queues[0];
    t.is((await q.submit([Buffer.from('one')], 16)).len, 3);
    // A kick fd the worker cannot poll, on an enabled ring: refused, and the host closes it.
    const bad = memfd(4096);
    await t.throwsAsync(fe.conn.setVringKick(0, bad), { message: /SET_VRING_KICK.*failed/ });
    native.close(bad);
    await waitForLogSince(mark, /SET_VRING_KICK \(12\) failed/);
    // A refused message leaves the ring as it was: the previous kick fd still starts it.
    const two = await q.submit([Buffer.from('two')], 16);
    t.is(Buffer.from(two.data.subarray(0, two.len)).toString(), 'two');
    // The next fd the host receives takes the lowest free number: the refused fd's. Had the
    // worker kept that number as a kick fd, re-enabling the ring would watch this call fd and
    // read (swallow) the notifications the host itself writes to it.
    await fe.conn.setVringCall(0, q.callFd);
    await fe.conn.setVringEnable(0, false);
    await fe.conn.setVringEnable(0, true);
    for (const word of ['three', 'four']) {
      const r = await q.submit([Buffer.from(word)], 16);
      t.is(Buffer.from(r.data.subarray(0, r.len)).toString(), word);
    }
  } finally {
    await fe.close();
  }
  await bystanderServes(t);
  await backToIdle(t);
});

test.serial('NEED_REPLY without REPLY_ACK negotiated gets no ack', async (t) => {
  const c = connect();
  await handshake(c, false);
  // With NEED_REPLY but no REPLY_ACK, the next message on the socket must be GET_FEATURES' own reply.
  await c.ch.send(frame(Req.SET_OWNER, VERSION | FLAG_NEED_REPLY));
  await c.ch.send(frame(Req.SET_VRING_NUM, VERSION | FLAG_NEED_REPLY, new Uint8Array(8)));
  const reply = await c.request({ code: Req.GET_FEATURES });
  t.is(reply?.header.request, Req.GET_FEATURES, 'the first reply is the one to GET_FEATURES, not an ack');
  t.is(reply?.payload.length, 8);
  await host.waitForLog(/NEED_REPLY without negotiating REPLY_ACK: no ack is sent/);
  c.ch.close();
  await backToIdle(t);
});

test.serial('unsupported requests that always have a reply get the spec failure reply; the connection stays', async (t) => {
  const mark = host.log().length;
  const c = connect();
  await handshake(c);
  const raw = async (code: number, payload: Uint8Array = new Uint8Array(0)): Promise<RawMessage> => {
    const m = await c.ch.request(frame(code, VERSION, payload), [], true);
    if (!m) throw new Error('no reply');
    t.is(m.header.request, code);
    t.is(m.header.flags, VERSION | FLAG_REPLY);
    return m;
  };
  // GET_INFLIGHT_FD: an inflight description with mmap size 0 and no fd ("no inflight area").
  const inflightReq = new Uint8Array(24);
  new DataView(inflightReq.buffer).setUint16(16, 1, true);
  new DataView(inflightReq.buffer).setUint16(18, 128, true);
  const inflight = await raw(Req.GET_INFLIGHT_FD, inflightReq);
  t.is(inflight.payload.length, 24);
  t.is(u64Of(inflight), 0n, 'mmap size 0');
  t.is(inflight.fds.length, 0);
  // GET_SHARED_OBJECT: no dma-buf fd.
  const shared = await raw(Req.GET_SHARED_OBJECT, new Uint8Array(16));
  t.is(shared.fds.length, 0);
  t.not(u64Of(shared), 0n);
  // POSTCOPY_ADVISE: no userfaultfd.
  const advise = await raw(Req.POSTCOPY_ADVISE);
  t.is(advise.fds.length, 0);
  t.is(advise.payload.length, 0);
  // POSTCOPY_END and IOTLB_MSG: a non-zero u64.
  t.not(u64Of(await raw(Req.POSTCOPY_END)), 0n);
  t.not(u64Of(await raw(Req.IOTLB_MSG, new Uint8Array(32))), 0n);
  // CREATE_CRYPTO_SESSION: session id -1 where either QEMU layout keeps it.
  const session = await raw(Req.CREATE_CRYPTO_SESSION, new Uint8Array(64));
  const sv = new DataView(session.payload.buffer, session.payload.byteOffset, session.payload.byteLength);
  t.is(session.payload.length, 64);
  t.is(sv.getBigInt64(0, true), -1n);
  t.is(sv.getBigInt64(56, true), -1n);
  await waitForLogSince(mark, /GET_INFLIGHT_FD \(31\) failed: .*answered with inflight area of size 0, no fd/);
  await waitForLogSince(mark, /CREATE_CRYPTO_SESSION \(26\) failed: .*answered with session id -1/);
  t.truthy(await c.request({ code: Req.GET_FEATURES }), 'the connection survived all of them');
  c.ch.close();
  await bystanderServes(t);
  await backToIdle(t);
});

test.serial('an always-reply request refused without a failure form closes only that connection, saying why', async (t) => {
  const mark = host.log().length;
  const c = connect();
  await handshake(c); // STATUS and CONFIG not negotiated
  // GET_CONFIG has a failure form (an empty payload): answered, the connection stays.
  const cfgReq = new Uint8Array(12 + 4); // offset 0, size 4, flags 0, 4 bytes
  new DataView(cfgReq.buffer).setUint32(4, 4, true);
  const cfg = await c.ch.request(frame(Req.GET_CONFIG, VERSION, cfgReq), [], true);
  t.is(cfg?.payload.length, 0);
  await waitForLogSince(mark, /GET_CONFIG \(24\) needs protocol feature CONFIG .*answered with empty config payload/);
  // GET_STATUS's reply is a bare status byte: no value could say "refused".
  await c.ch.send(frame(Req.GET_STATUS, VERSION));
  await c.closed;
  await waitForLogSince(mark, /connection closed: .*GET_STATUS \(40\) needs protocol feature STATUS .*no failure form, so the connection is closed/);
  await bystanderServes(t);
  await backToIdle(t);
});
