// The request table (host/protocol/requests.ts) checked as a table: every entry round-trips,
// says what it is, and the facts derived from it match the spec.
import test from 'ava';
import { MAX_FDS } from '../host/protocol/constants.ts';
import {
  BackendReq, Req, backendHasReply, backendRequests, describeRequest, frontendRequest, frontendRequests, hasReply,
  requestName, requiredFeature, type BackendReqName, type ReqName,
} from '../host/protocol/requests.ts';
import { RfcStateReq, decodeRfcStateRequest, encodeRfcStateRequest, type RfcStateRequest } from '../host/protocol/rfc-state-shm.ts';
import { decodeBackendRequest, decodeHeader, decodeRequest, encodeBackendRequest, encodeRequest } from '../host/protocol/codec.ts';
import { HEADER_SIZE } from '../host/protocol/constants.ts';
import type { BackendRequest, Encoded, FrontendRequest } from '../host/protocol/messages.ts';

const split = (e: Encoded) => ({ header: decodeHeader(e.bytes.subarray(0, HEADER_SIZE)), payload: e.bytes.subarray(HEADER_SIZE) });

const region = (i: number) => ({
  guestPhysAddr: 0x1_0000_0000n * BigInt(i),
  memorySize: 0x20_0000n,
  userspaceAddr: 0x7f00_0000_0000n + BigInt(i) * 0x1000n,
  mmapOffset: BigInt(i) * 4096n,
});
const uuid = Uint8Array.from({ length: 16 }, (_, i) => 255 - i);
const inflight = { mmapSize: 4096n, mmapOffset: 0n, numQueues: 1, queueSize: 256 };

// One value per request; the mapped type makes the compiler insist on every code.
const samples: { [N in ReqName]: Extract<FrontendRequest, { code: (typeof Req)[N] }> } = {
  GET_FEATURES: { code: Req.GET_FEATURES },
  SET_FEATURES: { code: Req.SET_FEATURES, features: 0xffff_ffff_ffff_ffffn },
  SET_OWNER: { code: Req.SET_OWNER },
  RESET_OWNER: { code: Req.RESET_OWNER },
  SET_MEM_TABLE: { code: Req.SET_MEM_TABLE, regions: [1, 2].map((i) => ({ ...region(i), fd: 20 + i })) },
  SET_LOG_BASE: { code: Req.SET_LOG_BASE, log: { mmapSize: 8192n, mmapOffset: 0n }, fd: 30 },
  SET_LOG_FD: { code: Req.SET_LOG_FD, fd: 31 },
  SET_VRING_NUM: { code: Req.SET_VRING_NUM, state: { index: 1, num: 512 } },
  SET_VRING_ADDR: {
    code: Req.SET_VRING_ADDR,
    addr: { index: 2, flags: 1, descUserAddr: 1n, usedUserAddr: 2n, availUserAddr: 3n, logGuestAddr: 4n },
  },
  SET_VRING_BASE: { code: Req.SET_VRING_BASE, state: { index: 0, num: 7 } },
  GET_VRING_BASE: { code: Req.GET_VRING_BASE, state: { index: 3, num: 0 } },
  SET_VRING_KICK: { code: Req.SET_VRING_KICK, index: 4, fd: 32 },
  SET_VRING_CALL: { code: Req.SET_VRING_CALL, index: 5, fd: null },
  SET_VRING_ERR: { code: Req.SET_VRING_ERR, index: 6, fd: 33 },
  GET_PROTOCOL_FEATURES: { code: Req.GET_PROTOCOL_FEATURES },
  SET_PROTOCOL_FEATURES: { code: Req.SET_PROTOCOL_FEATURES, features: 1n << 19n },
  GET_QUEUE_NUM: { code: Req.GET_QUEUE_NUM },
  SET_VRING_ENABLE: { code: Req.SET_VRING_ENABLE, state: { index: 0, num: 1 } },
  SEND_RARP: { code: Req.SEND_RARP, mac: 0x5254_0000_0001n },
  NET_SET_MTU: { code: Req.NET_SET_MTU, mtu: 9000n },
  SET_BACKEND_REQ_FD: { code: Req.SET_BACKEND_REQ_FD, fd: 34 },
  IOTLB_MSG: { code: Req.IOTLB_MSG, iotlb: { iova: 1n, size: 2n, userAddr: 3n, perm: 1, type: 3 } },
  SET_VRING_ENDIAN: { code: Req.SET_VRING_ENDIAN, state: { index: 0, num: 0 } },
  GET_CONFIG: { code: Req.GET_CONFIG, config: { offset: 4, flags: 0, data: new Uint8Array(8) } },
  SET_CONFIG: { code: Req.SET_CONFIG, config: { offset: 0, flags: 1, data: Uint8Array.of(9, 8, 7) } },
  CREATE_CRYPTO_SESSION: { code: Req.CREATE_CRYPTO_SESSION, session: Uint8Array.from({ length: 40 }, (_, i) => i) },
  CLOSE_CRYPTO_SESSION: { code: Req.CLOSE_CRYPTO_SESSION, sessionId: 7n },
  POSTCOPY_ADVISE: { code: Req.POSTCOPY_ADVISE },
  POSTCOPY_LISTEN: { code: Req.POSTCOPY_LISTEN },
  POSTCOPY_END: { code: Req.POSTCOPY_END },
  GET_INFLIGHT_FD: { code: Req.GET_INFLIGHT_FD, inflight },
  SET_INFLIGHT_FD: { code: Req.SET_INFLIGHT_FD, inflight, fd: 35 },
  GPU_SET_SOCKET: { code: Req.GPU_SET_SOCKET, fd: 36 },
  RESET_DEVICE: { code: Req.RESET_DEVICE },
  VRING_KICK: { code: Req.VRING_KICK, state: { index: 1, num: 0 } },
  GET_MAX_MEM_SLOTS: { code: Req.GET_MAX_MEM_SLOTS },
  ADD_MEM_REG: { code: Req.ADD_MEM_REG, region: { ...region(3), fd: 37 } },
  REM_MEM_REG: { code: Req.REM_MEM_REG, region: region(3) },
  SET_STATUS: { code: Req.SET_STATUS, status: 0x0fn },
  GET_STATUS: { code: Req.GET_STATUS },
  GET_SHARED_OBJECT: { code: Req.GET_SHARED_OBJECT, object: { uuid } },
  SET_DEVICE_STATE_FD: { code: Req.SET_DEVICE_STATE_FD, params: { direction: 1, phase: 0 }, fd: 38 },
  CHECK_DEVICE_STATE: { code: Req.CHECK_DEVICE_STATE },
};

