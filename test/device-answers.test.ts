// WIT 0.2's data path through a real host: a device's answers are checked before anything
// moves (a hostile answer fails only that device, naming the action and the rule, and nothing
// of its batch is written), a failed backing write comes back to the device as io-failed and
// its second answer is what the guest sees, a held request completes when a later call
// answers it, and the used ring takes completions in completion order. A request held across
// a memory-table change is answered where its guest addresses are now; when they are gone, the
// device fails naming the request (never a reply reported written that went nowhere).
// Needs root for a tiny tmpfs (a backing that fills up: ENOSPC).
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { Host } from '../host/server/index.ts';
import { setLogSink } from '../host/log/logger.ts';
import { BAD_RULES, PREFIX, STATUS_IOERR, STATUS_OK, command } from './devices/script-device.ts';
import { Rule } from '../host/device/answer-check.ts';
import { mountTmpfs, type Tmpfs } from './helpers/small-tmpfs.ts';
import { scriptDeviceServes, withTimeout } from './helpers/device-checks.ts';
import { fillRegion } from './helpers/fill-region.ts';

const STATUS_NEEDS_RESET = 0x40;
const DISK_BYTES = 1 << 20;

let dir: string;
let fullFs: Tmpfs | undefined;
let full: string;
let disk: string;
let host: Host;
const lines: string[] = [];

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'device-answers-'));
  disk = join(dir, 'disk.raw');
  writeFileSync(disk, Buffer.alloc(0));
  truncateSync(disk, DISK_BYTES);
  // A 64 KiB file system under a 1 MiB sparse image: the first large write runs out of space.
  fullFs = mountTmpfs('64k', { prefix: 'vhost-wasm-answers-full-' });
  full = fullFs.path;
  writeFileSync(join(full, 'sparse.raw'), Buffer.alloc(0));
  truncateSync(join(full, 'sparse.raw'), DISK_BYTES);
  const script = new URL('./devices/script-device.ts', import.meta.url).href;
  host = await Host.start([
    { label: 'victim', listen: { path: join(dir, 'victim.sock') }, source: { kind: 'module', url: script, options: { file: disk } } },
    { label: 'full', listen: { path: join(dir, 'full.sock') }, source: { kind: 'module', url: script, options: { file: join(full, 'sparse.raw') } } },
    { label: 'bystander', listen: { path: join(dir, 'bystander.sock') }, source: { kind: 'module', url: new URL('./devices/null-device.ts', import.meta.url).href, options: { mode: 'echo' } } },
  ]);
  setLogSink((l) => lines.push(l));
});

test.after.always(async () => {
  setLogSink(null);
  await host?.close();
  fullFs?.unmount();
  rmSync(dir, { recursive: true, force: true });
});

const opts: FrontendOptions = { memoryBytes: 4 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: false };

async function waitFor(re: RegExp, timeoutMs = 5000): Promise<string> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const hit = lines.find((l) => re.test(l));
    if (hit) return hit;
    if (Date.now() > end) throw new Error(`no log line matched ${re}:\n${lines.join('')}`);
    await sleep(10);
  }
}

const text = (c: { data: Uint8Array; len: number }) => Buffer.from(c.data.subarray(0, c.len)).toString('latin1');

/** The used ring's elements so far: [id, len] in the order the host published them. */
function usedElements(fe: VhostUserFrontend): { id: number; len: number }[] {
  const ring = fe.queues[0].ring;
  const hdr = fe.memory.view(ring.usedGpa, 4);
  const idx = new DataView(hdr.buffer, hdr.byteOffset).getUint16(2, true);
  const els = fe.memory.view(ring.usedGpa + 4, 8 * 16);
  const dv = new DataView(els.buffer, els.byteOffset, els.byteLength);
  return Array.from({ length: idx }, (_, i) => ({ id: dv.getUint32(8 * (i % 16), true), len: dv.getUint32(8 * (i % 16) + 4, true) }));
}

const ruleText: Record<string, string> = {
  'piece-past-writable': Rule.replyFits,
  'transfer-outside-readable': Rule.transferInside,
  'extent-past-backing': Rule.extentInside,
  'write-read-only': Rule.readOnly,
  'backing-not-granted': Rule.granted,
  'unknown-id': Rule.unknownId,
  'duplicate-answer': Rule.duplicate,
  'missing-answer': Rule.missing,
  'length-at-outside-reply': Rule.lengthAt,
  'too-many-pieces': Rule.bounds,
  'send-without-network': Rule.sendNetwork,
};

