// Used-buffer notifications (the call eventfd) as the driver asks for them, through the real host
// process and its socket: a driver waiting on its call fd gets a call for every completion it
// waits for (a missed one would leave it waiting: the test times out), and a driver that
// suppressed them (EVENT_IDX: used_event parked away; without it: VRING_AVAIL_F_NO_INTERRUPT)
// and polls its used ring gets none, however many batches the host runs. Both with and without
// EVENT_IDX, since the host judges them by different fields. The host merges notifications of
// batches it runs back to back (host/device/runner.ts, drain); this is the rule it must keep.
import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import type { Completion } from '../host/frontend/queue.ts';
import { NULL_DEVICE, startHost } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';

const REQUESTS = 500; // several ring-fulls (64 slots): many batches, many drains

for (const eventIdx of [true, false]) {
  const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx };
  const what = eventIdx ? 'EVENT_IDX' : 'no EVENT_IDX (flags)';

  test(`${what}: a driver that asks for calls gets one for what it waits on; one that suppressed them gets none`, async (t) => {
    const host = await startHost(['--socket-path', '{socket}', '--device-module', NULL_DEVICE]);
    try {
      const fe = await VhostUserFrontend.connect(host.socketPath, opts);
      try {
        t.is(fe.hasFeature(VIRTIO_F_EVENT_IDX), eventIdx);
        const q = fe.queues[0];
        const check = (rs: Completion[], tag: string) =>
          rs.forEach((r, i) => {
            if (Buffer.from(r.data.subarray(0, r.len)).toString() !== `${tag} ${i}`) t.fail(`${tag} request ${i} came back as ${Buffer.from(r.data).toString()}`);
          });

        // Asking (the default): completions arrive only through the call fd's watcher.
        for (let round = 0; round < 3; round++) {
          const rs = await withTimeout(Promise.all(Array.from({ length: REQUESTS }, (_, i) => q.submit([Buffer.from(`ask${round} ${i}`)], 16))), 20_000, `round ${round} of requests waiting on calls`);
          check(rs, `ask${round}`);
        }
        t.true(q.calls >= 1, 'the waiting driver was called');
        // One request alone, waited on: its own call.
        const callsBefore = q.calls;
        t.is((await withTimeout(q.submit([Buffer.from('one')], 16), 10_000, 'a lone request waiting on a call')).len, 3);
        t.true(q.calls > callsBefore, 'a lone request is signalled');

        // Suppressed: the driver polls the used ring; nothing may be written to its call fd.
        await sleep(50); // a call still on its way for the rounds above is counted before the mark
        const mark = q.calls;
        q.suppressCalls();
        const all = Promise.all(Array.from({ length: REQUESTS }, (_, i) => q.submit([Buffer.from(`poll ${i}`)], 16)));
        let done = false;
        all.then(() => (done = true), () => (done = true));
        for (let spins = 0; !done && spins < 20_000; spins++) {
          q.reap();
          await sleep(1);
        }
        check(await withTimeout(all, 1_000, 'the polled requests'), 'poll');
        await sleep(200); // a call written late would have been seen by now
        t.is(q.calls, mark, 'no call while notifications were suppressed');

        // Asking again after polling: the next completion is signalled.
        q.poll();
        t.is((await withTimeout(q.submit([Buffer.from('again')], 16), 10_000, 'a request after calls were asked for again')).len, 5);
        t.true(q.calls > mark, 'calls come again once asked for');
      } finally {
        await fe.close();
      }
    } finally {
      t.is(await host.stop(), 0, host.log());
    }
  });
}