const backendSamples: { [N in BackendReqName]: Extract<BackendRequest, { code: (typeof BackendReq)[N] }> } = {
  IOTLB_MSG: { code: BackendReq.IOTLB_MSG, iotlb: { iova: 4n, size: 5n, userAddr: 6n, perm: 2, type: 1 } },
  CONFIG_CHANGE_MSG: { code: BackendReq.CONFIG_CHANGE_MSG },
  VRING_HOST_NOTIFIER_MSG: { code: BackendReq.VRING_HOST_NOTIFIER_MSG, area: { index: 1, noFd: false, size: 4096n, offset: 0n }, fd: 40 },
  VRING_CALL: { code: BackendReq.VRING_CALL, state: { index: 0, num: 0 } },
  VRING_ERR: { code: BackendReq.VRING_ERR, state: { index: 1, num: 0 } },
  SHARED_OBJECT_ADD: { code: BackendReq.SHARED_OBJECT_ADD, object: { uuid } },
  SHARED_OBJECT_REMOVE: { code: BackendReq.SHARED_OBJECT_REMOVE, object: { uuid } },
  SHARED_OBJECT_LOOKUP: { code: BackendReq.SHARED_OBJECT_LOOKUP, object: { uuid } },
};

test('every front-end request round-trips encode -> bytes -> decode, with and without XEN_MMAP regions', (t) => {
  t.is(Object.keys(samples).length, Object.keys(Req).length);
  for (const xenMmap of [false, true]) {
    for (const req of Object.values(samples) as FrontendRequest[]) {
      const enc = encodeRequest(req, true, { xenMmap });
      const { header, payload } = split(enc);
      t.is(header.request, req.code);
      t.true(header.needReply);
      const back = decodeRequest(header, payload, enc.fds, { xenMmap });
      t.false(back.unknown, requestName(req.code));
      const expected = xenMmap && 'regions' in req ? { ...req, regions: req.regions.map((r) => ({ ...r, xen: { mmapFlags: 0, domid: 0 } })) }
        : xenMmap && 'region' in req ? { ...req, region: { ...req.region, xen: { mmapFlags: 0, domid: 0 } } }
        : req;
      t.like(back, expected as object, requestName(req.code));
      t.deepEqual(back.fds, enc.fds, `${requestName(req.code)} keeps its fds in order`);
      t.is(back.flags, header.flags, `${requestName(req.code)}: no body field shadows the header's flags`);
    }
  }
});

