// Networks in the daemon as an operator runs them: the built binary, `serve --config` with two
// devices granted "network": ["seg0"] and one on "seg1", real front-ends exchanging frames
// through the switch of that one process, and the per-device frame counters read back from the
// Prometheus exposition (frames and bytes each way, drops by reason, frames queued now) and
// from `ctl stats`.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { deviceModule, REPO } from './helpers/host-process.ts';
import { ctl, scrapeMetrics, startDaemonWith, type DaemonProcess } from './helpers/daemon-process.ts';
import { frame, HEADER, RX, STATUS_SENT, TX } from './devices/net-test-device.ts';

const opts: FrontendOptions = { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: false };
let dir: string;
let daemon: DaemonProcess;
const sock = (name: string) => join(dir, `${name}.sock`);

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'net-daemon-'));
  const module = deviceModule(join(REPO, 'test', 'devices', 'net-test-device.ts'));
  const dev = (id: string, network: string[]) => ({ id, tenant: 'acme', socket: `${id}.sock`, module, grants: { network }, limits: { callDeadlineMs: 10_000 } });
  daemon = await startDaemonWith(dir, { control: sock('control'), metrics: `unix:${sock('metrics')}`, devices: [dev('a', ['seg0']), dev('b', ['seg0']), dev('c', ['seg1'])] });
});

test.after.always(async () => {
  await daemon?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const scrape = () => scrapeMetrics(sock('metrics'));

const sample = (text: string, name: string, labels: string) => {
  const m = new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : null;
};

test('two devices of one daemon on seg0 exchange frames; seg1 hears nothing; the exposition counts them', async (t) => {
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((id) => VhostUserFrontend.connect(sock(id), opts)));
  try {
    const post = async (fe: VhostUserFrontend) => {
      const p = fe.queues[RX].submit([], 2048);
      p.catch(() => {});
      while (!fe.queues[RX].ring.deviceIdle()) await sleep(5);
      // Wrapped: an async function returning the promise itself would wait for the frame.
      return { p };
    };
    const { p: bRx } = await post(b);
    await post(c);
    const { p: aRx } = await post(a);
    const hello = frame('broadcast', 'hello seg0');
    t.is((await a.queues[TX].submit([hello], 1)).data[0], STATUS_SENT);
    const gotB = await bRx;
    t.deepEqual(gotB.data.slice(HEADER, gotB.len), hello);
    const port = new DataView(gotB.data.buffer, gotB.data.byteOffset).getUint32(0, true);
    const back = frame(port, 'hello a');
    t.is((await b.queues[TX].submit([back], 1)).data[0], STATUS_SENT);
    const gotA = await aRx;
    t.deepEqual(gotA.data.slice(HEADER, gotA.len), back);

    const text = await scrape();
    t.is(sample(text, 'vhost_wasm_device_net_frames_total', 'device="a",tenant="acme",direction="tx"'), 1);
    t.is(sample(text, 'vhost_wasm_device_net_frames_total', 'device="a",tenant="acme",direction="rx"'), 1);
    t.is(sample(text, 'vhost_wasm_device_net_bytes_total', 'device="b",tenant="acme",direction="rx"'), hello.length);
    t.is(sample(text, 'vhost_wasm_device_net_frames_total', 'device="c",tenant="acme",direction="rx"'), 0);
    t.is(sample(text, 'vhost_wasm_device_net_dropped_total', 'device="c",tenant="acme",reason="unread"'), 0);
    t.is(sample(text, 'vhost_wasm_device_net_queued_frames', 'device="b",tenant="acme"'), 0);
    const stats = await ctl(['--control', sock('control'), 'stats', 'a']);
    t.is(stats.code, 0, stats.stderr);
    t.regex(stats.stdout, new RegExp(`network seg0: sent 1 frame\\(s\\) \\(${hello.length} bytes\\), read 1 \\(${back.length} bytes\\), 0 queued`));
  } finally {
    await Promise.all([a, b, c].map((f) => f.close()));
  }
});