for (const rule of BAD_RULES) {
  test.serial(`a hostile answer (${rule}) fails only that device, naming the rule; nothing of its batch is written; the bystander serves`, async (t) => {
    lines.length = 0;
    const victim = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
    const bystander = await VhostUserFrontend.connect(join(dir, 'bystander.sock'), opts);
    try {
      t.is(text(await victim.queues[0].submit([command('echo before')], 32)), 'echo before');
      const usedBefore = usedElements(victim).length;
      // One batch: a good write and the hostile request, added while the device is idle and
      // kicked together (added while it still drains, the good one could be popped alone).
      while (!victim.queues[0].ring.deviceIdle()) await new Promise((r) => setTimeout(r, 1));
      const payload = Buffer.alloc(512, 0xab);
      const good = victim.queues[0].submit([command('write 4096'), payload], 1);
      const bad = victim.queues[0].submit([command(`bad ${rule}`), Buffer.alloc(8, 1)], 64);
      good.catch(() => {});
      bad.catch(() => {});
      const line = await waitFor(/device needs a reset/);
      t.true(line.includes(`breaks the rule "${ruleText[rule]}"`), line);
      t.regex(line, rule === 'missing-answer' ? /the result breaks/ : rule === 'send-without-network' ? /action \d+ \(send\)/ : /action \d+ \(answer to request \d+\)/);
      t.is((await victim.conn.getStatus()) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
      // Nothing of the batch: the good write never reached the disk, nothing reached the used ring.
      t.deepEqual(readFileSync(disk).subarray(4096, 4096 + 512), Buffer.alloc(512));
      t.is(usedElements(victim).length, usedBefore);
      const r = await bystander.queues[0].submit([Buffer.from('still here')], 32);
      t.is(text(r), 'still here');
    } finally {
      await bystander.close();
      await victim.close();
    }
    // A new connection gets a fresh device that serves again.
    await scriptDeviceServes(t, join(dir, 'victim.sock'), opts);
  });
}

test.serial('transfers and backing reads move the payload between guest memory and the disk, the device never sees it', async (t) => {
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
  try {
    const payload = Buffer.alloc(3000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 13 + 5) & 0xff;
    const w = await fe.queues[0].submit([command('write 8192'), payload.subarray(0, 1000), payload.subarray(1000)], 1);
    t.is(w.len, 1);
    t.is(w.data[0], STATUS_OK);
    t.deepEqual(readFileSync(disk).subarray(8192, 8192 + 3000), payload);
    // Read back into three writable buffers: split at the buffers' boundaries by the host.
    const r = await fe.queues[0].submit([command('read 8192 3000')], [100, 2000, 900]);
    t.is(r.len, 3000);
    t.deepEqual(Buffer.from(r.data.subarray(0, 3000)), payload);
  } finally {
    await fe.close();
  }
});

test.serial('a backing write that fails (ENOSPC): the device hears io-failed, its second answer is what the guest sees, and it serves on', async (t) => {
  const fe = await VhostUserFrontend.connect(join(dir, 'full.sock'), opts);
  try {
    const small = await fe.queues[0].submit([command('write 0'), Buffer.alloc(4096, 7)], 1);
    t.is(small.data[0], STATUS_OK);
    const big = await fe.queues[0].submit([command('write 65536'), Buffer.alloc(256 * 1024, 9)], 1);
    t.is(big.len, 1);
    t.is(big.data[0], STATUS_IOERR);
    t.is((await fe.conn.getStatus()) & STATUS_NEEDS_RESET, 0);
    t.is(text(await fe.queues[0].submit([command('echo still serving')], 32)), 'echo still serving');
  } finally {
    await fe.close();
  }
});

test.serial('a held request completes when a later call answers it; the used ring takes completions in completion order', async (t) => {
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
  try {
    const q = fe.queues[0];
    let heldDone = false;
    const held = q.submit([command('hold')], 8).then((c) => {
      heldDone = true;
      return c;
    });
    // Served while the first is held: it overtakes it.
    t.is(text(await q.submit([command('echo after hold')], 32)), 'echo after hold');
    t.false(heldDone, 'the held request is not completed by a call that did not answer it');
    t.is(text(await q.submit([command('echo more')], 32)), 'echo more');
    t.false(heldDone);
    const release = await q.submit([command('release')], 16);
    t.is(text(release), 'released');
    t.is(text(await held), 'R');
    // Popped: hold, echo, echo, release. Completed: echo (15), echo (9), hold (1), release (8).
    t.deepEqual(
      usedElements(fe).map((e) => e.len),
      ['echo after hold'.length, 'echo more'.length, 1, 'released'.length],
    );
  } finally {
    await fe.close();
  }
});

test.serial('GET_VRING_BASE while the device holds a request: its later answer is dropped, not written into the restarted ring', async (t) => {
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
  try {
    const q = fe.queues[0];
    let heldDone = false;
    q.submit([command('hold')], 8).then(
      () => (heldDone = true),
      () => {},
    );
    t.is(text(await q.submit([command('echo before stop')], 32)), 'echo before stop');
    const base = await fe.stopQueue(0);
    t.is(base, 2, 'both popped requests, the held one too, are behind the base');
    await fe.startQueue(0, base);
    // The device answers the held request now ("R"), then the release: only the release lands.
    t.is(text(await q.submit([command('release')], 16)), 'released');
    t.false(heldDone);
    t.deepEqual(usedElements(fe).map((e) => e.len), ['echo before stop'.length, 'released'.length]);
    t.is((await fe.conn.getStatus()) & STATUS_NEEDS_RESET, 0, 'the device keeps serving');
  } finally {
    await fe.close();
  }
});

test.serial('SET_MEM_TABLE while the device holds a request: its later answer lands in the guest memory the new table maps there', async (t) => {
  // A fresh connection: fresh (zeroed) guest RAM, so the held reply's buffer holds no "R" unless the host writes it.
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
  try {
    const q = fe.queues[0];
    const held = q.submit([command('hold')], 8);
    t.is(text(await q.submit([command('echo before remap')], 32)), 'echo before remap');
    // The same RAM again (new fds): the host maps it anew and unmaps the mapping the held request's views are in.
    await fe.conn.setMemTable(fe.memory.memTable());
    t.is(text(await q.submit([command('release')], 16)), 'released');
    const c = await withTimeout(held, 10_000, 'the held request');
    t.is(c.len, 1);
    t.is(text(c), 'R', 'the reply is in the guest buffer the used ring reports written');
    t.is((await fe.conn.getStatus()) & STATUS_NEEDS_RESET, 0, 'the device keeps serving');
  } finally {
    await fe.close();
  }
});

test.serial('REM_MEM_REG of the region a held request writes into: its answer cannot land, the device fails naming the request, ring and guest address; nothing is reported written; the bystander serves', async (t) => {
  lines.length = 0;
  // Two regions described with ADD_MEM_REG; region 0 (the ring's) is filled so the held request's buffers go to region 1.
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), { ...opts, memoryBytes: 8 << 20, memory: { regionBytes: 4 << 20 }, addMemReg: true });
  const bystander = await VhostUserFrontend.connect(join(dir, 'bystander.sock'), opts);
  try {
    const q = fe.queues[0];
    const freeRegion0 = fillRegion(fe);
    const held = q.submit([command('hold')], 8);
    held.catch(() => {});
    t.is(text(await q.submit([command('echo in region 1')], 32)), 'echo in region 1');
    const usedBefore = usedElements(fe).length;
    // Room in region 0 again: the release's buffers are there, only the held request's are in region 1.
    freeRegion0();
    const region1 = fe.memory.memTable()[1];
    await fe.conn.remMemReg({ guestPhysAddr: region1.guestPhysAddr, memorySize: region1.memorySize, userspaceAddr: region1.userspaceAddr, mmapOffset: region1.mmapOffset });
    q.submit([command('release')], 16).catch(() => {});
    const line = await waitFor(/device needs a reset/);
    const m = /request \d+ \(descriptor head \d+\) on ring 0: its writable buffer at guest address (0x[0-9a-f]+) \(\+8\) is no longer in guest memory/.exec(line);
    t.truthy(m, line);
    const gpa = Number(m![1]);
    t.true(gpa >= Number(region1.guestPhysAddr) && gpa < Number(region1.guestPhysAddr + region1.memorySize), `the address named (${m![1]}) is in the removed region`);
    t.is((await fe.conn.getStatus()) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
    t.is(usedElements(fe).length, usedBefore, 'neither the held request nor the release reached the used ring');
    t.is(text(await bystander.queues[0].submit([Buffer.from('still here')], 32)), 'still here');
  } finally {
    await bystander.close();
    await fe.close();
  }
});

