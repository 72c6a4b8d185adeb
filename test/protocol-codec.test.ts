import test from 'ava';
import { FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, MAX_PAYLOAD_SIZE, VERSION } from '../host/protocol/constants.ts';
import { BackendReq, Req, requestName } from '../host/protocol/requests.ts';
import { decodeBackendReply, decodeBackendRequest, decodeHeader, decodeReply, decodeRequest, deviceStateReplyValue, encodeBackendRequest, encodeConfigReply, encodeInflightReply, encodeMemSlotsReply, encodeReply, encodeRequest, encodeU64Reply, encodeVringStateReply, frame } from '../host/protocol/codec.ts';
import { ProtocolError } from '../host/protocol/errors.ts';
import type { BackendRequest, FrontendRequest, Header } from '../host/protocol/messages.ts';

// The codec never touches fds, so plain numbers stand in for them here; the channel tests
// use real ones.
const region = (i: number) => ({
  guestPhysAddr: 0x1_0000_0000n * BigInt(i),
  memorySize: 0x4000_0000n + BigInt(i),
  userspaceAddr: 0x7f00_0000_0000n + BigInt(i) * 0x1000n,
  mmapOffset: BigInt(i) * 4096n,
});
const state = { index: 3, num: 256 };
const uuid = Uint8Array.from({ length: 16 }, (_, i) => i * 7);
const inflight = { mmapSize: 8192n, mmapOffset: 0n, numQueues: 2, queueSize: 128 };

const samples: FrontendRequest[] = [
  { code: Req.GET_FEATURES },
  { code: Req.SET_FEATURES, features: (1n << 63n) | (1n << 30n) | 1n },
  { code: Req.SET_OWNER },
  { code: Req.RESET_OWNER },
  { code: Req.SET_MEM_TABLE, regions: [0, 1, 2].map((i) => ({ ...region(i), fd: 100 + i })) },
  { code: Req.SET_LOG_BASE, log: { mmapSize: 1n << 20n, mmapOffset: 4096n }, fd: 50 },
  { code: Req.SET_LOG_FD, fd: 51 },
  { code: Req.SET_VRING_NUM, state },
  {
    code: Req.SET_VRING_ADDR,
    addr: { index: 1, flags: 1, descUserAddr: 0x7f00_0000_1000n, usedUserAddr: 0x7f00_0000_3000n, availUserAddr: 0x7f00_0000_2000n, logGuestAddr: 0xffff_ffff_ffff_fff0n },
  },
  { code: Req.SET_VRING_BASE, state: { index: 0, num: 65535 } },
  { code: Req.GET_VRING_BASE, state: { index: 2, num: 0 } },
  { code: Req.SET_VRING_KICK, index: 0, fd: 60 },
  { code: Req.SET_VRING_CALL, index: 255, fd: null },
  { code: Req.SET_VRING_ERR, index: 7, fd: 61 },
  { code: Req.GET_PROTOCOL_FEATURES },
  { code: Req.SET_PROTOCOL_FEATURES, features: 0xfffffn },
  { code: Req.GET_QUEUE_NUM },
  { code: Req.SET_VRING_ENABLE, state: { index: 1, num: 1 } },
  { code: Req.SEND_RARP, mac: 0x5254_0012_3456n },
  { code: Req.NET_SET_MTU, mtu: 1500n },
  { code: Req.SET_BACKEND_REQ_FD, fd: 62 },
  { code: Req.IOTLB_MSG, iotlb: { iova: 0x1000n, size: 0x2000n, userAddr: 0x7f00_0000_0000n, perm: 3, type: 2 } },
  { code: Req.SET_VRING_ENDIAN, state: { index: 0, num: 1 } },
  { code: Req.GET_CONFIG, config: { offset: 0, flags: 0, data: new Uint8Array(60) } },
  { code: Req.SET_CONFIG, config: { offset: 20, flags: 1, data: Uint8Array.of(1, 2, 3, 4) } },
  { code: Req.CREATE_CRYPTO_SESSION, session: Uint8Array.from({ length: 600 }, (_, i) => i & 0xff) },
  { code: Req.CLOSE_CRYPTO_SESSION, sessionId: 42n },
  { code: Req.POSTCOPY_ADVISE },
  { code: Req.POSTCOPY_LISTEN },
  { code: Req.POSTCOPY_END },
  { code: Req.GET_INFLIGHT_FD, inflight: { ...inflight, mmapSize: 0n } },
  { code: Req.SET_INFLIGHT_FD, inflight, fd: 63 },
  { code: Req.GPU_SET_SOCKET, fd: 64 },
  { code: Req.RESET_DEVICE },
  { code: Req.VRING_KICK, state: { index: 4, num: 0 } },
  { code: Req.GET_MAX_MEM_SLOTS },
  { code: Req.ADD_MEM_REG, region: { ...region(5), fd: 65 } },
  { code: Req.REM_MEM_REG, region: region(5) },
  { code: Req.SET_STATUS, status: 0x0fn },
  { code: Req.GET_STATUS },
  { code: Req.GET_SHARED_OBJECT, object: { uuid } },
  { code: Req.SET_DEVICE_STATE_FD, params: { direction: 1, phase: 0 }, fd: 66 },
  { code: Req.CHECK_DEVICE_STATE },
];

