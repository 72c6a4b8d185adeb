// Several request queues under QEMU 10 (scripts/qemu10.sh): the fs plugin with
// `--plugin-option request-queues=4` and a guest whose vhost-user-fs-pci has
// `num-request-queues=4`. QEMU must start the device with all five rings, the guest must mount
// the share and do I/O on it, and the guest's own /proc/interrupts says which queues carried its
// requests (one MSI-X vector per queue: virtioN-hiprio, virtioN-requests.0 .. .3).
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, hasQemu, type BootResult } from './guest/qemu.ts';
import { ensureQemu10 } from './guest/qemu10.ts';
import { REPO, startHost } from './helpers/host-process.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu();
const guestTest = skip ? test.serial.skip : test.serial;
const TAG = 'mq';

const SCRIPT = String.raw`
set -e
mount -t virtiofs ${TAG} /mnt
uname -r
cat /mnt/seed
dd if=/dev/urandom of=/mnt/out bs=64k count=32 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
md5sum /mnt/out | cut -d' ' -f1 > /mnt/out.md5
mkdir /mnt/dir
i=0; while [ $i -lt 50 ]; do echo $i > /mnt/dir/f$i; i=$((i+1)); done
ls /mnt/dir | wc -l
cat /mnt/dir/f49
umount /mnt
echo "== interrupts"
grep -E 'hiprio|requests' /proc/interrupts
echo "== done"
`;

function explain(r: BootResult, log: string): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n` +
    `--- console ---\n${r.output.slice(-6000)}\n--- qemu stderr ---\n${r.qemuStderr}\n--- back-end log ---\n${log.slice(-4000)}`;
}

guestTest('QEMU 10 with num-request-queues=4 starts the device on request-queues=4; the guest mounts it and does I/O', async (t) => {
  t.timeout(300_000);
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const qemu = (await ensureQemu10()).binary;
  const dir = mkdtempSync(join(tmpdir(), 'qemu-fs-queues-'));
  writeFileSync(join(dir, 'seed'), 'seeded by the host\n');
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', TAG, '--plugin-option', 'request-queues=4', '--call-deadline', '2000']);
  t.teardown(async () => {
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  t.regex(host.log(), /5 queue\(s\)/);
  const r = await bootGuest({
    qemuBinary: qemu,
    timeoutMs: 180_000,
    qemuArgs: ['-chardev', `socket,id=fs0,path=${host.socketPath}`, '-device', `vhost-user-fs-pci,chardev=fs0,tag=${TAG},num-request-queues=4`],
    script: SCRIPT,
  });
  const out = r.scriptOutput.replace(/\r/g, '');
  t.is(r.exitCode, 0, explain(r, host.log()));
  t.regex(out, /== done/, explain(r, host.log()));
  t.regex(out, /seeded by the host/);
  t.regex(out, /\n50\n49\n/);
  const md5 = readFileSync(join(dir, 'out.md5'), 'utf8').trim();
  t.regex(md5, /^[0-9a-f]{32}$/);
  const { createHash } = await import('node:crypto');
  t.is(createHash('md5').update(readFileSync(join(dir, 'out'))).digest('hex'), md5, 'the host file is what the guest wrote and read back');

  // Interrupts per queue, as the guest counted them (one vCPU: one count column).
  const counts = new Map<string, number>();
  for (const line of out.split('== interrupts')[1]!.split('\n')) {
    const m = /^\s*\d+:\s+(\d+)\s.*virtio\d+-(hiprio|requests\.\d+)\s*$/.exec(line);
    if (m) counts.set(m[2]!, Number(m[1]));
  }
  t.log(`guest ${out.split('\n')[0]}; interrupts per queue: ${[...counts].map(([q, n]) => `${q}=${n}`).join(' ')}`);
  t.deepEqual([...counts.keys()].sort(), ['hiprio', 'requests.0', 'requests.1', 'requests.2', 'requests.3'], 'the guest found the hiprio queue and four request queues');
  // Linux 6.1's virtio-fs sends every request on its first request queue (multi-queue dispatch
  // came in 6.11), and with one vCPU a newer kernel's per-CPU mapping would use one queue too.
  t.true(counts.get('requests.0')! > 0, 'the first request queue carried the I/O');
  for (const q of ['requests.1', 'requests.2', 'requests.3']) t.is(counts.get(q), 0, `${q} carried nothing`);
  t.notRegex(host.log(), / ERROR /, host.log());
});

guestTest('QEMU 10 does not hold num-request-queues to GET_QUEUE_NUM: with more than request-queues the device cannot start, and the host says why', async (t) => {
  t.timeout(180_000);
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const qemu = (await ensureQemu10()).binary;
  const dir = mkdtempSync(join(tmpdir(), 'qemu-fs-queues-'));
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', TAG, '--plugin-option', 'request-queues=2']);
  t.teardown(async () => {
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  // QEMU sets up a fourth ring (SET_VRING_CALL at realize, then SET_VRING_KICK when the guest's
  // driver starts the device), the host refuses each, the start fails and the guest waits for
  // the device for ever: once the host has refused the start, QEMU is stopped.
  const abort = new AbortController();
  const said = host.waitForLog(/SET_VRING_KICK \(12\) failed: ring index 3 is out of range: the device has 3 queue\(s\), as GET_QUEUE_NUM said/, 120_000).then((l) => (abort.abort(), l));
  const r = await bootGuest({
    qemuBinary: qemu,
    timeoutMs: 150_000,
    signal: abort.signal,
    qemuArgs: ['-chardev', `socket,id=fs0,path=${host.socketPath}`, '-device', `vhost-user-fs-pci,chardev=fs0,tag=${TAG},num-request-queues=3`],
    script: `mount -t virtiofs ${TAG} /mnt && echo mounted`,
  });
  t.log(await said);
  t.true(r.aborted, explain(r, host.log()));
  t.notRegex(r.scriptOutput, /mounted/);
  t.log(`QEMU said: ${r.qemuStderr.split('\n').filter((l) => /vhost/.test(l)).slice(0, 3).join(' | ')}`);
});
