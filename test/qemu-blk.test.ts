// The virtio-blk plugin (dist/plugins/blk.wasm) in the real host binary serving a real Linux
// guest through QEMU 7.2's vhost-user-blk-pci (issue "virtio-blk plugin and the host binary
// under real QEMU"). Three boots against one host process over a fresh raw image:
//   1. the guest writes patterns with direct I/O at known offsets (one in the last sector),
//      reads them back, tries to write/read past the end, makes an ext2 filesystem over the
//      first 16 MiB, writes files, syncs, unmounts; the test then reads the image file
//      from the host side: patterns at their offsets, files through `debugfs` (e2fsprogs).
//   2. the guest runs a direct-I/O dd loop and QEMU is SIGKILLed in the middle of it: the
//      host logs the disconnect, frees the device (fds, memfd mappings back to baseline).
//   3. a third QEMU on the same socket: the guest reads the patterns and the files back,
//      writes one more file (seen by debugfs afterwards); the same QEMU also attaches a
//      second host serving another image with --read-only: the guest sees a read-only disk,
//      reads it, its write fails and the file is unchanged.
// (Two hosts on one socket path is covered by test/cli.test.ts.)

import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, hasQemu, type BootResult } from './guest/qemu.ts';
import { eventually, REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const BLK_PLUGIN = join(REPO, 'dist', 'plugins', 'blk.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu() || !existsSync('/usr/sbin/debugfs');
const guestTest = skip ? test.serial.skip : test.serial;

const MiB = 1 << 20;
const SECTOR = 512;
const DISK = 32 * MiB;
const CAPACITY = DISK / SECTOR; // 65536 sectors
const RO_DISK = 8 * MiB;
const FS_KIB = 16 * 1024; // the filesystem covers the first 16 MiB; patterns live above it
const BOOT_TIMEOUT = 120_000;

/** Patterns written by the guest with dd oflag=direct: [name, byte offset, bytes]. */
const PATTERNS: [string, number, Buffer][] = [
  ['a', 20 * MiB, randomBytes(64 << 10)], // 64 KiB, 64 KiB-aligned
  ['b', 24 * MiB + SECTOR, randomBytes(3 * SECTOR)], // 3 sectors at an odd sector
  ['c', DISK - SECTOR, randomBytes(SECTOR)], // the last sector of the disk
];
/** Files the guest puts on the filesystem: name -> content. */
const FILES: Record<string, Buffer> = {
  'hello.txt': Buffer.from('hello from a guest of vhost-wasm\n'),
  'odd.bin': randomBytes(5001),
  'big.bin': randomBytes(300 << 10),
};
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');
const field = (out: string, name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(out)?.[1];
/** dd of pattern p, in sectors (each pattern's offset and length are whole sectors). */
const ddArgs = (off: number, len: number) => `bs=${SECTOR} seek=${off / SECTOR} count=${len / SECTOR}`;
const ddRead = (dev: string, off: number, len: number) =>
  `dd if=${dev} bs=${SECTOR} skip=${off / SECTOR} count=${len / SECTOR} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1`;

const guestFiles: Record<string, Buffer> = {};
for (const [n, , b] of PATTERNS) guestFiles[`guest/p${n}`] = b;
for (const [n, b] of Object.entries(FILES)) guestFiles[`guest/f/${n}`] = b;

const WRITE_SCRIPT = [
  'set -e',
  'echo "size: $(cat /sys/block/vda/size)"',
  'echo "ro: $(cat /sys/block/vda/ro)"',
  ...PATTERNS.map(([n, off, b]) => `dd if=/guest/p${n} of=/dev/vda ${ddArgs(off, b.length)} oflag=direct 2>/dev/null`),
  ...PATTERNS.map(([n, off, b]) => `echo "readback ${n}: $(${ddRead('/dev/vda', off, b.length)})"`),
  // One sector past the end: the write must fail, the read must return nothing.
  `if dd if=/guest/pc of=/dev/vda bs=${SECTOR} seek=${CAPACITY} count=1 oflag=direct 2>/tmp/err; then echo "past end write: ok"; else echo "past end write: failed $(grep -io 'writing.*' /tmp/err | head -1)"; fi`,
  `echo "past end read: $(dd if=/dev/vda bs=${SECTOR} skip=${CAPACITY} count=1 iflag=direct 2>/dev/null | wc -c) bytes"`,
  `mke2fs -F /dev/vda ${FS_KIB} >/dev/null`,
  'mount -t ext2 /dev/vda /mnt',
  'mkdir /mnt/data',
  'cp /guest/f/* /mnt/data/',
  'sync',
  'umount /mnt',
  'echo "fs: written"',
].join('\n');

// Runs until QEMU is killed: 2 MiB direct writes and reads above the filesystem, below pattern c.
const LOOP_SCRIPT = [
  'set -e',
  'dd if=/dev/urandom of=/tmp/r bs=1M count=2 2>/dev/null',
  'i=0',
  'while true; do',
  '  i=$((i+1))',
  '  dd if=/tmp/r of=/dev/vda bs=1M seek=28 count=2 oflag=direct 2>/dev/null',
  '  dd if=/dev/vda of=/dev/null bs=1M skip=28 count=2 iflag=direct 2>/dev/null',
  '  echo "LOOP $i"',
  'done',
].join('\n');

const NEW_FILE = Buffer.from('written after a SIGKILLed QEMU\n');
const roImage = randomBytes(RO_DISK);
const READ_SCRIPT = [
  'set -e',
  'echo "size: $(cat /sys/block/vda/size)"',
  ...PATTERNS.map(([n, off, b]) => `echo "pattern ${n}: $(${ddRead('/dev/vda', off, b.length)})"`),
  'mount -t ext2 /dev/vda /mnt',
  ...Object.keys(FILES).map((n) => `echo "file ${n}: $(md5sum < /mnt/data/${n} | cut -d' ' -f1)"`),
  `printf '${NEW_FILE.toString().replace('\n', '\\n')}' > /mnt/data/new.txt`,
  'umount /mnt',
  // The read-only disk from the second host.
  'echo "ro size: $(cat /sys/block/vdb/size)"',
  'echo "ro flag: $(cat /sys/block/vdb/ro)"',
  `echo "ro md5: $(dd if=/dev/vdb bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"`,
  'if dd if=/guest/pa of=/dev/vdb bs=4096 count=1 oflag=direct 2>/tmp/err; then echo "ro write: ok"; else echo "ro write: failed $(grep -io "can.t open.*\\|writing.*" /tmp/err | head -1)"; fi',
].join('\n');

function explain(r: BootResult, ...hosts: HostProcess[]): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} aborted=${r.aborted} qemu=${r.qemuExitCode} ${r.durationMs} ms\n` +
    `--- console ---\n${r.output}\n--- qemu stderr ---\n${r.qemuStderr}\n` +
    hosts.map((h, i) => `--- host ${i} log ---\n${h.log()}`).join('\n');
}

const blkDevice = (id: string, sock: string) =>
  ['-chardev', `socket,id=${id},path=${sock}`, '-device', `vhost-user-blk-pci,chardev=${id},num-queues=1`];

async function released(t: ExecutionContext, host: HostProcess, baselineFds: number, disconnects: number, when: string) {
  t.true(await eventually(() => host.log().split('front-end disconnected').length - 1 === disconnects, 10_000),
    `${when}: expected ${disconnects} disconnects in the host log:\n${host.log()}`);
  t.true(await eventually(() => host.memfdMappings() === 0), `${when}: memfd mappings left: ${host.memfdMappings()}`);
  t.true(await eventually(() => host.fdCount() === baselineFds), `${when}: fds ${host.fdCount()} vs baseline ${baselineFds}`);
}

/** A file's content inside the ext2 filesystem of an image, read on the host by debugfs. */
const debugfsCat = (image: string, path: string) =>
  execFileSync('debugfs', ['-R', `cat ${path}`, image], { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * MiB });

guestTest('a guest uses a disk image served by the blk plugin: patterns, ext2, SIGKILLed QEMU, reboot, read-only grant', async (t) => {
  t.timeout(600_000);
  if (!existsSync(BLK_PLUGIN)) return t.fail(`${BLK_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-qemu-blk-'));
  const image = join(dir, 'disk.img');
  const roPath = join(dir, 'ro.img');
  writeFileSync(image, Buffer.alloc(0));
  execFileSync('truncate', ['-s', String(DISK), image]); // fresh, sparse, zero
  writeFileSync(roPath, roImage);
  // Adaptive polling on (off by default): a real Linux driver's kicks suppressed and re-enabled
  // around every poll window, through patterns, ext2, a killed QEMU and a reboot.
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK_PLUGIN, '--storage', image, '--poll-max-ns', '32768']);
  let roHost: HostProcess | null = null;
  try {
    const baselineFds = host.fdCount();

    // --- 1: patterns, the end of the disk, a filesystem -------------------------------------
    const r1 = await bootGuest({ timeoutMs: BOOT_TIMEOUT, qemuArgs: blkDevice('d0', host.socketPath), files: guestFiles, script: WRITE_SCRIPT });
    t.log(`1st QEMU: boot + patterns + mke2fs + files + poweroff in ${r1.durationMs} ms`);
    t.is(r1.exitCode, 0, explain(r1, host));
    const o1 = r1.scriptOutput;
    t.is(field(o1, 'size'), String(CAPACITY), `capacity\n${o1}`);
    t.is(field(o1, 'ro'), '0', 'a writable grant shows up read-only');
    for (const [n, , b] of PATTERNS) t.is(field(o1, `readback ${n}`), md5(b), `pattern ${n} read back\n${o1}`);
    t.regex(field(o1, 'past end write') ?? '', /^failed .*(No space left|I\/O error)/i, `write past the end\n${o1}`);
    t.is(field(o1, 'past end read'), '0 bytes', 'read past the end');
    t.is(field(o1, 'fs'), 'written', o1);
    await released(t, host, baselineFds, 1, 'after the 1st QEMU');

    // From the host side: the image holds exactly what the guest wrote, nothing past its end.
    t.is(statSync(image).size, DISK, 'the image changed size');
    const img = readFileSync(image);
    for (const [n, off, b] of PATTERNS) t.true(img.subarray(off, off + b.length).equals(b), `pattern ${n} not at offset ${off} in the image`);
    for (const [n, b] of Object.entries(FILES)) {
      const got = debugfsCat(image, `/data/${n}`);
      t.true(got.equals(b), `debugfs cat /data/${n}: ${got.length} bytes md5 ${md5(got)}, want ${b.length} bytes md5 ${md5(b)}`);
    }

    // --- 2: QEMU SIGKILLed in the middle of a dd loop ------------------------------------------
    const ac = new AbortController();
    let seen = '';
    const r2 = await bootGuest({
      timeoutMs: BOOT_TIMEOUT,
      qemuArgs: blkDevice('d0', host.socketPath),
      script: LOOP_SCRIPT,
      signal: ac.signal,
      onOutput: (c) => {
        seen += c;
        // A few rounds in, at some point inside the next one.
        if (/LOOP 3\b/.test(seen) && !ac.signal.aborted) setTimeout(() => ac.abort(), Math.floor(Math.random() * 40));
      },
    });
    t.log(`2nd QEMU: SIGKILLed after ${r2.durationMs} ms (${(/LOOP (\d+)\s*$/.exec(r2.scriptOutput.trimEnd()) ?? [])[1]} rounds done)`);
    t.true(r2.aborted, `QEMU was not killed mid-I/O\n${explain(r2, host)}`);
    await released(t, host, baselineFds, 2, 'after the SIGKILLed QEMU');
    t.is(host.child.exitCode, null, 'the host exited');

    // --- 3: a new QEMU on the same socket, plus a read-only disk from a second host ------------
    roHost = await startHost(['--socket-path', '{socket}', '--plugin', BLK_PLUGIN, '--storage', roPath, '--read-only']);
    const roBaseline = roHost.fdCount();
    const r3 = await bootGuest({
      timeoutMs: BOOT_TIMEOUT,
      qemuArgs: [...blkDevice('d0', host.socketPath), ...blkDevice('d1', roHost.socketPath)],
      files: { 'guest/pa': PATTERNS[0][2] },
      script: READ_SCRIPT,
    });
    t.log(`3rd QEMU: boot + read back + read-only disk + poweroff in ${r3.durationMs} ms`);
    t.is(r3.exitCode, 0, explain(r3, host, roHost));
    const o3 = r3.scriptOutput;
    t.is(field(o3, 'size'), String(CAPACITY), o3);
    for (const [n, , b] of PATTERNS) t.is(field(o3, `pattern ${n}`), md5(b), `pattern ${n} after the reset\n${o3}`);
    for (const [n, b] of Object.entries(FILES)) t.is(field(o3, `file ${n}`), md5(b), `file ${n} after the reset\n${o3}`);
    t.is(field(o3, 'ro size'), String(RO_DISK / SECTOR), o3);
    t.is(field(o3, 'ro flag'), '1', 'the read-only grant is not a read-only disk in the guest');
    t.is(field(o3, 'ro md5'), md5(roImage), 'the read-only disk reads wrong');
    t.regex(field(o3, 'ro write') ?? '', /^failed/, `a write to the read-only disk succeeded\n${o3}`);
    await released(t, host, baselineFds, 3, 'after the 3rd QEMU');
    await released(t, roHost, roBaseline, 1, 'read-only host after the 3rd QEMU');

    t.true(readFileSync(roPath).equals(roImage), 'the read-only image changed');
    t.is(statSync(roPath).size, RO_DISK);
    t.true(debugfsCat(image, '/data/new.txt').equals(NEW_FILE), 'the file written after the reset is not in the image');
    t.is(statSync(image).size, DISK, 'the image changed size');

    // Each QEMU activated the device afresh; nothing went wrong on the hosts' side.
    for (const h of [host, roHost]) t.notRegex(h.log(), / ERROR /, h.log());
    t.is(await roHost.stop(), 0, roHost.log());
    roHost = null;
    t.is(await host.stop(), 0, host.log());
  } finally {
    if (roHost) await roHost.stop();
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