test('every back-end request round-trips encode -> bytes -> decode', (t) => {
  t.is(Object.keys(backendSamples).length, Object.keys(BackendReq).length);
  for (const req of Object.values(backendSamples) as BackendRequest[]) {
    const enc = encodeBackendRequest(req);
    const { header, payload } = split(enc);
    const back = decodeBackendRequest(header, payload, enc.fds);
    t.false(back.unknown);
    t.like(back, req as object);
  }
});

test('the extension\'s requests round-trip through their table entries too', (t) => {
  const reqs: RfcStateRequest[] = [
    { code: RfcStateReq.SET_STATE_AREA, size: 1n << 20n, mmapOffset: 0n, direction: 0, flags: 0, fd: 9 },
    { code: RfcStateReq.SET_STATE_AREA, size: 0n, mmapOffset: 0n, direction: 1, flags: 0, fd: null },
    { code: RfcStateReq.GET_STATE, offset: 4096n, size: 65536n },
    { code: RfcStateReq.SET_STATE, offset: 0n, size: 1n },
  ];
  for (const req of reqs) {
    const enc = encodeRfcStateRequest(req);
    const { header, payload } = split(enc);
    t.like(decodeRfcStateRequest(header, payload, enc.fds), req);
    // Without the extension asked for, the same bytes are an unknown request.
    t.true(decodeRequest(header, payload, enc.fds).unknown);
  }
});

test('every entry has a one-line description and a payload layout name; fd rules stay within a message\'s fds', (t) => {
  const all = [...frontendRequests(), ...backendRequests()];
  t.true(all.length >= Object.keys(Req).length + Object.keys(BackendReq).length + Object.keys(RfcStateReq).length);
  for (const e of all) {
    t.regex(e.description, /^\S[^\n]{9,}$/, `${e.name} needs a one-line description`);
    t.regex(e.payload.layout, /\S/, `${e.name}'s payload layout has a name`);
    t.regex(e.fds.summary, /\S/, `${e.name}'s fd rule says what it is`);
    t.true(e.fds.max <= MAX_FDS, `${e.name} accepts at most ${MAX_FDS} fds`);
  }
});

test('the set of requests that always have a reply is the spec\'s', (t) => {
  // vhost-user.rst, "Front-end message types": the requests whose reply is defined whether or
  // not NEED_REPLY is set. SET_LOG_BASE counts in its LOG_SHMFD form, the only one accepted.
  // (SET_MEM_TABLE and ADD_MEM_REG answer on their own only in postcopy mode, which this
  // back-end does not offer: for them a reply is the REPLY_ACK one.)
  const spec: ReqName[] = [
    'GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'GET_VRING_BASE', 'SET_LOG_BASE', 'GET_QUEUE_NUM', 'IOTLB_MSG',
    'GET_CONFIG', 'CREATE_CRYPTO_SESSION', 'POSTCOPY_ADVISE', 'POSTCOPY_END', 'GET_INFLIGHT_FD', 'GET_MAX_MEM_SLOTS',
    'GET_STATUS', 'GET_SHARED_OBJECT', 'SET_DEVICE_STATE_FD', 'CHECK_DEVICE_STATE',
  ];
  const fromTable = (Object.keys(Req) as ReqName[]).filter((n) => hasReply(Req[n]));
  t.deepEqual(fromTable.sort(), [...spec].sort());
  const backendFromTable = (Object.keys(BackendReq) as BackendReqName[]).filter((n) => backendHasReply(BackendReq[n]));
  t.deepEqual(backendFromTable, ['SHARED_OBJECT_LOOKUP']);
  // An extension request is unknown unless negotiated: no reply is owed for it here.
  t.false(hasReply(RfcStateReq.GET_STATE));
  t.true(frontendRequest(RfcStateReq.GET_STATE, true)?.reply.when === 'always');
});

test('feature gates and debug text come from the table', (t) => {
  t.is(requiredFeature(Req.GET_FEATURES), undefined);
  t.is(requiredFeature(Req.SET_DEVICE_STATE_FD), 19);
  t.is(requiredFeature(Req.ADD_MEM_REG), 15);
  t.is(requiredFeature(999), undefined);
  t.is(describeRequest(samples.SET_VRING_CALL), ' ring 5 no fd');
  t.is(describeRequest(samples.SET_FEATURES), ' 0xffffffffffffffff');
  t.is(describeRequest(samples.GET_FEATURES), '');
  t.is(describeRequest({ code: RfcStateReq.GET_STATE, offset: 4096n, size: 10n } as RfcStateRequest), ' offset 4096 size 10');
});
