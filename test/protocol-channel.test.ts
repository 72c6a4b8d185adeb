import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../host/native/index.ts';
import { fdSnapshot, fdsOpenedSince } from './helpers/fd-snapshot.ts';
import { connectWhenListening } from './helpers/unix-listen.ts';
import { MessageChannel, type ChannelOptions } from '../host/protocol/channel.ts';
import { call, callBackend } from '../host/protocol/client.ts';
import { decodeBackendRequest, decodeReply, decodeRequest, encodeConfigReply, encodeMemSlotsReply, encodeRequest, encodeU64Reply, encodeVringStateReply, frame } from '../host/protocol/codec.ts';
import { ProtocolError } from '../host/protocol/errors.ts';
import { HEADER_SIZE, VERSION } from '../host/protocol/constants.ts';
import { BackendReq, Req, backendHasReply, backendRequestName, requestName } from '../host/protocol/requests.ts';
import type { DecodedRequest, RawMessage } from '../host/protocol/messages.ts';

// fd counting needs the file to run one test at a time.

interface Harness {
  channel: MessageChannel;
  peer: number;
  messages: RawMessage[];
  closed: Promise<string | null>;
  closeCalls: () => number;
}

function harness(opts: Partial<ChannelOptions> = {}): Harness {
  const [ours, peer] = native.socketpair();
  const messages: RawMessage[] = [];
  let calls = 0;
  let onClosed!: (r: string | null) => void;
  const closed = new Promise<string | null>((r) => (onClosed = r));
  const channel = new MessageChannel(ours, {
    onMessage: (m) => {
      messages.push(m);
    },
    ...opts,
    onClose: (reason) => {
      calls++;
      onClosed(reason);
    },
  });
  return { channel, peer, messages, closed, closeCalls: () => calls };
}

