// The front-end connection against a scripted back-end on a socketpair: REPLY_ACK handling,
// error attribution, the back-end request socket, raw sends, and fd hygiene.
import test from 'ava';
import { readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { native } from '../host/native/index.ts';
import { MessageChannel } from '../host/protocol/channel.ts';
import { decodeBackendReply, decodeRequest, encodeBackendRequest, encodeReply, encodeU64Reply, encodeVringStateReply, frame } from '../host/protocol/codec.ts';
import { ProtocolFeature, VERSION, featureBit } from '../host/protocol/constants.ts';
import { BackendReq, Req } from '../host/protocol/requests.ts';
import type { AnyDecodedRequest, RawMessage } from '../host/protocol/messages.ts';
import { fdSnapshot, fdsOpenedSince } from './helpers/fd-snapshot.ts';


interface FakeBackend {
  seen: AnyDecodedRequest[];
  backendFd: () => number | null;
  channel: MessageChannel;
}

/** A back-end that answers from a script; `answer` returns reply bytes or null (no reply). */
function fakeBackend(fd: number, answer: (req: AnyDecodedRequest) => Uint8Array | null): FakeBackend {
  const seen: AnyDecodedRequest[] = [];
  let backendFd: number | null = null;
  const channel = new MessageChannel(fd, {
    label: 'fake back-end',
    onMessage: async (m: RawMessage) => {
      const req = decodeRequest(m.header, m.payload, m.fds);
      seen.push(req);
      if (!req.unknown && req.code === Req.SET_BACKEND_REQ_FD) backendFd = req.fd;
      else for (const f of m.fds) native.close(f);
      const reply = answer(req);
      if (reply !== null) await channel.send(reply);
    },
  });
  return { seen, backendFd: () => backendFd, channel };
}

const PROTO = featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.BACKEND_REQ);

function script(req: AnyDecodedRequest): Uint8Array | null {
  if (req.unknown) return req.needReply ? encodeU64Reply(req.code, 1) : null;
  switch (req.code) {
    case Req.GET_PROTOCOL_FEATURES:
      return encodeU64Reply(req.code, PROTO);
    case Req.GET_VRING_BASE:
      // Answers for another ring when asked about ring 3, to exercise the check.
      return encodeVringStateReply({ index: req.state.index === 3 ? 4 : req.state.index, num: 42 });
    case Req.GET_CONFIG:
      return encodeReply(req.code, new Uint8Array(3)); // malformed: shorter than the config header
    case Req.SET_VRING_NUM:
      return req.needReply ? encodeU64Reply(req.code, req.state.num > 256 ? 1 : 0) : null;
    default:
      return req.needReply ? encodeU64Reply(req.code, 0) : null;
  }
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (cond()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

test.serial('NEED_REPLY only after REPLY_ACK, only on requests without a reply; a failing ack names the request', async (t) => {
  const before = fdSnapshot();
  const [a, b] = native.socketpair();
  const fake = fakeBackend(b, script);
  const conn = VhostUserConnection.fromFd(a);
  await conn.setOwner();
  t.is(await conn.getProtocolFeatures(), PROTO);
  await conn.setProtocolFeatures(PROTO);
  await conn.setVringNum(0, 128);
  const err = await t.throwsAsync(conn.setVringNum(0, 1024));
  t.regex(err!.message, /SET_VRING_NUM \(8\) failed/);
  t.is(await conn.getVringBase(0), 42);
  await t.throwsAsync(conn.getVringBase(3), { message: /asked for ring 3, the reply is for ring 4/ });
  // The connection survives a failed ack and a mismatched answer.
  await conn.setVringEnable(0, true);
  t.deepEqual(fake.seen.map((r) => [r.code, r.needReply]), [
    [Req.SET_OWNER, false],
    [Req.GET_PROTOCOL_FEATURES, false],
    [Req.SET_PROTOCOL_FEATURES, false],
    [Req.SET_VRING_NUM, true],
    [Req.SET_VRING_NUM, true],
    [Req.GET_VRING_BASE, false],
    [Req.GET_VRING_BASE, false],
    [Req.SET_VRING_ENABLE, true],
  ]);
  conn.close();
  fake.channel.close();
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('a malformed reply closes the connection with an error naming the request', async (t) => {
  const before = fdSnapshot();
  const [a, b] = native.socketpair();
  const fake = fakeBackend(b, script);
  const conn = VhostUserConnection.fromFd(a);
  await t.throwsAsync(conn.getConfig(0, 8), { message: /GET_CONFIG \(24\)/ });
  t.regex((await conn.closed) ?? '', /bad reply to GET_CONFIG/);
  await t.throwsAsync(conn.getFeatures(), { message: /closed/ });
  fake.channel.close();
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('back-end requests: CONFIG_CHANGE_MSG is an event and acked 0; an unsupported one is refused', async (t) => {
  const before = fdSnapshot();
  const [a, b] = native.socketpair();
  const fake = fakeBackend(b, script);
  const conn = VhostUserConnection.fromFd(a);
  await conn.setProtocolFeatures(PROTO);
  const backend = await conn.setBackendReqFd();
  const theirs = fake.backendFd();
  t.not(theirs, null);
  let changes = 0;
  backend.on('config-change', () => changes++);
  const replies: RawMessage[] = [];
  const peer = new MessageChannel(theirs!, { codes: 'backend', label: 'fake back-end request socket' });
  const ask = async (code: number) => {
    const enc = encodeBackendRequest(code === BackendReq.CONFIG_CHANGE_MSG ? { code } : { code: BackendReq.SHARED_OBJECT_ADD, object: { uuid: new Uint8Array(16) } }, true);
    const r = (await peer.request(enc.bytes, enc.fds, true))!;
    replies.push(r);
    return decodeBackendReply(code, r.header, r.payload, r.fds);
  };
  t.like(await ask(BackendReq.CONFIG_CHANGE_MSG), { kind: 'u64', value: 0n });
  t.like(await ask(BackendReq.SHARED_OBJECT_ADD), { kind: 'u64', value: 1n });
  // Without NEED_REPLY nothing comes back, the event still fires.
  await peer.send(encodeBackendRequest({ code: BackendReq.CONFIG_CHANGE_MSG }).bytes);
  await until(() => changes === 2, 'two config-change events');
  t.is(backend.counts.get(BackendReq.CONFIG_CHANGE_MSG), 2);
  conn.close();
  t.true(backend.closed);
  peer.close();
  fake.channel.close();
  t.deepEqual(fdsOpenedSince(before), []);
});

test.serial('sendRaw puts bytes and fds on the wire as given', async (t) => {
  const before = fdSnapshot();
  const [a, b] = native.socketpair();
  const fake = fakeBackend(b, script);
  const conn = VhostUserConnection.fromFd(a);
  const efd = native.eventfd(7);
  // SET_VRING_CALL with the no-fd bit clear but sent raw: the fd must travel with it.
  const payload = new Uint8Array(8);
  payload[0] = 2;
  await conn.sendRaw(frame(Req.SET_VRING_CALL, VERSION, payload), [efd]);
  native.close(efd);
  const r = await conn.sendRaw(frame(Req.GET_PROTOCOL_FEATURES, VERSION), [], true);
  t.is(r!.header.request, Req.GET_PROTOCOL_FEATURES);
  const call = fake.seen.find((x) => x.code === Req.SET_VRING_CALL)!;
  t.like(call, { unknown: false, index: 2 });
  conn.close();
  fake.channel.close();
  t.deepEqual(fdsOpenedSince(before), []);
});
