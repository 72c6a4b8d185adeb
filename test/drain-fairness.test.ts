// Fairness of a device worker's drain (host/device/runner.ts, DRAIN_TURN_*) through the real host
// process and its socket: a guest that refills one ring as fast as the worker empties it (a
// thread of this process spinning on the ring, helpers/ring-flood.ts) must not keep the worker
// in that ring. The other ring of the same worker is still served, and the front-end's messages
// (GET_VRING_BASE: a ring stop, which the main thread passes to the worker) are answered while
// the flood goes on; the flooded ring itself can be stopped. Split and packed rings (one drain
// serves both). Counts are asserted, not times.
//
// How much of the flood went before a request on the other ring is counted where it happened:
// the device's answer says how many requests its instance had handled by then (the flooded
// ring's too), whatever the scheduler did to this process meanwhile. (On a loaded machine the
// flooding thread is often off its CPU and the ring runs dry anyway: a worker without the bound
// then escapes by luck, so this test catches one only when the flood keeps up for a while.)
import test, { type ExecutionContext } from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { VhostUserConnection } from '../host/frontend/connection.ts';
import { GuestRam } from '../host/frontend/driver-memory.ts';
import { PackedDriverRing } from '../host/frontend/rings/packed.ts';
import { VirtioFeature, bit } from '../host/device/features.ts';
import { decodePackedVringBase } from '../host/virtqueue/packed.ts';
import { native } from '../host/native/index.ts';
import { eventually, startHost, type HostProcess } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { RingFlood } from './helpers/ring-flood.ts';
import { DRAIN_TURN_REQUESTS } from '../host/device/runner.ts';

// Answers every request with 12 bytes: its worker thread's id, the queue, a count.
const DEVICE = new URL('./devices/queue-thread-device.ts', import.meta.url).pathname;
const FLOOD_SIZE = 256;
const ROUNDS = 60;

/** Two queues, one worker thread (no --queue-threads): both rings are served by one event loop. */
const twoRingHost = () => startHost(['--socket-path', '{socket}', '--device-module', DEVICE], { env: { VHOST_WASM_TEST_QUEUES: '2' } });

/** One request on the polite ring: whether its kick is written (asked after a microtask), and its answer. */
type Ask = (i: number) => { kicked: () => boolean; answer: Promise<{ len: number; data: Uint8Array }> };

/**
 * ROUNDS requests on ring 0 while ring 1 is flooded: each answered as queue 0 after at most 4 of
 * the worker's turns of the flood, and the flood going on after each.
 */
async function politeRounds(t: ExecutionContext, f: RingFlood, ask: Ask): Promise<void> {
  t.true(await eventually(() => f.served >= 20_000, 30_000), `the flood got going (${f.served} requests served on ring 1)`);
  const most = 4 * DRAIN_TURN_REQUESTS;
  let worst = 0;
  for (let i = 0; i < ROUNDS; i++) {
    const { kicked, answer } = ask(i);
    await Promise.resolve(); // a kick decided in a microtask after the submit is written by now
    t.true(kicked(), `ring 0 was kicked for request ${i}`);
    // Every flood request handled before the kick is in this count, but for the ring's FLOOD_SIZE in flight.
    const floodBefore = f.served;
    const c = await withTimeout(answer, 20_000, `request ${i} on ring 0 while ring 1 is flooded (the worker never left ring 1)`);
    t.is(c.len, 12);
    const v = new DataView(c.data.buffer, c.data.byteOffset, 12);
    t.is(v.getUint32(4, true), 0, 'answered as queue 0');
    const handled = v.getUint32(8, true); // by the instance serving both rings, this one included
    const floodBetween = handled - i - 1 - floodBefore;
    worst = Math.max(worst, floodBetween);
    t.true(floodBetween <= most, `request ${i} on ring 0 waited for ${floodBetween} flood requests, more than ${most} (4 of the worker's turns)`);
    const during = f.served;
    t.true(await eventually(() => f.served > during, 10_000), `ring 1 still served after request ${i}`);
  }
  t.log(`ring 0's requests waited for at most ${worst} flood requests`);
}

async function stopped(t: ExecutionContext, host: HostProcess): Promise<void> {
  t.is(await host.stop(), 0, host.log());
}