function split(bytes: Uint8Array): { header: Header; payload: Uint8Array } {
  return { header: decodeHeader(bytes.subarray(0, HEADER_SIZE)), payload: bytes.subarray(HEADER_SIZE) };
}

/** A message with a hand-made payload (for hostile inputs encodeRequest refuses to produce). */
function raw(code: number, payload: Uint8Array, flags = VERSION): { header: Header; payload: Uint8Array } {
  return split(frame(code, flags, payload));
}

function u64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

function u32s(...vs: number[]): Uint8Array {
  const b = new Uint8Array(vs.length * 4);
  const dv = new DataView(b.buffer);
  vs.forEach((v, i) => dv.setUint32(i * 4, v, true));
  return b;
}

test('the samples cover every front-end request 1-43', (t) => {
  const covered = new Set(samples.map((s) => s.code));
  t.deepEqual([...covered].sort((a, b) => a - b), Object.values(Req).sort((a, b) => a - b));
  t.is(covered.size, 43);
});

for (const req of samples) {
  test(`round trip ${requestName(req.code)}`, (t) => {
    for (const needReply of [false, true]) {
      const { bytes, fds } = encodeRequest(req, needReply);
      const { header, payload } = split(bytes);
      t.is(header.request, req.code);
      t.is(header.size, bytes.length - HEADER_SIZE);
      t.is(header.needReply, needReply);
      t.false(header.reply);
      const decoded = decodeRequest(header, payload, fds);
      t.deepEqual(decoded, {
        ...req,
        flags: VERSION | (needReply ? FLAG_NEED_REPLY : 0),
        needReply,
        fds,
        unknown: false,
      });
    }
  });
}

test('fds of SET_MEM_TABLE follow region order', (t) => {
  const { fds } = encodeRequest(samples[4]);
  t.deepEqual(fds, [100, 101, 102]);
});

test('Xen-extended regions round trip when XEN_MMAP is negotiated', (t) => {
  const req: FrontendRequest = { code: Req.ADD_MEM_REG, region: { ...region(1), xen: { mmapFlags: 0x101, domid: 7 }, fd: 9 } };
  const { bytes, fds } = encodeRequest(req, false, { xenMmap: true });
  t.is(bytes.length, HEADER_SIZE + 48);
  const { header, payload } = split(bytes);
  t.like(decodeRequest(header, payload, fds, { xenMmap: true }), req);
  const err = t.throws(() => decodeRequest(header, payload, fds), { instanceOf: ProtocolError });
  t.regex(err.message, /ADD_MEM_REG \(37\): payload is 48 bytes, longer than its 40-byte single memory region/);
});

// --- header validation -----------------------------------------------------------------------

test('truncated header', (t) => {
  const err = t.throws(() => decodeHeader(new Uint8Array(11)), { instanceOf: ProtocolError });
  t.is(err.message, 'truncated header: 11 of 12 bytes');
});

