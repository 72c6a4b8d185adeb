// The blk plugin on two queue threads under a real guest: QEMU 7.2's vhost-user-blk-pci with
// num-queues=2 (of the 64 the device offers) and a 2-vCPU Linux guest, so blk-mq maps vCPU 0
// to ring 0 and vCPU 1 to ring 1; the host runs with --queue-threads 2 over one memory disk,
// then over one image file (each thread opens it; the test reads the file afterwards).
// The guest writes from one vCPU and reads back from the other (one disk across two threads),
// flushes from both, and a second boot on the same host reads it all back. The host's log
// says which thread served which ring and how far each ring got when QEMU stopped it.
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, hasQemu, type BootResult } from './guest/qemu.ts';
import { eventually, REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const BLK_PLUGIN = join(REPO, 'dist', 'plugins', 'blk.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu();
const guestTest = skip ? test.serial.skip : test.serial;
const BOOT_TIMEOUT = 120_000;
const MiB = 1 << 20;

const A = randomBytes(4 * MiB);
const B = randomBytes(4 * MiB);
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');
const field = (out: string, name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(out)?.[1];
/** dd of 4 MiB at MiB offset `at`, on vCPU `cpu` (its blk-mq queue: ring `cpu`). */
const readOn = (cpu: number, at: number) => `taskset ${1 << cpu} dd if=/dev/vda bs=64k skip=${at * 16} count=64 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1`;

const WRITE_SCRIPT = [
  'set -e',
  'echo "queues: $(ls /sys/block/vda/mq | wc -l)"',
  // Each written from its own vCPU, so through its own ring; conv=fsync ends each with a FLUSH on that ring.
  'taskset 1 dd if=/guest/a of=/dev/vda bs=64k seek=0 oflag=direct conv=fsync 2>/dev/null',
  'taskset 2 dd if=/guest/b of=/dev/vda bs=64k seek=64 oflag=direct conv=fsync 2>/dev/null',
  // Read back crosswise: what one thread's instance wrote, the other one reads.
  `echo "a via ring 1: $(${readOn(1, 0)})"`,
  `echo "b via ring 0: $(${readOn(0, 4)})"`,
].join('\n');

const READ_SCRIPT = [
  'set -e',
  `echo "a via ring 0: $(${readOn(0, 0)})"`,
  `echo "b via ring 1: $(${readOn(1, 4)})"`,
].join('\n');

const blkDevice = (sock: string) => ['-chardev', `socket,id=d0,path=${sock}`, '-device', 'vhost-user-blk-pci,chardev=d0,num-queues=2'];

function explain(r: BootResult, host: HostProcess): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n--- console ---\n${r.output}\n--- qemu stderr ---\n${r.qemuStderr}\n--- host log ---\n${host.log()}`;
}

/** Mappings of memfds other than the memory disk (the guests' RAM) in the host process. */
const guestMappings = (h: HostProcess) =>
  readFileSync(`/proc/${h.child.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:') && !l.includes('vhost-wasm-memory-disk')).length;

/** Avail index each ring stopped at, per QEMU run (the host logs it when QEMU stops the ring). */
function stops(host: HostProcess, ring: number): { thread: number; base: number }[] {
  const re = new RegExp(`ring ${ring} stopped on queue thread (\\d+) \\(thread id \\d+\\) at avail index (\\d+)`, 'g');
  return [...host.log().matchAll(re)].map((m) => ({ thread: Number(m[1]), base: Number(m[2]) }));
}

for (const kind of ['memory', 'file'] as const) {
  guestTest(`num-queues=2 with --queue-threads 2: a 2-vCPU guest uses both rings, each on its own thread, over one ${kind === 'memory' ? 'memory disk' : 'image file'}`, async (t) => {
    t.timeout(400_000);
    if (!existsSync(BLK_PLUGIN)) return t.fail(`${BLK_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
    const dir = mkdtempSync(join(tmpdir(), 'qemu-blk-queues-'));
    const image = join(dir, 'disk.img');
    if (kind === 'file') writeFileSync(image, Buffer.alloc(64 * MiB));
    const storage = kind === 'memory' ? 'memory:64M' : image;
    const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK_PLUGIN, '--storage', storage, '--queue-threads', '2', '--log-level', 'debug']);
    try {
      t.truthy(await host.waitForLog(/blk runs in 2 queue threads/));
      const r1 = await bootGuest({ timeoutMs: BOOT_TIMEOUT, smp: 2, qemuArgs: blkDevice(host.socketPath), files: { 'guest/a': A, 'guest/b': B }, script: WRITE_SCRIPT });
      t.log(`1st QEMU: ${r1.durationMs} ms`);
      t.is(r1.exitCode, 0, explain(r1, host));
      t.is(field(r1.scriptOutput, 'queues'), '2', `the guest sees two queues\n${r1.scriptOutput}`);
      t.is(field(r1.scriptOutput, 'a via ring 1'), md5(A), 'written through ring 0, read through ring 1');
      t.is(field(r1.scriptOutput, 'b via ring 0'), md5(B), 'written through ring 1, read through ring 0');
      t.true(await eventually(() => host.log().includes('front-end disconnected'), 10_000), host.log());
      t.regex(host.log(), /ring 0 is served by queue thread 0 \(thread id \d+\)/);
      t.regex(host.log(), /ring 1 is served by queue thread 1 \(thread id \d+\)/);
      for (const ring of [0, 1]) {
        const s = stops(host, ring);
        t.log(`ring ${ring} stopped at: ${s.map((x) => `${x.base} (thread ${x.thread})`).join(', ')}`);
        t.true(s.length > 0 && s.every((x) => x.thread === ring) && s.some((x) => x.base > 0), `ring ${ring} ran on thread ${ring}: ${JSON.stringify(s)}\n${host.log()}`);
      }

      if (kind === 'file') {
        // Each write ended with a FLUSH on its own ring: both are in the file.
        const img = readFileSync(image);
        t.true(img.subarray(0, 4 * MiB).equals(A) && img.subarray(4 * MiB, 8 * MiB).equals(B), 'the image file holds what both rings wrote');
      }

      const r2 = await bootGuest({ timeoutMs: BOOT_TIMEOUT, smp: 2, qemuArgs: blkDevice(host.socketPath), script: READ_SCRIPT });
      t.is(r2.exitCode, 0, explain(r2, host));
      t.is(field(r2.scriptOutput, 'a via ring 0'), md5(A), 'the disk kept what the first guest wrote');
      t.is(field(r2.scriptOutput, 'b via ring 1'), md5(B));
      t.true(await eventually(() => host.log().split('front-end disconnected').length - 1 === 2, 10_000), host.log());
      t.true(await eventually(() => guestMappings(host) === 0), `guest memory still mapped after both guests left: ${guestMappings(host)} mappings`);
      t.notRegex(host.log(), / ERROR /, host.log());
    } finally {
      t.is(await host.stop(), 0, host.log());
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
