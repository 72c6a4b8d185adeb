// A real QEMU (10, -smp 1) live-migrates a guest whose disk is served by OUR host (the blk
// plugin over a shared image file) on both sides. QEMU refuses to migrate a vhost-user device
// whose back-end lacks LOG_SHMFD / VHOST_F_LOG_ALL (bit 26), and relies on the dirty log for
// every page the back-end writes while RAM is being copied: the guest's I/O loop must carry on
// on the destination with every block intact, and the source back-end must have logged.
// Limit: this workload is too light to catch a back-end that logs nothing (a mutation that
// drops every mark still passed 2 of 2); which pages are marked is proven exactly by
// migration-dirty-log.test.ts.
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DISK_LOOP_BS, diskLoopBlock, diskLoopScript, vhostUserBlkArgs } from './guest/disk-loop.ts';
import { describeMigration, runMigration } from './guest/migration.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const skip = process.env.VHOST_WASM_SKIP_GUEST === '1';
const guestTest = skip ? test.serial.skip : test.serial;

const BS = DISK_LOOP_BS;
const AFTER = 4;
const SCRIPT = diskLoopScript(AFTER);

const blkArgs = vhostUserBlkArgs;

/**
 * `queueThreads`: both hosts run the device on that many threads, QEMU gives it as many queues
 * and the guest as many vCPUs, and the guest's writes alternate between the vCPUs (so the rings).
 */