test('wrong version bits', (t) => {
  for (const v of [0, 2, 3]) {
    const err = t.throws(() => decodeHeader(frame(Req.GET_FEATURES, v)), { instanceOf: ProtocolError });
    t.is(err.message, `GET_FEATURES (1): header version is ${v}, only version 1 exists`);
  }
});

test('reserved flag bits', (t) => {
  for (const bit of [0x10, 0x100, 0x8000_0000]) {
    const err = t.throws(() => decodeHeader(frame(Req.SET_OWNER, VERSION | bit)), { instanceOf: ProtocolError });
    t.regex(err.message, /^SET_OWNER \(3\): reserved header flag bits 0x[0-9a-f]+ are set/);
    t.is(err.request, Req.SET_OWNER);
  }
});

test('size over the bound', (t) => {
  const bytes = frame(Req.SET_CONFIG, VERSION);
  new DataView(bytes.buffer).setUint32(8, MAX_PAYLOAD_SIZE + 1, true);
  const err = t.throws(() => decodeHeader(bytes), { instanceOf: ProtocolError });
  t.is(err.message, `SET_CONFIG (25): payload size ${MAX_PAYLOAD_SIZE + 1} exceeds the ${MAX_PAYLOAD_SIZE}-byte limit`);
  new DataView(bytes.buffer).setUint32(8, 0xffff_ffff, true);
  t.throws(() => decodeHeader(bytes), { message: /exceeds/ });
  new DataView(bytes.buffer).setUint32(8, MAX_PAYLOAD_SIZE, true);
  t.is(decodeHeader(bytes).size, MAX_PAYLOAD_SIZE);
});

test('back-end code space names back-end requests', (t) => {
  const err = t.throws(() => decodeHeader(frame(BackendReq.VRING_CALL, 0), MAX_PAYLOAD_SIZE, 'backend'));
  t.regex(err.message, /^BACKEND_VRING_CALL \(4\)/);
});

// --- payload validation ----------------------------------------------------------------------

test('payload shorter or longer than the layout', (t) => {
  const short = raw(Req.SET_FEATURES, new Uint8Array(7));
  t.is(
    t.throws(() => decodeRequest(short.header, short.payload, []), { instanceOf: ProtocolError }).message,
    'SET_FEATURES (2): payload is 7 bytes, shorter than its 8-byte u64',
  );
  const long = raw(Req.SET_VRING_ADDR, new Uint8Array(48));
  t.is(
    t.throws(() => decodeRequest(long.header, long.payload, []), { instanceOf: ProtocolError }).message,
    'SET_VRING_ADDR (9): payload is 48 bytes, longer than its 40-byte vring address',
  );
  const extra = raw(Req.GET_FEATURES, new Uint8Array(8));
  t.regex(t.throws(() => decodeRequest(extra.header, extra.payload, [])).message, /GET_FEATURES \(1\): payload is 8 bytes, longer than its 0-byte empty payload/);
  const inflightShort = raw(Req.SET_INFLIGHT_FD, new Uint8Array(20));
  t.regex(t.throws(() => decodeRequest(inflightShort.header, inflightShort.payload, [5])).message, /SET_INFLIGHT_FD \(32\): payload is 20 bytes, shorter than its 24-byte inflight description/);
  const state = raw(Req.GET_VRING_BASE, new Uint8Array(4));
  t.regex(t.throws(() => decodeRequest(state.header, state.payload, [])).message, /GET_VRING_BASE \(11\).*4 bytes, shorter than its 8-byte vring state/);
});

test('header size disagreeing with the payload given', (t) => {
  const { header } = raw(Req.SET_FEATURES, new Uint8Array(8));
  t.regex(t.throws(() => decodeRequest(header, new Uint8Array(4), [])).message, /SET_FEATURES \(2\): header says 8 payload bytes but 4 were given/);
});

test('too many fds', (t) => {
  const m = raw(Req.SET_MEM_TABLE, u32s(8, 0, ...new Array(64).fill(0)));
  const err = t.throws(() => decodeRequest(m.header, m.payload, [1, 2, 3, 4, 5, 6, 7, 8, 9]), { instanceOf: ProtocolError });
  t.is(err.message, 'SET_MEM_TABLE (5): carries 9 fds, more than the 8 a message may carry');
});

