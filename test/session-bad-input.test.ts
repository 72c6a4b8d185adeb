// Hostile front-ends against the real host process: every malformed message gets a log line
// naming what was wrong, and the host leaks no fd and no mapping, and keeps serving.
import test from 'ava';
import { native } from '../host/native/index.ts';
import { frame } from '../host/protocol/codec.ts';
import { FLAG_NEED_REPLY, ProtocolFeature, VERSION, featureBit } from '../host/protocol/constants.ts';
import { Req } from '../host/protocol/requests.ts';
import type { RawMessage } from '../host/protocol/messages.ts';
import { startHost, eventually, NULL_DEVICE, type HostProcess } from './helpers/host-process.ts';
import { connectRaw, type RawFrontend } from './helpers/raw-frontend.ts';

const u64 = (v: bigint) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
};

/** Negotiates protocol features including REPLY_ACK, so failures come back as replies. */
async function handshake(c: RawFrontend): Promise<void> {
  await c.request({ code: Req.GET_FEATURES });
  await c.request({ code: Req.GET_PROTOCOL_FEATURES });
  const pf = featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.CONFIG) | featureBit(ProtocolFeature.MQ);
  await c.request({ code: Req.SET_PROTOCOL_FEATURES, features: pf });
  await c.request({ code: Req.SET_OWNER });
}

function ackValue(m: RawMessage | null): bigint {
  if (!m) throw new Error('no reply');
  return new DataView(m.payload.buffer, m.payload.byteOffset).getBigUint64(0, true);
}

function memfd(size: number): number {
  const fd = native.memfdCreate('bad-input-test', false);
  native.ftruncate(fd, size);
  return fd;
}

let host: HostProcess;
let baseFds: number;

test.before(async () => {
  host = await startHost(['--socket-path', '{socket}', '--device-module', NULL_DEVICE, '--log-level', 'debug']);
  baseFds = host.fdCount();
});

test.after.always(async () => {
  await host?.stop();
});

/** After each scenario the host is back to its idle fd count and maps no guest memory. */
async function assertNoLeak(t: { true: (v: boolean, m?: string) => void }, h: HostProcess): Promise<void> {
  t.true(await eventually(() => h.fdCount() === baseFds), `host fds ${h.fdCount()} != ${baseFds} at idle`);
  t.true(await eventually(() => h.memfdMappings() === 0), 'host still maps guest memory');
}

test.serial('truncated header: the connection is closed and the host says so', async (t) => {
  const c = connectRaw(host.socketPath);
  await c.send(new Uint8Array([1, 0, 0, 0, 1, 0]));
  c.ch.close(); // peer goes away mid-header
  await host.waitForLog(/connection closed: .*(header|EOF|mid)/i);
  await assertNoLeak(t, host);
});

test.serial('payload shorter than size, then disconnect: fds of the half message are closed', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const fd = memfd(4096);
  // SET_MEM_TABLE header promising 40 bytes, with its fd, and only 8 bytes of payload.
  const full = frame(Req.SET_MEM_TABLE, VERSION, new Uint8Array(40));
  await c.send(full.subarray(0, 12 + 8), [fd]);
  native.close(fd);
  c.ch.close();
  await host.waitForLog(/SET_MEM_TABLE.*(EOF|closed|mid)|(EOF|mid-message|mid-payload).*SET_MEM_TABLE/i);
  await assertNoLeak(t, host);
});

test.serial('payload longer than the request layout: refused with a failure reply naming it', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const reply = await c.ch.request(frame(Req.SET_FEATURES, VERSION | FLAG_NEED_REPLY, new Uint8Array(12)), [], true);
  t.not(ackValue(reply), 0n);
  await host.waitForLog(/SET_FEATURES.*12/);
  // Still serving on the same connection.
  t.truthy(await c.request({ code: Req.GET_FEATURES }));
  c.ch.close();
  await assertNoLeak(t, host);
});

test.serial('unknown request number: failure reply, connection survives', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const reply = await c.ch.request(frame(99, VERSION | FLAG_NEED_REPLY), [], true);
  t.not(ackValue(reply), 0n);
  await host.waitForLog(/unknown request 99/);
  t.truthy(await c.request({ code: Req.GET_FEATURES }));
  c.ch.close();
  await assertNoLeak(t, host);
});

test.serial('wrong version bits: connection closed with the reason', async (t) => {
  const c = connectRaw(host.socketPath);
  await c.send(frame(Req.GET_FEATURES, 0x2));
  t.not(await c.closed, undefined);
  await host.waitForLog(/version is 2/);
  await assertNoLeak(t, host);
});