for (const eventIdx of [true, false]) {
  const what = eventIdx ? 'EVENT_IDX' : 'no EVENT_IDX';

  test.serial(`split rings, ${what}: a ring the guest keeps full does not starve the other ring of its worker nor the worker's messages; the flooded ring stops on request`, async (t) => {
    const host = await twoRingHost();
    let flood: RingFlood | null = null;
    try {
      const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx });
      try {
        flood = await RingFlood.start({ conn: fe.conn, memory: fe.memory, eventIdx: fe.hasFeature(VIRTIO_F_EVENT_IDX) }, 1, FLOOD_SIZE);
        const f = flood;
        const q = fe.queues[0];
        await politeRounds(t, f, (i) => {
          const kicks = q.kicks;
          const answer = q.submit([Buffer.from(`polite ${i}`)], 12);
          return { kicked: () => q.kicks === kicks + 1, answer };
        });

        // A ring stop goes from the main thread to the worker as a message: answered during the flood.
        const base0 = await withTimeout(fe.stopQueue(0), 20_000, 'GET_VRING_BASE of ring 0 while ring 1 is flooded');
        t.is(base0, ROUNDS, 'ring 0 stopped after its requests');
        const after = f.served;
        t.true(await eventually(() => f.served > after, 10_000), 'ring 1 still flooded after ring 0 stopped');

        // The flooded ring stops too: once it answered, ring 1's used index is where it stopped
        // (every request popped before the stop completed first), and nothing more comes back.
        const base1 = await withTimeout(fe.conn.getVringBase(1), 20_000, 'GET_VRING_BASE of the flooded ring 1');
        t.true(await eventually(() => f.served % 0x10000 === base1, 10_000), `ring 1's used index reached its base ${base1} (served ${f.served})`);
        const total = await f.stop();
        t.is(total % 0x10000, base1, 'nothing came back on ring 1 after its stop');
        t.log(`${total} requests served on the flooded ring`);
      } finally {
        await flood?.stop().catch(() => {});
        await fe.close();
        flood?.closeFds();
      }
    } finally {
      await stopped(t, host);
    }
  });

  test.serial(`packed rings, ${what}: a ring the guest keeps full does not starve the other ring of its worker nor the worker's messages; the flooded ring stops on request`, async (t) => {
    const host = await twoRingHost();
    const conn = VhostUserConnection.connect(host.socketPath);
    const ram = GuestRam.create({ bytes: 4 << 20 });
    const kick = native.eventfd(0);
    const call = native.eventfd(0);
    let flood: RingFlood | null = null;
    try {
      t.true(((await conn.getFeatures()) & bit(VirtioFeature.RING_PACKED)) !== 0n, 'the host offers VIRTIO_F_RING_PACKED');
      await conn.setProtocolFeatures(await conn.getProtocolFeatures());
      await conn.setOwner();
      await conn.setFeatures(bit(VirtioFeature.VERSION_1) | bit(VirtioFeature.RING_PACKED) | bit(VirtioFeature.PROTOCOL_FEATURES) | (eventIdx ? bit(VirtioFeature.RING_EVENT_IDX) : 0n));
      await conn.setMemTable(ram.memTable());
      // Ring 0, the polite one: one request at a time, its answer looked for in the ring.
      const SIZE = 64;
      const layout = PackedDriverRing.layoutFor(SIZE);
      const gpa = ram.alloc(layout.bytes, 4096);
      const ring = new PackedDriverRing({ size: SIZE, memory: ram.view(gpa, layout.bytes), gpa, eventIdx });
      await conn.setVringNum(0, SIZE);
      await conn.setVringAddr({ index: 0, flags: 0, descUserAddr: BigInt(ram.uva(ring.descGpa)), availUserAddr: BigInt(ram.uva(ring.driverEventGpa)), usedUserAddr: BigInt(ram.uva(ring.deviceEventGpa)), logGuestAddr: 0n });
      await conn.setVringCall(0, call);
      await conn.setVringKick(0, kick);
      await conn.setVringEnable(0, true);
      const rd = ram.alloc(16);
      const wr = ram.alloc(16);

      flood = await RingFlood.start({ conn, memory: ram, eventIdx, packed: true }, 1, FLOOD_SIZE);
      const f = flood;
      await politeRounds(t, f, (i) => {
        ram.view(rd, 16).set(Buffer.from(`polite ${i}`.padEnd(16)));
        ring.add([{ gpa: rd, len: 16 }], [{ gpa: wr, len: 12 }]);
        const kicked = ring.kickNeeded();
        if (kicked) native.eventfdWrite(kick, 1);
        const answer = (async () => {
          for (;;) {
            const used = ring.getUsed();
            if (used.length > 0) return { len: used[0].len, data: ram.view(wr, 12).slice() };
            await sleep(1);
          }
        })();
        return { kicked: () => kicked, answer };
      });

      // Each of ring 0's requests took two ring slots; a packed base is both indexes and wrap counters.
      const slots = (n: number, size: number) => ({ idx: n % size, wrap: Math.floor(n / size) % 2 === 0 });
      const base0 = decodePackedVringBase(await withTimeout(conn.getVringBase(0), 20_000, 'GET_VRING_BASE of ring 0 while ring 1 is flooded'), SIZE);
      t.like(base0, { availIdx: slots(2 * ROUNDS, SIZE).idx, availWrap: slots(2 * ROUNDS, SIZE).wrap, usedIdx: slots(2 * ROUNDS, SIZE).idx, usedWrap: slots(2 * ROUNDS, SIZE).wrap }, 'ring 0 stopped after its requests');
      const after = f.served;
      t.true(await eventually(() => f.served > after, 10_000), 'ring 1 still flooded after ring 0 stopped');

      const base1 = decodePackedVringBase(await withTimeout(conn.getVringBase(1), 20_000, 'GET_VRING_BASE of the flooded ring 1'), FLOOD_SIZE);
      t.is(base1.usedIdx, base1.availIdx, 'every request popped before the stop completed');
      const at = (n: number) => slots(n, FLOOD_SIZE);
      t.true(
        await eventually(() => at(f.served).idx === base1.usedIdx && at(f.served).wrap === base1.usedWrap, 10_000),
        `ring 1's used index reached its base ${JSON.stringify(base1)} (served ${f.served})`,
      );
      const total = await f.stop();
      t.deepEqual([at(total).idx, at(total).wrap], [base1.usedIdx, base1.usedWrap], 'nothing came back on ring 1 after its stop');
      t.log(`${total} requests served on the flooded ring`);
    } finally {
      await flood?.stop().catch(() => {});
      conn.close();
      await conn.closed;
      flood?.closeFds();
      native.close(kick);
      native.close(call);
      ram.close();
      await stopped(t, host);
    }
  });
}