test('fds where none are expected', (t) => {
  const a = raw(Req.GET_FEATURES, new Uint8Array(0));
  t.is(t.throws(() => decodeRequest(a.header, a.payload, [7])).message, 'GET_FEATURES (1): carries 1 fd, expects none');
  const b = raw(Req.SET_VRING_NUM, new Uint8Array(8));
  t.is(t.throws(() => decodeRequest(b.header, b.payload, [7, 8])).message, 'SET_VRING_NUM (8): carries 2 fds, expects none');
  const c = raw(Req.GET_SHARED_OBJECT, uuid);
  t.regex(t.throws(() => decodeRequest(c.header, c.payload, [7])).message, /GET_SHARED_OBJECT \(41\): carries 1 fd, expects none/);
});

test('fds missing where one is required', (t) => {
  for (const code of [Req.SET_LOG_FD, Req.SET_BACKEND_REQ_FD, Req.GPU_SET_SOCKET]) {
    const m = raw(code, new Uint8Array(0));
    t.is(t.throws(() => decodeRequest(m.header, m.payload, [])).message, `${requestName(code)}: carries 0 fds, expects exactly 1`);
    t.throws(() => decodeRequest(m.header, m.payload, [1, 2]), { message: /carries 2 fds, expects exactly 1/ });
  }
  const ds = raw(Req.SET_DEVICE_STATE_FD, u32s(0, 0));
  t.regex(t.throws(() => decodeRequest(ds.header, ds.payload, [])).message, /SET_DEVICE_STATE_FD \(42\): carries 0 fds, expects exactly 1/);
  const log = raw(Req.SET_LOG_BASE, new Uint8Array(16));
  t.regex(t.throws(() => decodeRequest(log.header, log.payload, [])).message, /SET_LOG_BASE \(6\): carries 0 fds/);
  const add = raw(Req.ADD_MEM_REG, new Uint8Array(40));
  t.regex(t.throws(() => decodeRequest(add.header, add.payload, [])).message, /ADD_MEM_REG \(37\): carries 0 fds, expects exactly 1/);
});

test('vring kick/call/err fd rules follow the no-fd bit', (t) => {
  const withBit = raw(Req.SET_VRING_KICK, u64(0x100n | 2n));
  t.is(
    t.throws(() => decodeRequest(withBit.header, withBit.payload, [9])).message,
    'SET_VRING_KICK (12): carries 1 fd, expects none (the no-fd bit is set)',
  );
  t.like(decodeRequest(withBit.header, withBit.payload, []), { index: 2, fd: null });
  const noBit = raw(Req.SET_VRING_CALL, u64(1n));
  t.is(
    t.throws(() => decodeRequest(noBit.header, noBit.payload, [])).message,
    'SET_VRING_CALL (13): carries 0 fds, expects exactly 1 (the no-fd bit is clear)',
  );
  const reserved = raw(Req.SET_VRING_ERR, u64(0x200n | 1n));
  t.regex(t.throws(() => decodeRequest(reserved.header, reserved.payload, [9])).message, /SET_VRING_ERR \(14\): reserved bits 0x200 set/);
});

test('SET_MEM_TABLE: nregions over 8, inconsistent with size, fd count per region', (t) => {
  const nine = raw(Req.SET_MEM_TABLE, u32s(9, 0, ...new Array(72).fill(0)));
  t.is(t.throws(() => decodeRequest(nine.header, nine.payload, [])).message, 'SET_MEM_TABLE (5): nregions 9 exceeds the maximum of 8');
  const mismatch = raw(Req.SET_MEM_TABLE, u32s(2, 0, ...new Array(8).fill(0)));
  t.is(
    t.throws(() => decodeRequest(mismatch.header, mismatch.payload, [1, 2])).message,
    'SET_MEM_TABLE (5): payload is 40 bytes, inconsistent with nregions 2 (8 + 2 x 32 = 72 bytes)',
  );
  const fdShort = raw(Req.SET_MEM_TABLE, u32s(2, 0, ...new Array(16).fill(0)));
  t.is(
    t.throws(() => decodeRequest(fdShort.header, fdShort.payload, [1])).message,
    'SET_MEM_TABLE (5): carries 1 fds for 2 regions; needs exactly one fd per region',
  );
  const tiny = raw(Req.SET_MEM_TABLE, new Uint8Array(4));
  t.regex(t.throws(() => decodeRequest(tiny.header, tiny.payload, [])).message, /shorter than the 8-byte minimum of its memory table/);
  const empty = raw(Req.SET_MEM_TABLE, u32s(0, 0));
  t.like(decodeRequest(empty.header, empty.payload, []), { code: Req.SET_MEM_TABLE, regions: [] });
});