/** Resolves once cond() holds, failing after `ms`. */
async function until(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  for (let i = 0; i < ms / 5; i++) {
    if (cond()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function sendAll(fd: number, bytes: Uint8Array, fds: number[] = []): void {
  const n = native.sendMsg(fd, bytes, fds);
  if (n !== bytes.length) throw new Error(`short write ${n} of ${bytes.length}`);
}

/** An eventfd whose counter identifies it once received on the other side. */
const tagged = (tag: number) => native.eventfd(tag);
const tagOf = (fd: number) => native.eventfdRead(fd);

function closeAll(fds: number[]): void {
  for (const fd of fds) native.close(fd);
}

test.serial('message boundaries: each message gets the fds sent with it', async (t) => {
  const h = harness();
  const a = [tagged(11), tagged(12)];
  const b = [tagged(21)];
  // Three messages queued in the socket before the channel reads any of them.
  sendAll(h.peer, encodeRequest({ code: Req.GET_FEATURES }).bytes);
  const k = encodeRequest({ code: Req.SET_VRING_KICK, index: 1, fd: a[0] });
  sendAll(h.peer, k.bytes, a); // two fds: the decoder will reject this later, but framing keeps them together
  const c = encodeRequest({ code: Req.SET_VRING_CALL, index: 1, fd: b[0] });
  sendAll(h.peer, c.bytes, b);
  sendAll(h.peer, encodeRequest({ code: Req.SET_FEATURES, features: 5n }).bytes);
  await until(() => h.messages.length === 4, 'four messages');
  t.deepEqual(h.messages.map((m) => m.header.request), [Req.GET_FEATURES, Req.SET_VRING_KICK, Req.SET_VRING_CALL, Req.SET_FEATURES]);
  t.deepEqual(h.messages.map((m) => m.fds.length), [0, 2, 1, 0]);
  t.deepEqual(h.messages[1].fds.map(tagOf), [11, 12]);
  t.deepEqual(h.messages[2].fds.map(tagOf), [21]);
  const call = decodeRequest(h.messages[2].header, h.messages[2].payload, h.messages[2].fds);
  t.like(call, { code: Req.SET_VRING_CALL, index: 1 });
  t.like(decodeRequest(h.messages[3].header, h.messages[3].payload, []), { features: 5n });
  for (const m of h.messages) closeAll(m.fds);
  closeAll([...a, ...b]);
  native.close(h.peer);
  t.is(await h.closed, null);
  t.is(h.closeCalls(), 1);
});

test.serial('a message split into 1-byte writes across many wake-ups', async (t) => {
  const h = harness();
  const ev = tagged(77);
  const table = encodeRequest({
    code: Req.SET_MEM_TABLE,
    regions: [{ guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x7f0000000000n, mmapOffset: 0n, fd: ev }],
  });
  for (let i = 0; i < table.bytes.length; i++) {
    sendAll(h.peer, table.bytes.subarray(i, i + 1), i === 0 ? table.fds : []);
    if (i % 4 === 0) await sleep(1);
  }
  await until(() => h.messages.length === 1, 'the reassembled message');
  const m = h.messages[0];
  t.is(m.payload.length, table.bytes.length - HEADER_SIZE);
  const d = decodeRequest(m.header, m.payload, m.fds);
  t.like(d, { code: Req.SET_MEM_TABLE });
  t.is(m.fds.length, 1);
  t.is(tagOf(m.fds[0]), 77);
  closeAll([...m.fds, ev, h.peer]);
  t.is(await h.closed, null);
});

test.serial('EOF mid-header closes, names the spot, and closes the fds that came with it', async (t) => {
  const before = fdSnapshot();
  const h = harness();
  const evs = [tagged(1), tagged(2)];
  sendAll(h.peer, encodeRequest({ code: Req.GET_FEATURES }).bytes.subarray(0, 5), evs);
  closeAll(evs);
  await sleep(10);
  native.close(h.peer);
  t.is(await h.closed, 'peer closed the connection mid-header (5 of 12 bytes)');
  t.true(h.channel.closed);
  t.is(h.messages.length, 0);
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('EOF mid-payload closes and closes the fds', async (t) => {
  const before = fdSnapshot();
  const h = harness();
  const ev = tagged(3);
  const log = encodeRequest({ code: Req.SET_LOG_BASE, log: { mmapSize: 4096n, mmapOffset: 0n }, fd: ev });
  sendAll(h.peer, log.bytes.subarray(0, HEADER_SIZE + 4), log.fds);
  native.close(ev);
  native.close(h.peer);
  t.is(await h.closed, 'peer closed the connection mid-payload of SET_LOG_BASE (6) (4 of 16 bytes)');
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('more than 8 fds on one message is a protocol error; every fd is closed', async (t) => {
  const before = fdSnapshot();
  const h = harness();
  const evs = Array.from({ length: 9 }, (_, i) => tagged(i + 1));
  const table = frame(Req.SET_MEM_TABLE, VERSION, new Uint8Array(8));
  sendAll(h.peer, table, evs);
  closeAll(evs);
  const reason = await h.closed;
  t.is(reason, 'a message carried more than 8 fds; the ones received were closed');
  native.close(h.peer);
  t.is(h.messages.length, 0);
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('fds arriving mid-message are refused', async (t) => {
  const before = fdSnapshot();
  const h = harness();
  const ev = tagged(5);
  const bytes = encodeRequest({ code: Req.SET_FEATURES, features: 1n }).bytes;
  sendAll(h.peer, bytes.subarray(0, HEADER_SIZE));
  await sleep(10);
  sendAll(h.peer, bytes.subarray(HEADER_SIZE), [ev]);
  native.close(ev);
  t.is(await h.closed, '1 fd(s) arrived mid-payload of SET_FEATURES (2) (0 of 8 bytes), not with the first byte of a message');
  native.close(h.peer);
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('a bad header closes the channel with the codec error and closes its fds', async (t) => {
  const before = fdSnapshot();
  const h = harness();
  const ev = tagged(6);
  const bad = frame(Req.SET_OWNER, VERSION | 0x40);
  sendAll(h.peer, bad, [ev]);
  native.close(ev);
  t.regex((await h.closed) ?? '', /^SET_OWNER \(3\): reserved header flag bits 0x40 are set/);
  native.close(h.peer);
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('an oversized size field is refused before any payload is awaited', async (t) => {
  const h = harness();
  const bad = frame(Req.SET_CONFIG, VERSION);
  new DataView(bad.buffer).setUint32(8, 1 << 30, true);
  sendAll(h.peer, bad);
  t.is(await h.closed, `SET_CONFIG (25): payload size ${1 << 30} exceeds the 4096-byte limit`);
  native.close(h.peer);
});

test.serial('backpressure: a slow async handler sees messages one at a time, in order', async (t) => {
  let active = 0;
  let maxActive = 0;
  const seen: number[] = [];
  const h = harness({
    onMessage: async (m) => {
      active++;
      maxActive = Math.max(maxActive, active);
      await sleep(15);
      const d = decodeRequest(m.header, m.payload, m.fds);
      seen.push(!d.unknown && d.code === Req.SET_VRING_NUM ? d.state.num : -1);
      active--;
    },
  });
  for (let i = 0; i < 6; i++) sendAll(h.peer, encodeRequest({ code: Req.SET_VRING_NUM, state: { index: 0, num: i } }).bytes);
  await until(() => seen.length === 6, 'six handled messages');
  t.deepEqual(seen, [0, 1, 2, 3, 4, 5]);
  t.is(maxActive, 1);
  native.close(h.peer);
  t.is(await h.closed, null);
});

test.serial('the socket is not read while the handler runs', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const got: number[] = [];
  const h = harness({
    onMessage: async (m) => {
      got.push(m.header.request);
      if (got.length === 1) await gate;
    },
  });
  sendAll(h.peer, encodeRequest({ code: Req.GET_FEATURES }).bytes);
  await until(() => got.length === 1, 'the first message');
  // A second message whose fd would be received (and counted) if the channel kept reading.
  const ev = tagged(9);
  const before = fdSnapshot();
  sendAll(h.peer, encodeRequest({ code: Req.SET_LOG_FD, fd: ev }).bytes, [ev]);
  await sleep(30);
  t.is(got.length, 1);
  t.deepEqual(fdsOpenedSince(before), [], 'the second message (and its fd) is still in the socket');
  release();
  await until(() => got.length === 2, 'the second message');
  t.deepEqual(got, [Req.GET_FEATURES, Req.SET_LOG_FD]);
  native.close(ev);
  h.channel.close();
  t.is(await h.closed, null);
  native.close(h.peer);
});

test.serial('a handler that rejects closes the channel with its error', async (t) => {
  const h = harness({
    onMessage: async () => {
      throw new Error('device exploded');
    },
  });
  sendAll(h.peer, encodeRequest({ code: Req.RESET_DEVICE }).bytes);
  t.is(await h.closed, 'handler for RESET_DEVICE (34) failed: device exploded');
  native.close(h.peer);
});

test.serial('request/reply between a front-end channel and a back-end channel, fds both ways', async (t) => {
  const [fe, be] = native.socketpair();
  const inflightFd = native.memfdCreate('inflight', false);
  const backend = new MessageChannel(be, {
    onMessage: async (m) => {
      const req = decodeRequest(m.header, m.payload, m.fds);
      if (req.unknown) throw new Error('unknown');
      if (req.code === Req.GET_FEATURES) await backend.send(encodeU64Reply(req.code, 1n << 30n));
      else if (req.code === Req.SET_LOG_FD) {
        t.is(tagOf(req.fd), 33);
        native.close(req.fd);
        if (req.needReply) await backend.send(encodeU64Reply(req.code, 0n));
      } else if (req.code === Req.GET_INFLIGHT_FD) {
        await backend.send(encodeU64Reply(Req.GET_INFLIGHT_FD, 0n), [inflightFd]);
      }
    },
  });
  let feClosed: string | null | undefined;
  const frontend = new MessageChannel(fe, { onClose: (r) => (feClosed = r), label: 'front-end' });

  const features = await frontend.request(encodeRequest({ code: Req.GET_FEATURES }).bytes);
  t.like(decodeReply(Req.GET_FEATURES, features!.header, features!.payload), { value: 1n << 30n });

  const ev = tagged(33);
  const setLog = encodeRequest({ code: Req.SET_LOG_FD, fd: ev }, true);
  // Pipelined: the second request goes out before the first reply arrives.
  const [ack, none] = await Promise.all([
    frontend.request(setLog.bytes, setLog.fds),
    frontend.request(encodeRequest({ code: Req.SET_OWNER }).bytes, [], false),
  ]);
  native.close(ev);
  t.like(decodeReply(Req.SET_LOG_FD, ack!.header, ack!.payload), { value: 0n });
  t.is(none, null);

  // A reply with the wrong shape for the request (u64 where an inflight description belongs)
  // still frames fine: the channel only matches codes, decodeReply judges the payload.
  const r = await frontend.request(encodeRequest({ code: Req.GET_INFLIGHT_FD, inflight: { mmapSize: 0n, mmapOffset: 0n, numQueues: 1, queueSize: 8 } }).bytes);
  t.is(r!.fds.length, 1);
  t.throws(() => decodeReply(Req.GET_INFLIGHT_FD, r!.header, r!.payload, r!.fds), { message: /shorter than its 24-byte inflight description/ });
  t.true(native.fstat(r!.fds[0]).isFile);
  closeAll([...r!.fds, inflightFd]);

  backend.close();
  await until(() => feClosed !== undefined, 'front-end close');
  t.is(feClosed, null);
});

test.serial('a reply to the wrong request closes the front-end channel and fails the request', async (t) => {
  const [fe, be] = native.socketpair();
  const backend = new MessageChannel(be, {
    onMessage: () => void backend.send(encodeU64Reply(Req.GET_PROTOCOL_FEATURES, 0n)),
  });
  let reason: string | null | undefined;
  const frontend = new MessageChannel(fe, { onClose: (r) => (reason = r), label: 'front-end' });
  const err = await t.throwsAsync(frontend.request(encodeRequest({ code: Req.GET_FEATURES }).bytes));
  t.is(reason, 'expected the reply to GET_FEATURES (1), got a reply to GET_PROTOCOL_FEATURES (15)');
  t.regex(err.message, /^front-end closed: expected the reply .* before the reply to GET_FEATURES \(1\) arrived$/);
  backend.close();
});

test.serial('a channel without a handler refuses unsolicited requests', async (t) => {
  const h = harness({ onMessage: undefined });
  sendAll(h.peer, encodeRequest({ code: Req.GET_FEATURES }).bytes);
  t.is(await h.closed, 'unexpected GET_FEATURES (1): this channel accepts only replies');
  native.close(h.peer);
});

test.serial('back-end requests on the back-end request channel are named as such', async (t) => {
  const h = harness({ onMessage: undefined, codes: 'backend' });
  sendAll(h.peer, frame(2, VERSION | 0x8));
  t.is(await h.closed, 'unexpected BACKEND_CONFIG_CHANGE_MSG (2): this channel accepts only replies');
  native.close(h.peer);
});

test.serial('close() is idempotent, closes the socket and fails pending work', async (t) => {
  const before = fdSnapshot();
  const h = harness({ onMessage: undefined });
  const pending = h.channel.request(encodeRequest({ code: Req.GET_STATUS }).bytes);
  h.channel.close();
  h.channel.close();
  t.is(await h.closed, null);
  t.is(h.closeCalls(), 1);
  await t.throwsAsync(pending, { message: 'vhost-user socket closed before the reply to GET_STATUS (40) arrived' });
  await t.throwsAsync(h.channel.send(frame(Req.GET_STATUS, VERSION)), { message: 'vhost-user socket is closed' });
  // The peer sees EOF: our end is really closed.
  const buf = new Uint8Array(64);
  let r = native.recvMsg(h.peer, buf, 8);
  t.truthy(r);
  t.is(r!.bytes, HEADER_SIZE, 'the request went out before the close');
  r = native.recvMsg(h.peer, buf, 8);
  t.is(r!.bytes, 0);
  native.close(h.peer);
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('large queued sends complete across writable wake-ups with fds on the first byte only', async (t) => {
  const [a, b] = native.socketpair();
  const received: RawMessage[] = [];
  const rx = new MessageChannel(b, { onMessage: (m) => void received.push(m) });
  const tx = new MessageChannel(a);
  const ev = tagged(44);
  // Far more than a socket buffer holds, so sends must wait for writability.
  const msgs = 2000;
  const sends: Promise<void>[] = [];
  let sentNow = 0;
  for (let i = 0; i < msgs; i++) {
    const cfg = encodeRequest({ code: Req.SET_CONFIG, config: { offset: i, flags: 0, data: new Uint8Array(256).fill(i & 0xff) } });
    sends.push(tx.send(cfg.bytes, i % 50 === 0 ? [ev] : []).then(() => void sentNow++));
  }
  for (let i = 0; i < 5; i++) await Promise.resolve();
  t.true(sentNow < msgs, `the socket buffer filled (${sentNow} of ${msgs} sent at once)`);
  await Promise.all(sends);
  await until(() => received.length === msgs, 'all messages');
  for (let i = 0; i < msgs; i++) {
    // Framing only: the stray fd makes this an invalid SET_CONFIG, which is not the point here.
    const d = decodeRequest(received[i].header, received[i].payload, []);
    t.like(d, { code: Req.SET_CONFIG, config: { offset: i } });
    t.is(received[i].fds.length, i % 50 === 0 ? 1 : 0, `message ${i}`);
    closeAll(received[i].fds);
  }
  native.close(ev);
  tx.close();
  rx.close();
});

test.serial('call(): typed request, typed reply; a malformed reply is rejected and its fds closed', async (t) => {
  const before = fdSnapshot();
  const [fe, be] = native.socketpair();
  const memfd = native.memfdCreate('bogus', false);
  const backend = new MessageChannel(be, {
    onMessage: async (m) => {
      const req = decodeRequest(m.header, m.payload, m.fds);
      if (req.unknown) return;
      if (req.code === Req.GET_VRING_BASE) await backend.send(encodeVringStateReply({ index: req.state.index, num: 42 }));
      if (req.code === Req.SET_VRING_NUM && req.needReply) await backend.send(encodeU64Reply(req.code, 0n));
      // Wrong layout on purpose: a u64 where GET_INFLIGHT_FD's description belongs.
      if (req.code === Req.GET_INFLIGHT_FD) await backend.send(encodeU64Reply(req.code, 0n), [memfd]);
    },
  });
  const frontend = new MessageChannel(fe);
  t.deepEqual(await call(frontend, { code: Req.GET_VRING_BASE, state: { index: 2, num: 0 } }), {
    kind: 'vring-state', code: Req.GET_VRING_BASE, state: { index: 2, num: 42 }, fds: [],
  });
  t.is(await call(frontend, { code: Req.SET_VRING_NUM, state: { index: 0, num: 8 } }), null);
  t.like(await call(frontend, { code: Req.SET_VRING_NUM, state: { index: 0, num: 8 } }, true), { kind: 'u64', value: 0n });
  const fdsBefore = fdSnapshot();
  await t.throwsAsync(call(frontend, { code: Req.GET_INFLIGHT_FD, inflight: { mmapSize: 0n, mmapOffset: 0n, numQueues: 1, queueSize: 8 } }), {
    instanceOf: ProtocolError,
    message: 'reply to GET_INFLIGHT_FD (31): payload is 8 bytes, shorter than its 24-byte inflight description',
  });
  t.deepEqual(fdsOpenedSince(fdsBefore), [], 'the fd that came with the bad reply was closed');
  native.close(memfd);
  frontend.close();
  backend.close();
  await t.throwsAsync(call(frontend, { code: Req.GET_FEATURES }), { message: /closed; cannot send GET_FEATURES \(1\)/ });
  t.deepEqual(fdsOpenedSince(before), []);
});

// --- interop with independent implementations (QEMU is a required test dependency) ---------

const qsd = '/usr/bin/qemu-storage-daemon';
const qemu = '/usr/bin/qemu-system-x86_64';

function tmpSocket(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-proto-'));
  return join(dir, name);
}

async function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((r) => child.once('exit', r));
}

test.serial('front-end encoding and reply decoding against qemu-storage-daemon (libvhost-user)', async (t) => {
  const path = tmpSocket('qsd.sock');
  const child = spawn(qsd, [
    '--blockdev', 'driver=null-co,node-name=n0,size=1048576',
    '--export', `type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=${path},writable=on`,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  try {
    await until(() => existsSync(path) || child.exitCode !== null, 'the daemon socket', 15_000);
    t.true(existsSync(path), `qemu-storage-daemon did not start: ${stderr}`);
    const fd = await connectWhenListening(path, 15_000, () => child.exitCode !== null);
    const ch = new MessageChannel(fd, { label: 'qsd' });
    const features = await call(ch, { code: Req.GET_FEATURES });
    t.like(features, { kind: 'u64' });
    const f = (features as { value: bigint }).value;
    t.not(f & (1n << 30n), 0n, 'VHOST_USER_F_PROTOCOL_FEATURES offered');
    const pf = ((await call(ch, { code: Req.GET_PROTOCOL_FEATURES })) as { value: bigint }).value;
    t.not(pf & (1n << 3n), 0n, 'REPLY_ACK offered');
    t.is(await call(ch, { code: Req.SET_PROTOCOL_FEATURES, features: pf }), null);
    t.like(await call(ch, { code: Req.SET_OWNER }, true), { kind: 'u64', value: 0n });
    const cfg = await call(ch, { code: Req.GET_CONFIG, config: { offset: 0, flags: 0, data: new Uint8Array(60) } });
    t.like(cfg, { kind: 'config' });
    // virtio_blk_config.capacity (sectors) of the 1 MiB null device.
    const data = (cfg as { config: { data: Uint8Array } }).config.data;
    t.is(new DataView(data.buffer, data.byteOffset).getBigUint64(0, true), 2048n);
    t.like(await call(ch, { code: Req.SET_FEATURES, features: f }, true), { value: 0n });
    const mem = native.memfdCreate('guest', false);
    native.ftruncate(mem, 1 << 20);
    const ua = 0x7f00_0000_0000n;
    t.like(await call(ch, { code: Req.SET_MEM_TABLE, regions: [{ guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: ua, mmapOffset: 0n, fd: mem }] }, true), { value: 0n });
    t.like(await call(ch, { code: Req.SET_VRING_NUM, state: { index: 0, num: 8 } }, true), { value: 0n });
    t.like(await call(ch, { code: Req.SET_VRING_ADDR, addr: { index: 0, flags: 0, descUserAddr: ua, availUserAddr: ua + 0x1000n, usedUserAddr: ua + 0x2000n, logGuestAddr: 0n } }, true), { value: 0n });
    t.like(await call(ch, { code: Req.SET_VRING_BASE, state: { index: 0, num: 5 } }, true), { value: 0n });
    const kick = native.eventfd(0);
    const callFd = native.eventfd(0);
    t.like(await call(ch, { code: Req.SET_VRING_CALL, index: 0, fd: callFd }, true), { value: 0n });
    t.like(await call(ch, { code: Req.SET_VRING_KICK, index: 0, fd: kick }, true), { value: 0n });
    // The base we set comes back: the vring state layout is read the same way on both sides.
    t.deepEqual(await call(ch, { code: Req.GET_VRING_BASE, state: { index: 0, num: 0 } }), {
      kind: 'vring-state', code: Req.GET_VRING_BASE, state: { index: 0, num: 5 }, fds: [],
    });
    ch.close();
    closeAll([mem, kick, callFd]);
  } finally {
    child.kill();
    await exited(child);
    rmSync(dirname(path), { recursive: true, force: true });
  }
});

test.serial('QEMU 7.2 as front-end: its start-up requests decode cleanly', async (t) => {
  const path = tmpSocket('be.sock');
  const listener = native.listenUnix(path, 1);
  const got: string[] = [];
  let channel: MessageChannel | null = null;
  let problem: string | null = null;
  const accepted = native.watch(listener, 'r', () => {
    const fd = native.accept(listener);
    if (fd < 0) return;
    accepted.close();
    channel = new MessageChannel(fd, {
      onClose: (r) => (problem ??= r),
      onMessage: async (m) => {
        const req = decodeRequest(m.header, m.payload, m.fds);
        closeAll(req.fds);
        if (req.unknown) throw new Error(`unknown request ${req.code}`);
        got.push(requestName(req.code));
        const reply = replyFor(req);
        if (reply) await channel!.send(reply);
        else if (req.needReply) await channel!.send(encodeU64Reply(req.code, 0n));
      },
    });
  });
  const child = spawn(qemu, [
    '-accel', 'tcg', '-machine', 'q35', '-nodefaults', '-nographic', '-S', '-m', '128',
    '-object', 'memory-backend-memfd,id=mem,size=128M,share=on', '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=c0,path=${path}`, '-device', 'vhost-user-blk-pci,chardev=c0,num-queues=1',
    '-monitor', 'none', '-serial', 'none',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  try {
    await until(() => got.includes('GET_CONFIG (24)') || problem !== null || child.exitCode !== null, 'QEMU to read the config space', 30_000);
    t.is(problem, null);
    t.true(got.includes('GET_CONFIG (24)'), `QEMU stopped early: ${stderr}`);
    t.deepEqual(got.slice(0, 3), ['GET_FEATURES (1)', 'GET_PROTOCOL_FEATURES (15)', 'SET_PROTOCOL_FEATURES (16)']);
    t.true(got.includes('SET_OWNER (3)'));
  } finally {
    child.kill();
    await exited(child);
    accepted.close();
    (channel as MessageChannel | null)?.close();
    native.close(listener);
    rmSync(dirname(path), { recursive: true, force: true });
  }
});

function replyFor(req: DecodedRequest): Uint8Array | null {
  switch (req.code) {
    case Req.GET_FEATURES:
      return encodeU64Reply(req.code, (1n << 32n) | (1n << 30n));
    case Req.GET_PROTOCOL_FEATURES:
      return encodeU64Reply(req.code, 0b1000_0010_0000_1011n); // MQ, LOG_SHMFD, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS
    case Req.GET_QUEUE_NUM:
      return encodeU64Reply(req.code, 1n);
    case Req.GET_MAX_MEM_SLOTS:
      return encodeMemSlotsReply();
    case Req.GET_CONFIG:
      return encodeConfigReply({ offset: req.config.offset, flags: 0, data: new Uint8Array(req.config.data.length) });
    case Req.GET_VRING_BASE:
      return encodeVringStateReply({ index: req.state.index, num: 0 });
    default:
      return null;
  }
}

test.serial('back-end request channel: the front-end hands over a socket, the back-end calls back on it', async (t) => {
  const [fe, be] = native.socketpair();
  let backendReq: MessageChannel | null = null;
  const backend = new MessageChannel(be, {
    onMessage: async (m) => {
      const req = decodeRequest(m.header, m.payload, m.fds);
      if (!req.unknown && req.code === Req.SET_BACKEND_REQ_FD) {
        // The received socket becomes the back-end's channel for its own requests.
        backendReq = new MessageChannel(req.fd, { codes: 'backend', label: 'back-end request socket' });
        if (req.needReply) await backend.send(encodeU64Reply(req.code, 0n));
      }
    },
  });
  const frontend = new MessageChannel(fe);
  const [ours, theirs] = native.socketpair();
  const seen: string[] = [];
  const frontendBackendReq = new MessageChannel(ours, {
    codes: 'backend',
    onMessage: async (m) => {
      const req = decodeBackendRequest(m.header, m.payload, m.fds);
      seen.push(req.unknown ? `unknown ${req.code}` : backendRequestName(req.code));
      if (req.needReply || (!req.unknown && backendHasReply(req.code))) {
        await frontendBackendReq.send(encodeU64Reply(req.code, req.unknown ? 1n : 0n));
      }
    },
  });
  t.like(await call(frontend, { code: Req.SET_BACKEND_REQ_FD, fd: theirs }, true), { value: 0n });
  native.close(theirs);
  await until(() => backendReq !== null, 'the back-end request channel');
  const ch = backendReq as unknown as MessageChannel;
  t.like(await callBackend(ch, { code: BackendReq.CONFIG_CHANGE_MSG }, true), { kind: 'u64', value: 0n });
  t.is(await callBackend(ch, { code: BackendReq.VRING_CALL, state: { index: 1, num: 0 } }), null);
  await until(() => seen.length === 2, 'both back-end requests');
  t.deepEqual(seen, ['BACKEND_CONFIG_CHANGE_MSG (2)', 'BACKEND_VRING_CALL (4)']);
  ch.close();
  frontendBackendReq.close();
  frontend.close();
  backend.close();
});
