// The host's network path between two devices of one process (host/net): frames/s and
// Gbit/s one way, and the round trip of one frame, through two TypeScript net test devices on
// one segment driven by our front-end driver (no guest kernel, no virtio-net header).
//   npx tsx bench/net-switch.ts [--frames 200000] [--size 1514] [--depth 128] [--pings 2000]
// Both front-ends run in this process too, so its CPU is the driver's and the host's together.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { Host } from '../host/server/index.ts';
import { setLogLevel } from '../host/log/logger.ts';
import { frame, HEADER, RX, TX } from '../test/devices/net-test-device.ts';

const { values: v } = parseArgs({ options: { frames: { type: 'string', default: '200000' }, size: { type: 'string', default: '1514' }, depth: { type: 'string', default: '128' }, pings: { type: 'string', default: '2000' } } });
const FRAMES = Number(v.frames);
const SIZE = Number(v.size);
const DEPTH = Number(v.depth);
const PINGS = Number(v.pings);
setLogLevel('warn');

const dir = mkdtempSync(join(tmpdir(), 'bench-net-'));
const url = new URL('../test/devices/net-test-device.ts', import.meta.url).href;
const dev = (label: string) => ({ label, listen: { path: join(dir, `${label}.sock`) }, source: { kind: 'module' as const, url }, networks: ['seg0'], callDeadlineMs: 10_000 });
const host = await Host.start([dev('a'), dev('b')]);
const opts: FrontendOptions = { memoryBytes: 64 << 20, queues: [256, 256], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: false };
const [a, b] = await Promise.all([VhostUserFrontend.connect(join(dir, 'a.sock'), opts), VhostUserFrontend.connect(join(dir, 'b.sock'), opts)]);
const stats = (l: string) => host.devices.find((d) => d.config.label === l)!.slot.netStats()!;

// One way: b keeps 256 rx buffers posted; a keeps DEPTH frames in flight towards b (port 2).
let received = 0;
const keepRx = (fe: VhostUserFrontend, onFrame: (data: Uint8Array, len: number) => void) => {
  const post = () =>
    fe.queues[RX].submit([], SIZE + HEADER).then(
      (c) => {
        onFrame(c.data, c.len);
        post();
      },
      () => {},
    );
  for (let i = 0; i < 256; i++) post();
};
keepRx(b, () => received++);
await new Promise((r) => setTimeout(r, 100));
const payload = frame(2, new Uint8Array(SIZE - 14));
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let sent = 0;
await new Promise<void>((resolve) => {
  let inFlight = 0;
  const more = () => {
    while (inFlight < DEPTH && sent < FRAMES) {
      sent++;
      inFlight++;
      a.queues[TX].submit([payload], 1).then(() => {
        inFlight--;
        if (sent < FRAMES) more();
        else if (inFlight === 0) resolve();
      });
    }
  };
  more();
});
while (received + stats('b').rxUnread + stats('b').rxQueueDrops + stats('a').txDrops < FRAMES) await new Promise((r) => setTimeout(r, 5));
const secs = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const s = stats('b');
console.log(`one way, ${SIZE}-byte frames, depth ${DEPTH}: ${(received / secs).toFixed(0)} frames/s received, ${((received * SIZE * 8) / secs / 1e9).toFixed(2)} Gbit/s; ` +
  `dropped: ${s.rxQueueDrops} inbox full, ${s.rxUnread} without an rx buffer, ${stats('a').txDrops} switch behind; bench process CPU ${(((cpu.user + cpu.system) / 1e6 / secs) * 100).toFixed(0)}%`);

// Round trip: a sends one frame to b, b's driver sends it back to a (port 1), one at a time.
let pong: (() => void) | null = null;
keepRx(a, () => pong?.());
const back = frame(1, new Uint8Array(50));
const ping = frame(2, new Uint8Array(50));
const forward = () => void b.queues[TX].submit([back], 1);
const rtts: number[] = [];
for (let i = 0; i < PINGS; i++) {
  const start = performance.now();
  await new Promise<void>((resolve) => {
    pong = resolve;
    const before = received;
    void a.queues[TX].submit([ping], 1);
    const wait = () => (received > before ? forward() : setImmediate(wait));
    wait();
  });
  rtts.push(performance.now() - start);
}
rtts.sort((x, y) => x - y);
console.log(`round trip of a 64-byte frame a -> b -> a (driver in the loop): median ${(rtts[rtts.length >> 1] * 1000).toFixed(0)} us, p99 ${(rtts[Math.floor(rtts.length * 0.99)] * 1000).toFixed(0)} us`);
await Promise.all([a.close(), b.close()]);
await host.close();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