test('config space size checks', (t) => {
  const big = raw(Req.SET_CONFIG, u32s(0, 300, 0));
  t.is(t.throws(() => decodeRequest(big.header, big.payload, [])).message, 'SET_CONFIG (25): config size 300 exceeds the 256-byte config space');
  const off = raw(Req.GET_CONFIG, new Uint8Array([...u32s(0, 8, 0), 1, 2, 3]));
  t.regex(t.throws(() => decodeRequest(off.header, off.payload, [])).message, /GET_CONFIG \(24\): payload is 15 bytes, shorter than its 20-byte config space/);
});

test('REM_MEM_REG tolerates one stray fd, which stays in fds for the caller to close', (t) => {
  const { bytes } = encodeRequest({ code: Req.REM_MEM_REG, region: region(1) });
  const { header, payload } = split(bytes);
  const d = decodeRequest(header, payload, [77]);
  t.deepEqual(d.fds, [77]);
  t.throws(() => decodeRequest(header, payload, [77, 78]), { message: /REM_MEM_REG \(38\): carries 2 fds, expects 0 to 1/ });
});

test('a request with the REPLY flag is refused', (t) => {
  const m = raw(Req.GET_FEATURES, new Uint8Array(0), VERSION | FLAG_REPLY);
  t.is(t.throws(() => decodeRequest(m.header, m.payload, [])).message, 'GET_FEATURES (1): REPLY flag set on a request');
});

test('unknown request numbers decode to a distinct form, not a throw', (t) => {
  for (const code of [0, 44, 99, 0xffff_ffff]) {
    const m = raw(code, Uint8Array.of(1, 2, 3), VERSION | FLAG_NEED_REPLY);
    const d = decodeRequest(m.header, m.payload, [5]);
    t.deepEqual(d, { unknown: true, code, payload: Uint8Array.of(1, 2, 3), flags: VERSION | FLAG_NEED_REPLY, needReply: true, fds: [5] });
  }
  t.is(requestName(99), 'unknown request 99');
});

test('encodeRequest refuses values that do not fit', (t) => {
  t.throws(() => encodeRequest({ code: Req.SET_FEATURES, features: 1n << 64n }), { instanceOf: RangeError });
  t.throws(() => encodeRequest({ code: Req.SET_VRING_KICK, index: 256, fd: 3 }), { instanceOf: RangeError });
  t.throws(() => encodeRequest({ code: Req.SET_MEM_TABLE, regions: new Array(9).fill({ ...region(0), fd: 3 }) }), { message: /9 regions exceed/ });
});

// --- replies -------------------------------------------------------------------------------

function reply(bytes: Uint8Array) {
  return split(bytes);
}