async function migrateOurBlk(t: import('ava').ExecutionContext, qemu: 'qemu10' | 'system', queueThreads = 1): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'mig-ours-'));
  const image = join(dir, 'disk.raw');
  writeFileSync(image, Buffer.alloc(64 << 20));
  const hosts: HostProcess[] = [];
  try {
    const args = ['--socket-path', '{socket}', '--plugin', join(REPO, 'dist', 'plugins', 'blk.wasm'), '--storage', image, '--log-level', 'debug'];
    if (queueThreads > 1) args.push('--queue-threads', String(queueThreads));
    const devArgs = (sock: string) =>
      queueThreads > 1 ? blkArgs(sock).map((a) => a.replace('num-queues=1', `num-queues=${queueThreads}`)) : blkArgs(sock);
    const script = queueThreads > 1 ? SCRIPT.replace('dd if=/tmp/p of=/dev/vda', `taskset $((1 << (i % ${queueThreads}))) dd if=/tmp/p of=/dev/vda`) : SCRIPT;
    hosts.push(...(await Promise.all([startHost(args, { socketName: 'src.sock' }), startHost(args, { socketName: 'dst.sock' })])));
    const [src, dst] = hosts;
    const r = await runMigration({
      qemu,
      script,
      sourceArgs: devArgs(src.socketPath),
      destArgs: devArgs(dst.socketPath),
      migrateWhen: '\nITER 4 ok\n',
      smp: queueThreads,
    });
    const why = `${describeMigration(r)}\n--- source host ---\n${src.log().split("\n").slice(-40).join("\n")}\n--- destination host ---\n${dst.log().slice(-4000)}`;
    t.is(r.migrateStatus, 'completed', why);
    t.is(r.verdict, 'ok', why);
    t.is(r.exitCode, 0, why);
    t.regex(r.destOutput, /\nVERIFIED \d+\n/, why);
    // QEMU turned dirty logging on in our source back-end (SET_LOG_BASE + LOG_ALL) for the RAM copy.
    t.regex(src.log(), /dirty log area: \d+ bytes/, why);
    t.regex(src.log(), /dirty logging on/, why);
    t.notRegex(src.log(), /log is smaller than guest memory/, why);
    const verified = Number(/\nVERIFIED (\d+)\n/.exec(r.destOutput)?.[1] ?? 0);
    const img = readFileSync(image);
    let bad = 0;
    for (let s = 1; s <= verified; s++) {
      if (!img.subarray(s * BS, (s + 1) * BS).equals(diskLoopBlock(s))) bad++;
    }
    t.is(bad, 0, `${bad} of ${verified} blocks differ in the image file`);
    if (queueThreads > 1) {
      // Every ring the source stopped for the switch-over had run on its own thread, and both had work.
      const stops = [...src.log().matchAll(/ring (\d+) stopped on queue thread (\d+) \(thread id \d+\) at avail index (\d+)/g)];
      for (let ring = 0; ring < queueThreads; ring++) {
        const mine = stops.filter((m) => Number(m[1]) === ring);
        t.true(mine.length > 0 && mine.every((m) => Number(m[2]) === ring) && mine.some((m) => Number(m[3]) > 0), `ring ${ring} on the source: ${mine.map((m) => m[0]).join('; ')}\n${why}`);
      }
      t.regex(src.log(), new RegExp(`blk runs in ${queueThreads} queue threads`));
    }
    t.log(`QEMU ${r.qemuVersion}: migrate ${r.migrateStatus} in ${r.timings.migrateMs} ms, QEMU downtime ${r.downtimeMs} ms`);
  } finally {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

guestTest('QEMU 10 live-migrates a guest doing I/O on our vhost-user-blk: dirty log used, data intact', (t) => migrateOurBlk(t, 'qemu10'));

guestTest('the same with num-queues=2, 2 vCPUs and --queue-threads 2 on both hosts: both rings ran on their own threads up to the switch-over, data intact', (t) => migrateOurBlk(t, 'qemu10', 2));

// QEMU 7.2 (the system's) refuses to migrate vhost-user without LOG_SHMFD; with it, it migrates.
// Opt-in like the harness's own 7.2 test: 7.2 + TCG + shared RAM hangs ~1 destination guest in 8.
// Registered only when asked for, so the default suite neither runs nor skips it.
if (!skip && process.env.VHOST_WASM_MIGRATION_QEMU72 === '1') test.serial('QEMU 7.2 live-migrates a guest doing I/O on our vhost-user-blk', (t) => migrateOurBlk(t, 'system'));

// vhost-user-fs is the device QEMU (8.2+) migrates back-end state for: during the switch-over it
// sends SET_DEVICE_STATE_FD (SAVE) to the source back-end, reads the state through the pipe into
// the migration stream, and on the destination sends SET_DEVICE_STATE_FD (LOAD) + CHECK.
const FS_SCRIPT = `set -e
mount -t virtiofs mig /mnt
i=0; after=0
while [ $after -lt 3 ]; do
  i=$((i+1))
  [ $i -le 1000 ] || { echo "TOO-MANY-ITERATIONS"; exit 4; }
  echo "line $i" > /mnt/f$i
  [ "$(cat /mnt/f$i)" = "line $i" ] || { echo "MISMATCH $i"; exit 3; }
  if migrated; then after=$((after+1)); echo "FS $i ok dest"; else echo "FS $i ok"; fi
done
ls /mnt | wc -l
echo "FS-DONE $i"
`;

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const fsTest = skip ? test.serial.skip : test.serial;

fsTest('QEMU 10 live-migrates a guest using our vhost-user-fs: the back-end state goes through SET_DEVICE_STATE_FD', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'mig-fs-'));
  const hosts: HostProcess[] = [];
  try {
    const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', 'mig', '--log-level', 'debug'];
    hosts.push(...(await Promise.all([startHost(args, { socketName: 'src.sock' }), startHost(args, { socketName: 'dst.sock' })])));
    const [src, dst] = hosts;
    const fsArgs = (sock: string) => ['-chardev', `socket,id=fs0,path=${sock}`, '-device', 'vhost-user-fs-pci,id=vfs0,chardev=fs0,tag=mig'];
    const r = await runMigration({ script: FS_SCRIPT, sourceArgs: fsArgs(src.socketPath), destArgs: fsArgs(dst.socketPath), migrateWhen: '\nFS 3 ok\n' });
    // The hosts' last log lines (why a transfer failed) may still be in their stderr pipes.
    await new Promise((res) => setTimeout(res, 500));
    const why = `${describeMigration(r)}\n--- source host ---\n${src.log().split("\n").filter((l) => !l.includes("DEBUG")).join("\n")}\n--- destination host ---\n${dst.log().split("\n").filter((l) => !l.includes("DEBUG")).join("\n")}`;
    t.log(`QEMU ${r.qemuVersion}: ${r.verdict}; migrate ${r.migrateStatus} in ${r.timings.migrateMs} ms, QEMU downtime ${r.downtimeMs} ms`);
    t.regex(src.log(), /device state save started/, why);
    t.regex(src.log(), /device state saved: \d+ bytes/, why);
    t.regex(dst.log(), /device state loaded: \d+ bytes/, why);
    t.is(r.migrateStatus, 'completed', why);
    t.is(r.verdict, 'ok', why);
    t.regex(r.destOutput, /FS-DONE \d+/, why);
  } finally {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
});
