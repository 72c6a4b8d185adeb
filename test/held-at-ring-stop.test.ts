// A request the device holds (to answer in a later call) when the front-end stops its ring with
// GET_VRING_BASE. The host's decision (docs/design/wit-0.2.md, "Held requests at a ring stop"):
// the base it returns covers it, it is never completed on that ring, now or after a restart, and
// a later answer to it is dropped (test/device-answers.test.ts shows that part); an inflight area
// keeps it marked and the device gets it again when the ring starts with the area
// (test/queue-threads.test.ts). Not lost silently: the host warns with the count, the ring and
// which of the two applies. Here through the real host process, whose log is its stderr.
import test from 'ava';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { startHost } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';

const DEVICE = new URL('./devices/queue-thread-device.ts', import.meta.url).pathname;
const NEEDS_RESET = 0x40;
const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true };

test('GET_VRING_BASE while the device holds a request: the base covers it, the host warns, the restarted ring serves on without it', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--device-module', DEVICE], { env: { VHOST_WASM_TEST_HOLD: '1' } });
  try {
    const fe = await VhostUserFrontend.connect(host.socketPath, opts);
    try {
      const q = fe.queues[0];
      let heldDone = false;
      q.submit([Buffer.from('hold')], 12).then(
        () => (heldDone = true),
        () => {},
      );
      t.is((await withTimeout(q.submit([Buffer.from('ping')], 12), 10_000, 'a ping')).len, 12);
      const base = await fe.stopQueue(0);
      t.is(base, 2, 'both popped requests, the held one too, are behind the base');
      t.truthy(await host.waitForLog(/WARN .*ring 0 stopped \(GET_VRING_BASE\) with 1 request\(s\) the device holds: .*no inflight area: the guest will not get them back/));
      await fe.startQueue(0, base);
      t.is((await withTimeout(q.submit([Buffer.from('ping')], 12), 10_000, 'a ping after the restart')).len, 12);
      t.false(heldDone, 'the held request is not completed on the restarted ring');
      t.is(q.inFlight, 1, 'only the held request is still waiting');
      t.is((await fe.conn.getStatus()) & NEEDS_RESET, 0, 'the device keeps serving');
    } finally {
      await fe.close();
    }
  } finally {
    t.is(await host.stop(), 0, host.log());
  }
});