test('reply encoders set exactly version|REPLY and decode back', (t) => {
  const r = reply(encodeU64Reply(Req.GET_FEATURES, 1n << 30n));
  t.is(r.header.flags, VERSION | FLAG_REPLY);
  t.deepEqual(decodeReply(Req.GET_FEATURES, r.header, r.payload), { kind: 'u64', code: Req.GET_FEATURES, value: 1n << 30n, fd: null, fds: [] });

  const vs = reply(encodeVringStateReply({ index: 1, num: 77 }));
  t.deepEqual(decodeReply(Req.GET_VRING_BASE, vs.header, vs.payload), { kind: 'vring-state', code: Req.GET_VRING_BASE, state: { index: 1, num: 77 }, fds: [] });

  const cfg = { offset: 0, flags: 0, data: Uint8Array.of(9, 8, 7) };
  const c = reply(encodeConfigReply(cfg));
  t.deepEqual(decodeReply(Req.GET_CONFIG, c.header, c.payload), { kind: 'config', code: Req.GET_CONFIG, config: cfg, fds: [] });
  const ce = reply(encodeConfigReply(null));
  t.like(decodeReply(Req.GET_CONFIG, ce.header, ce.payload), { kind: 'config', config: null });

  const inf = reply(encodeInflightReply(inflight));
  t.deepEqual(decodeReply(Req.GET_INFLIGHT_FD, inf.header, inf.payload, [40]), { kind: 'inflight', code: Req.GET_INFLIGHT_FD, inflight, fd: 40, fds: [40] });
  t.throws(() => decodeReply(Req.GET_INFLIGHT_FD, inf.header, inf.payload, []), { message: /reply to GET_INFLIGHT_FD \(31\): carries 0 fds, expects exactly 1/ });

  const slots = reply(encodeMemSlotsReply());
  t.like(decodeReply(Req.GET_MAX_MEM_SLOTS, slots.header, slots.payload), { value: 509n });

  const ack = reply(encodeU64Reply(Req.SET_MEM_TABLE, 0));
  t.like(decodeReply(Req.SET_MEM_TABLE, ack.header, ack.payload), { kind: 'u64', value: 0n });
});

test('decodeReply checks the REPLY flag and the request code', (t) => {
  const notReply = raw(Req.GET_FEATURES, u64(1n));
  t.is(t.throws(() => decodeReply(Req.GET_FEATURES, notReply.header, notReply.payload), { instanceOf: ProtocolError }).message, 'reply to GET_FEATURES (1) lacks the REPLY flag');
  const wrong = reply(encodeU64Reply(Req.GET_PROTOCOL_FEATURES, 1n));
  t.is(
    t.throws(() => decodeReply(Req.GET_FEATURES, wrong.header, wrong.payload)).message,
    'reply to GET_FEATURES (1) carries request code 15 (GET_PROTOCOL_FEATURES (15))',
  );
  const short = reply(encodeReply(Req.GET_FEATURES, new Uint8Array(4)));
  t.regex(t.throws(() => decodeReply(Req.GET_FEATURES, short.header, short.payload)).message, /reply to GET_FEATURES \(1\): payload is 4 bytes, shorter than its 8-byte u64/);
  const withNeed = raw(Req.GET_FEATURES, u64(1n), VERSION | FLAG_REPLY | FLAG_NEED_REPLY);
  t.regex(t.throws(() => decodeReply(Req.GET_FEATURES, withNeed.header, withNeed.payload)).message, /sets NEED_REPLY/);
});

test('SET_DEVICE_STATE_FD reply: fd iff no-fd bit clear, never with an error', (t) => {
  const withFd = reply(encodeU64Reply(Req.SET_DEVICE_STATE_FD, deviceStateReplyValue(0, true)));
  t.like(decodeReply(Req.SET_DEVICE_STATE_FD, withFd.header, withFd.payload, [12]), { value: 0n, fd: 12 });
  t.throws(() => decodeReply(Req.SET_DEVICE_STATE_FD, withFd.header, withFd.payload, []), { message: /no-fd bit is clear/ });
  const noFd = reply(encodeU64Reply(Req.SET_DEVICE_STATE_FD, deviceStateReplyValue(0, false)));
  t.like(decodeReply(Req.SET_DEVICE_STATE_FD, noFd.header, noFd.payload), { value: 0x100n, fd: null });
  t.throws(() => decodeReply(Req.SET_DEVICE_STATE_FD, noFd.header, noFd.payload, [3]), { message: /expects none \(the no-fd bit is set\)/ });
  const err = reply(encodeU64Reply(Req.SET_DEVICE_STATE_FD, 5n));
  t.throws(() => decodeReply(Req.SET_DEVICE_STATE_FD, err.header, err.payload, [3]), { message: /the result is an error/ });
  t.throws(() => deviceStateReplyValue(1, true), { instanceOf: RangeError });
});