test.serial('the host meters the most CPU one call into a device ran (what a state transfer\'s chunks are held to): a 30 ms call shows, the bystander\'s quick calls do not', async (t) => {
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
  const bystander = await VhostUserFrontend.connect(join(dir, 'bystander.sock'), opts);
  try {
    t.is(text(await bystander.queues[0].submit([Buffer.from('quick')], 32)), 'quick');
    t.is(text(await fe.queues[0].submit([command('burn 30')], 16)), 'burnt');
    const work = (label: string) => host.devices.find((d) => d.config.label === label)!.slot.meter.work();
    const longest = work('victim').longestCallCpuSeconds;
    t.true(longest >= 0.03, `the 30 ms call is metered (${(longest * 1000).toFixed(1)} ms of CPU)`);
    const quick = work('bystander').longestCallCpuSeconds;
    t.true(quick < 0.01, `the bystander's quick calls are not (${(quick * 1000).toFixed(1)} ms; 0 when every one took under 2 ms)`);
  } finally {
    await bystander.close();
    await fe.close();
  }
});

test.serial('a front-end that goes away while the device holds a request: the next connection is served', async (t) => {
  const fe = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
  fe.queues[0].submit([command('hold')], 8).catch(() => {});
  t.is(text(await fe.queues[0].submit([command('echo x')], 32)), 'echo x');
  await fe.close();
  const again = await VhostUserFrontend.connect(join(dir, 'victim.sock'), opts);
  try {
    // The reset dropped the held request: a release answers nothing but itself.
    t.is(text(await again.queues[0].submit([command('release')], 16)), 'released');
    t.deepEqual(usedElements(again).map((e) => e.len), ['released'.length]);
  } finally {
    await again.close();
  }
  t.is(PREFIX, 32);
});
