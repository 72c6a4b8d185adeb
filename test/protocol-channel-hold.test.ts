// MessageChannel.hold()/release(), what a live host handover relies on (docs/upgrade.md, "Host
// upgrade"): the channel stops at a message boundary. A message already begun is read whole and
// its handler runs to the end before hold() resolves; one that comes while held stays in the
// socket, unread (for whichever process reads the socket next), until release().
import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../host/native/index.ts';
import { MessageChannel } from '../host/protocol/channel.ts';
import { encodeRequest } from '../host/protocol/codec.ts';
import { Req } from '../host/protocol/requests.ts';
import type { RawMessage } from '../host/protocol/messages.ts';

function message(num: number): Uint8Array {
  return encodeRequest({ code: Req.SET_VRING_NUM, state: { index: 0, num } }).bytes;
}

test('hold() waits for a half-received message and its handler; a message sent while held stays in the socket until release()', async (t) => {
  const [ours, peer] = native.socketpair();
  const seen: RawMessage[] = [];
  let finishHandler: () => void = () => {};
  const channel = new MessageChannel(ours, {
    onMessage: (m) => {
      seen.push(m);
      // The first message's handler runs until the test lets it finish.
      if (seen.length === 1) return new Promise<void>((r) => (finishHandler = r));
    },
  });
  t.teardown(() => {
    channel.close();
    native.close(peer);
  });
  const first = message(64);
  native.sendMsg(peer, first.subarray(0, 5), []);
  await sleep(20);
  let held = false;
  const holding = channel.hold().then(() => (held = true));
  await sleep(20);
  t.false(held, 'not held in the middle of a message');
  native.sendMsg(peer, first.subarray(5), []);
  await sleep(20);
  t.is(seen.length, 1, 'the message begun was read whole and delivered');
  t.false(held, 'not held while its handler runs');
  finishHandler();
  await holding;
  t.true(held);
  native.sendMsg(peer, message(128), []);
  await sleep(50);
  t.is(seen.length, 1, 'nothing is read while held');
  // Another reader of the same socket (the new host) would find the message whole.
  const peek = Buffer.alloc(64);
  const other = native.dup(ours);
  const r = native.recvMsg(other, peek, 0);
  native.close(other);
  t.truthy(r);
  t.is(r!.bytes, message(128).length);
  // What it read is gone: the held channel reads the next one after release().
  native.sendMsg(peer, message(256), []);
  channel.release();
  for (let i = 0; i < 100 && seen.length < 2; i++) await sleep(5);
  t.is(seen.length, 2);
  t.is(new DataView(seen[1].payload.buffer, seen[1].payload.byteOffset).getUint32(4, true), 256);
});

test('a channel started held reads nothing until release()', async (t) => {
  const [ours, peer] = native.socketpair();
  const seen: RawMessage[] = [];
  const channel = new MessageChannel(ours, { startHeld: true, onMessage: (m) => void seen.push(m) });
  t.teardown(() => {
    channel.close();
    native.close(peer);
  });
  native.sendMsg(peer, message(64), []);
  await sleep(50);
  t.is(seen.length, 0);
  channel.release();
  for (let i = 0; i < 100 && seen.length < 1; i++) await sleep(5);
  t.is(seen.length, 1);
});