// --- back-end requests ------------------------------------------------------------------------

const backendSamples: BackendRequest[] = [
  { code: BackendReq.IOTLB_MSG, iotlb: { iova: 0x3000n, size: 0n, userAddr: 0n, perm: 1, type: 1 } },
  { code: BackendReq.CONFIG_CHANGE_MSG },
  { code: BackendReq.VRING_HOST_NOTIFIER_MSG, area: { index: 2, noFd: false, size: 4096n, offset: 8192n }, fd: 30 },
  { code: BackendReq.VRING_CALL, state: { index: 1, num: 0 } },
  { code: BackendReq.VRING_ERR, state: { index: 0, num: 0 } },
  { code: BackendReq.SHARED_OBJECT_ADD, object: { uuid } },
  { code: BackendReq.SHARED_OBJECT_REMOVE, object: { uuid } },
  { code: BackendReq.SHARED_OBJECT_LOOKUP, object: { uuid } },
];

test('back-end requests 1-8 round trip', (t) => {
  t.deepEqual(backendSamples.map((s) => s.code), Object.values(BackendReq));
  for (const req of backendSamples) {
    const { bytes, fds } = encodeBackendRequest(req, true);
    const h = decodeHeader(bytes.subarray(0, HEADER_SIZE), MAX_PAYLOAD_SIZE, 'backend');
    t.deepEqual(decodeBackendRequest(h, bytes.subarray(HEADER_SIZE), fds), {
      ...req, flags: VERSION | FLAG_NEED_REPLY, needReply: true, fds, unknown: false,
    });
  }
});

test('back-end request validation', (t) => {
  const unreg = encodeBackendRequest({ code: BackendReq.VRING_HOST_NOTIFIER_MSG, area: { index: 1, noFd: true, size: 0n, offset: 0n }, fd: null });
  const h = decodeHeader(unreg.bytes.subarray(0, HEADER_SIZE));
  t.like(decodeBackendRequest(h, unreg.bytes.subarray(HEADER_SIZE), []), { fd: null });
  t.is(
    t.throws(() => decodeBackendRequest(h, unreg.bytes.subarray(HEADER_SIZE), [4])).message,
    'BACKEND_VRING_HOST_NOTIFIER_MSG (3): carries 1 fd, expects none (the no-fd bit is set)',
  );
  const cfg = raw(BackendReq.CONFIG_CHANGE_MSG, new Uint8Array(8));
  t.regex(t.throws(() => decodeBackendRequest(cfg.header, cfg.payload, [])).message, /BACKEND_CONFIG_CHANGE_MSG \(2\): payload is 8 bytes, longer/);
  const unk = raw(9, new Uint8Array(0));
  t.like(decodeBackendRequest(unk.header, unk.payload, []), { unknown: true, code: 9 });
});

test('back-end request replies', (t) => {
  const ok = reply(encodeU64Reply(BackendReq.SHARED_OBJECT_LOOKUP, 0n));
  t.like(decodeBackendReply(BackendReq.SHARED_OBJECT_LOOKUP, ok.header, ok.payload, [8]), { value: 0n, fd: 8 });
  const bad = reply(encodeU64Reply(BackendReq.SHARED_OBJECT_LOOKUP, 1n));
  t.throws(() => decodeBackendReply(BackendReq.SHARED_OBJECT_LOOKUP, bad.header, bad.payload, [8]), { message: /fd together with a non-zero/ });
  const ack = reply(encodeU64Reply(BackendReq.CONFIG_CHANGE_MSG, 0n));
  t.like(decodeBackendReply(BackendReq.CONFIG_CHANGE_MSG, ack.header, ack.payload), { kind: 'u64', value: 0n, fd: null });
  t.throws(() => decodeBackendReply(BackendReq.VRING_CALL, ack.header, ack.payload), { message: /reply to BACKEND_VRING_CALL \(4\) carries request code 2 \(BACKEND_CONFIG_CHANGE_MSG \(2\)\)/ });
});
