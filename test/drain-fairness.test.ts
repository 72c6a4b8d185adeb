// Fairness of a device worker's drain (host/device/runner.ts, DRAIN_TURN_*) through the real host
// process and its socket: a guest that refills one ring as fast as the worker empties it (a
// thread of this process spinning on the ring, helpers/ring-flood.ts) must not keep the worker
// in that ring. The other ring of the same worker is still served, and the front-end's messages
// (GET_VRING_BASE: a ring stop, which the main thread passes to the worker) are answered while
// the flood goes on; the flooded ring itself can be stopped. Counts are asserted, not times.
import test from 'ava';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { eventually, startHost } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';
import { RingFlood } from './helpers/ring-flood.ts';
import { DRAIN_TURN_REQUESTS } from '../host/device/runner.ts';

// Answers every request with 12 bytes: its worker thread's id, the queue, a count.
const DEVICE = new URL('./devices/queue-thread-device.ts', import.meta.url).pathname;

for (const eventIdx of [true, false]) {
  test.serial(`${eventIdx ? 'EVENT_IDX' : 'no EVENT_IDX'}: a ring the guest keeps full does not starve the other ring of its worker nor the worker's messages; the flooded ring stops on request`, async (t) => {
    // Two queues, one worker thread (no --queue-threads): both rings are served by one event loop.
    const host = await startHost(['--socket-path', '{socket}', '--device-module', DEVICE], { env: { VHOST_WASM_TEST_QUEUES: '2' } });
    let flood: RingFlood | null = null;
    try {
      const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx });
      try {
        flood = await RingFlood.start(fe, 1, 256);
        const f = flood;
        t.true(await eventually(() => f.served >= 20_000, 30_000), `the flood got going (${f.served} requests served on ring 1)`);

        // Ring 0 of the same worker: every request answered while ring 1 is flooded, within a
        // few of the worker's turns. The device's answer says how many requests its instance
        // had handled by then (ring 1's too), so how much of the flood went before ring 0's
        // request is counted where it happened, whatever the scheduler did to this process.
        const q = fe.queues[0];
        const ROUNDS = 60;
        const most = 4 * DRAIN_TURN_REQUESTS;
        let worst = 0;
        for (let i = 0; i < ROUNDS; i++) {
          const kicks = q.kicks;
          const answer = q.submit([Buffer.from(`polite ${i}`)], 12);
          await Promise.resolve(); // the kick goes in a microtask after submit: written by now
          t.is(q.kicks, kicks + 1, 'ring 0 was kicked');
          // Every flood request handled before the kick is in this count, but for the ring's 256 in flight.
          const floodBefore = f.served;
          const c = await withTimeout(answer, 20_000, `request ${i} on ring 0 while ring 1 is flooded (the worker never left ring 1)`);
          t.is(c.len, 12);
          const v = new DataView(c.data.buffer, c.data.byteOffset, 12);
          t.is(v.getUint32(4, true), 0, 'answered as queue 0');
          const handled = v.getUint32(8, true); // by the instance serving both rings, this one included
          const floodBetween = handled - i - 1 - floodBefore;
          worst = Math.max(worst, floodBetween);
          t.true(floodBetween <= most, `request ${i} on ring 0 waited for ${floodBetween} flood requests, more than ${most} (4 of the worker's turns)`);
          // The flood went on meanwhile: ring 1's requests kept coming back.
          const during = f.served;
          t.true(await eventually(() => f.served > during, 10_000), `ring 1 still served after request ${i}`);
        }
        t.log(`ring 0's requests waited for at most ${worst} flood requests`);

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
      t.is(await host.stop(), 0, host.log());
    }
  });
}