test.serial('fds where none are expected are closed, not leaked', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const fds = [memfd(4096), memfd(4096), memfd(4096)];
  const reply = await c.ch.request(frame(Req.SET_OWNER, VERSION | FLAG_NEED_REPLY), fds, true);
  for (const fd of fds) native.close(fd);
  t.not(ackValue(reply), 0n);
  await host.waitForLog(/SET_OWNER.*fd/i);
  c.ch.close();
  await assertNoLeak(t, host);
});

test.serial('more fds than the request takes: refused, all closed', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const fds = [native.eventfd(0), native.eventfd(0)];
  const reply = await c.ch.request(frame(Req.SET_VRING_CALL, VERSION | FLAG_NEED_REPLY, u64(0n)), fds, true);
  for (const fd of fds) native.close(fd);
  t.not(ackValue(reply), 0n);
  await host.waitForLog(/SET_VRING_CALL.*2 fds|SET_VRING_CALL.*fd/i);
  c.ch.close();
  await assertNoLeak(t, host);
});

test.serial('more than 8 fds on one message: connection closed, every fd closed', async (t) => {
  // A raw socket: our own channel refuses to send more than 8 fds.
  const sock = native.connectUnix(host.socketPath);
  const fds = Array.from({ length: 10 }, () => native.eventfd(0));
  t.is(native.sendMsg(sock, frame(Req.SET_OWNER, VERSION), fds), 12);
  for (const fd of fds) native.close(fd);
  await host.waitForLog(/fds|truncated/i);
  // The host hung up: reading gives EOF.
  const buf = new Uint8Array(16);
  t.true(await eventually(() => native.read(sock, buf) === 0));
  native.close(sock);
  await assertNoLeak(t, host);
});

test.serial('SET_MEM_TABLE with overlapping regions or a zero-size region is refused', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const a = memfd(1 << 20);
  const b = memfd(1 << 20);
  const overlap = await c.request(
    {
      code: Req.SET_MEM_TABLE,
      regions: [
        { guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x10000000n, mmapOffset: 0n, fd: a },
        { guestPhysAddr: 0x80000n, memorySize: 1n << 20n, userspaceAddr: 0x20000000n, mmapOffset: 0n, fd: b },
      ],
    },
    true,
  );
  t.not(ackValue(overlap), 0n);
  await host.waitForLog(/overlaps/);
  const zero = await c.request(
    { code: Req.SET_MEM_TABLE, regions: [{ guestPhysAddr: 0n, memorySize: 0n, userspaceAddr: 0x10000000n, mmapOffset: 0n, fd: a }] },
    true,
  );
  t.not(ackValue(zero), 0n);
  await host.waitForLog(/size 0|zero/i);
  native.close(a);
  native.close(b);
  c.ch.close();
  await assertNoLeak(t, host);
});

test.serial('ring addresses outside guest memory: the ring does not start and the host says why', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const features = ackValue(await c.request({ code: Req.GET_FEATURES }));
  await c.request({ code: Req.SET_FEATURES, features }, true);
  const m = memfd(1 << 20);
  t.is(ackValue(await c.request({ code: Req.SET_MEM_TABLE, regions: [{ guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x10000000n, mmapOffset: 0n, fd: m }] }, true)), 0n);
  native.close(m);
  await c.request({ code: Req.SET_VRING_NUM, state: { index: 0, num: 64 } }, true);
  await c.request({ code: Req.SET_VRING_BASE, state: { index: 0, num: 0 } }, true);
  const r = await c.request(
    { code: Req.SET_VRING_ADDR, addr: { index: 0, flags: 0, descUserAddr: 0x90000000n, availUserAddr: 0x10001000n, usedUserAddr: 0x10002000n, logGuestAddr: 0n } },
    true,
  );
  t.not(ackValue(r), 0n);
  // The ring never got addresses, so enabling it (after its kick fd) cannot start it.
  const kick = native.eventfd(0);
  t.is(ackValue(await c.request({ code: Req.SET_VRING_KICK, index: 0, fd: kick }, true)), 0n);
  native.close(kick);
  const en = await c.request({ code: Req.SET_VRING_ENABLE, state: { index: 0, num: 1 } }, true);
  t.not(ackValue(en), 0n);
  await host.waitForLog(/SET_VRING_ENABLE.*SET_VRING_ADDR was not sent/);
  await host.waitForLog(/descriptor table address 0x90000000 is outside guest memory/);
  c.ch.close();
  await assertNoLeak(t, host);
});

test.serial('a front-end that disconnects mid-session releases every fd and mapping', async (t) => {
  const c = connectRaw(host.socketPath);
  await handshake(c);
  const m = memfd(1 << 20);
  await c.request({ code: Req.SET_MEM_TABLE, regions: [{ guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x10000000n, mmapOffset: 0n, fd: m }] }, true);
  native.close(m);
  t.true(await eventually(() => host.memfdMappings() > 0), 'the host should map the region while connected');
  c.ch.close();
  await assertNoLeak(t, host);
});
