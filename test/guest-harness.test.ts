// Proves the guest harness: a real QEMU boots a real Linux guest, the guest
// script's exit status reaches the host, and a vhost-user-blk device served by
// QEMU's own qemu-storage-daemon is usable from the guest.

import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, type BootResult } from './guest/qemu.ts';
import { START_MARKER } from './guest/protocol.ts';
import { qemuAbortBeforeScript } from './guest/qemu-abort.ts';
import { startStorageDaemon } from './guest/storage-daemon.ts';

// Serial: each guest takes a whole emulated CPU and the machine has two.
const guestTest = process.env.VHOST_WASM_SKIP_GUEST === '1' ? test.serial.skip : test.serial;

function explain(r: BootResult): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n` +
    `--- console ---\n${r.output}\n--- qemu stderr ---\n${r.qemuStderr}`;
}

guestTest('a guest script runs and its exit status and output reach the host', async (t) => {
  const r = await bootGuest({
    script: 'echo "hello from $(uname -r)"\ngrep -q "^virtio_pci " /proc/modules && echo virtio-loaded\nexit 0\n',
  });
  t.log(`boot to poweroff: ${r.durationMs} ms`);
  t.is(r.exitCode, 0, explain(r));
  t.false(r.timedOut);
  t.regex(r.scriptOutput, /^hello from \d+\.\d+\S*\nvirtio-loaded\n$/, explain(r));
});

guestTest('a failing guest script reports its nonzero exit status', async (t) => {
  const r = await bootGuest({ script: 'echo about to fail\nfalse\nexit 7\n' });
  t.is(r.exitCode, 7, explain(r));
  t.is(r.scriptOutput, 'about to fail\n');
  const r2 = await bootGuest({ script: 'set -e\nfalse\necho unreachable\n' });
  t.is(r2.exitCode, 1, explain(r2));
  t.false(r2.scriptOutput.includes('unreachable'));
});

guestTest('a hung guest is killed at the timeout and reports no exit status', async (t) => {
  const r = await bootGuest({ script: 'sleep 600\n', timeoutMs: 4000 });
  t.true(r.timedOut, explain(r));
  t.is(r.exitCode, null);
  t.true(r.durationMs < 10_000);
});

guestTest('the guest reads and writes a vhost-user-blk disk served by qemu-storage-daemon', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'guest-blk-'));
  const image = join(dir, 'disk.raw');
  const MiB = 1 << 20;
  const readPattern = randomBytes(MiB);
  const writePattern = randomBytes(64 * 1024);
  writeFileSync(image, Buffer.concat([readPattern, Buffer.alloc(15 * MiB)]));
  const md5 = createHash('md5').update(readPattern).digest('hex');

  const daemon = await startStorageDaemon({ image, socketPath: join(dir, 'blk.sock') });
  let r: BootResult;
  try {
    r = await bootGuest({
      qemuArgs: [
        '-chardev', `socket,id=c0,path=${daemon.socketPath}`,
        '-device', 'vhost-user-blk-pci,chardev=c0,num-queues=1',
      ],
      files: { 'guest/pattern2': writePattern },
      script: [
        'set -e',
        'test -b /dev/vda',
        'echo "sectors $(cat /sys/block/vda/size)"',
        'got=$(dd if=/dev/vda bs=64k count=16 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)',
        'echo "read $got"',
        `[ "$got" = ${md5} ]`,
        // 2 MiB in: past the read pattern, so the host can tell both apart.
        'dd if=/guest/pattern2 of=/dev/vda bs=64k seek=32 count=1 oflag=direct conv=notrunc 2>/dev/null',
        'echo written',
      ].join('\n'),
    });
  } finally {
    await daemon.stop();
  }
  try {
    t.log(`boot with vhost-user-blk: ${r.durationMs} ms`);
    t.is(r.exitCode, 0, `${explain(r)}\n--- qemu-storage-daemon ---\n${daemon.stderr()}`);
    t.is(r.scriptOutput, `sectors ${(16 * MiB) / 512}\nread ${md5}\nwritten\n`);
    const disk = readFileSync(image);
    t.true(disk.subarray(2 * MiB, 2 * MiB + writePattern.length).equals(writePattern), 'write pattern missing from the image');
    t.true(disk.subarray(0, MiB).equals(readPattern), 'read pattern was disturbed');
    t.is(disk.length, 16 * MiB);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a QEMU abort in its own code is worth one more boot only before the guest script began', (t) => {
  const msix = "qemu-system-x86_64: hw/pci/msix.c:228: msix_table_mmio_write: Assertion `addr + size <= dev->msix_entries_nr * PCI_MSIX_ENTRY_SIZE' failed.";
  const firmware = 'SeaBIOS (version 1.16.3-debian-1.16.3-2)\nBooting from ROM..\n';
  // What CI saw: QEMU died in the firmware-to-kernel phase.
  t.is(qemuAbortBeforeScript(`${msix}\n`, firmware), msix);
  // Once the script began, whatever happened is the test's business, not the harness's.
  t.is(qemuAbortBeforeScript(`${msix}\n`, `${firmware}\n${START_MARKER}\nhello\n`), undefined);
  // QEMU refusing its command line or a back-end is not an abort in QEMU's code: never retried.
  t.is(qemuAbortBeforeScript("qemu-system-x86_64: -device vhost-user-blk-pci,chardev=d0: Failed to connect to '/tmp/x.sock': No such file or directory\n", ''), undefined);
  t.is(qemuAbortBeforeScript('qemu-system-x86_64: Failed to read from slave.\n', firmware), undefined);
  // An assertion our back-end's replies can reach is the test's failure, never booted past.
  t.is(qemuAbortBeforeScript("qemu-system-x86_64: ../hw/virtio/vhost.c:1234: vhost_virtqueue_start: Assertion `r >= 0' failed.\n", firmware), undefined);
  t.is(qemuAbortBeforeScript("qemu-system-x86_64: ../hw/block/vhost-user-blk.c:321: vhost_user_blk_start: Assertion `x' failed.\n", firmware), undefined);
});
