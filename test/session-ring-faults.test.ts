// A guest that writes hostile descriptors: the ring is marked broken (DEVICE_NEEDS_RESET, the
// front-end is told through a config-change message), the error names the queue and index,
// and every other device on the same host keeps serving.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../host/native/index.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { Host } from '../host/server/index.ts';
import { setLogSink } from '../host/log/logger.ts';

const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;
const STATUS_NEEDS_RESET = 0x40;

let dir: string;
let host: Host;
const lines: string[] = [];

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ring-faults-'));
  const device = { kind: 'module' as const, url: new URL('./devices/null-device.ts', import.meta.url).href, options: { mode: 'echo' } };
  host = await Host.start([
    { label: 'victim', listen: { path: join(dir, 'victim.sock') }, source: device },
    { label: 'bystander', listen: { path: join(dir, 'bystander.sock') }, source: device },
  ]);
  setLogSink((l) => lines.push(l));
});

test.after.always(async () => {
  setLogSink(null);
  await host?.close();
  rmSync(dir, { recursive: true, force: true });
});

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: true };

interface Desc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

/** Writes raw descriptors into the victim's ring and publishes `head` in the avail ring. */
function inject(fe: VhostUserFrontend, descs: Desc[], extra?: { gpa: number; table: Desc[] }): void {
  const q = fe.queues[0];
  const ring = q.ring;
  const table = fe.memory.view(ring.descGpa, ring.size * 16);
  const dv = new DataView(table.buffer, table.byteOffset, table.byteLength);
  descs.forEach((d, i) => {
    dv.setBigUint64(i * 16, d.addr, true);
    dv.setUint32(i * 16 + 8, d.len, true);
    dv.setUint16(i * 16 + 12, d.flags, true);
    dv.setUint16(i * 16 + 14, d.next, true);
  });
  if (extra) {
    const ind = fe.memory.view(extra.gpa, extra.table.length * 16);
    const idv = new DataView(ind.buffer, ind.byteOffset, ind.byteLength);
    extra.table.forEach((d, i) => {
      idv.setBigUint64(i * 16, d.addr, true);
      idv.setUint32(i * 16 + 8, d.len, true);
      idv.setUint16(i * 16 + 12, d.flags, true);
      idv.setUint16(i * 16 + 14, d.next, true);
    });
  }
  const avail = fe.memory.view(ring.availGpa, 4 + 2 * ring.size);
  const av = new DataView(avail.buffer, avail.byteOffset, avail.byteLength);
  const idx = av.getUint16(2, true);
  av.setUint16(4 + 2 * (idx % ring.size), 0, true);
  av.setUint16(2, (idx + 1) & 0xffff, true);
  native.eventfdWrite(q.kickFd);
}

async function waitFor(re: RegExp, timeoutMs = 5000): Promise<string> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const hit = lines.find((l) => re.test(l));
    if (hit) return hit;
    if (Date.now() > end) throw new Error(`no log line matched ${re}:\n${lines.join('')}`);
    await sleep(10);
  }
}

const faults: { name: string; expect: RegExp; build: (fe: VhostUserFrontend) => void }[] = [
  {
    name: 'a descriptor loop (chain longer than the queue)',
    expect: /virtqueue 0: .*longer than queue size 16/,
    build: (fe) => {
      const buf = BigInt(fe.memory.alloc(64));
      inject(fe, [
        { addr: buf, len: 16, flags: NEXT, next: 1 },
        { addr: buf, len: 16, flags: NEXT, next: 0 },
      ]);
    },
  },
  {
    name: 'a buffer address outside guest memory',
    expect: /virtqueue 0: .*0xffff00000000/,
    build: (fe) => inject(fe, [{ addr: 0xffff00000000n, len: 16, flags: 0, next: 0 }]),
  },
  {
    name: 'a length that overflows past the end of memory',
    expect: /virtqueue 0: .*(outside|overflow|unmapped|not mapped)/i,
    build: (fe) => inject(fe, [{ addr: BigInt(fe.memory.alloc(64)), len: 0xffffffff, flags: WRITE, next: 0 }]),
  },
  {
    name: 'an indirect table inside an indirect table',
    expect: /virtqueue 0: .*indirect/i,
    build: (fe) => {
      const tbl = fe.memory.alloc(64);
      const buf = BigInt(fe.memory.alloc(64));
      inject(fe, [{ addr: BigInt(tbl), len: 32, flags: INDIRECT, next: 0 }], {
        gpa: tbl,
        table: [
          { addr: buf, len: 32, flags: INDIRECT | NEXT, next: 1 },
          { addr: buf, len: 16, flags: WRITE, next: 0 },
        ],
      });
    },
  },
];

for (const f of faults) {
  test.serial(`${f.name}: ring broken, NEEDS_RESET, front-end told, other device unaffected`, async (t) => {
    lines.length = 0;
    const victim = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
    const bystander = await VhostUserFrontend.connect(join(dir, 'bystander.sock'), opts);
    const configChanged = new Promise<void>((resolve) => victim.backend?.once('config-change', () => resolve()));
    try {
      // The victim works before the fault.
      t.is((await victim.queues[0].submit([Buffer.from('before')], 16)).len, 6);
      f.build(victim);
      const line = await waitFor(/needs a reset/);
      t.regex(line, f.expect);
      t.regex(line, /avail index|descriptor|head/);
      await configChanged;
      t.is((await victim.conn.getStatus()) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
      // The other device on the same host still serves.
      const r = await bystander.queues[0].submit([Buffer.from('still here')], 32);
      t.is(Buffer.from(r.data.subarray(0, r.len)).toString(), 'still here');
    } finally {
      await bystander.close();
      await victim.close();
    }
    // A new connection gets a reset device that serves again.
    const again = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
    try {
      t.is((await again.conn.getStatus()) & STATUS_NEEDS_RESET, 0);
      t.is((await again.queues[0].submit([Buffer.from('after')], 16)).len, 5);
    } finally {
      await again.close();
    }
  });
}
