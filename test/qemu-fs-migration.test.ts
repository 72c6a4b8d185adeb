// A real guest keeps using files it opened BEFORE a live migration (QEMU 10, which migrates
// vhost-user-fs back-end state through SET_DEVICE_STATE_FD): the fs plugin's state carries the
// node ids and FUSE file handles the guest kernel holds, and the destination back-end
// reopens them. fd 3 (read) and fd 4 (append) are opened on the source, used on both sides;
// the shell's working directory is inside the mount.
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeMigration, runMigration } from './guest/migration.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !existsSync(FS_PLUGIN);
const guestTest = skip ? test.serial.skip : test.serial;

const SCRIPT = `set -e
mount -t virtiofs mig /mnt
mkdir -p /mnt/dir/sub
echo "kept open" > /mnt/dir/sub/keep
exec 3< /mnt/dir/sub/keep
exec 4>> /mnt/dir/log
cd /mnt/dir/sub
i=0; after=0
while [ $after -lt 3 ]; do
  i=$((i+1))
  [ $i -le 1000 ] || { echo "TOO-MANY-ITERATIONS"; exit 4; }
  echo "w $i" >&4
  if migrated; then after=$((after+1)); echo "MIG $i dest"; else echo "MIG $i src"; fi
done
echo "fd3: $(cat <&3)"
echo "cwd: $(cat keep) $(pwd)"
echo "made after: $(echo new > made-after && cat /mnt/dir/sub/made-after)"
echo "log: $(wc -l < /mnt/dir/log) lines of $i"
exec 3<&- 4>&-
cd /
umount /mnt
echo "FS-MIG-DONE $i"
`;

guestTest('files opened before a QEMU 10 live migration keep working on the destination back-end', async (t) => {
  t.timeout(240_000);
  const dir = mkdtempSync(join(tmpdir(), 'qemu-fs-mig-'));
  const hosts: HostProcess[] = [];
  try {
    const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', 'mig', '--call-deadline', '2000'];
    hosts.push(...(await Promise.all([startHost(args, { socketName: 'src.sock' }), startHost(args, { socketName: 'dst.sock' })])));
    const [src, dst] = hosts;
    const fsArgs = (sock: string) => ['-chardev', `socket,id=fs0,path=${sock}`, '-device', 'vhost-user-fs-pci,id=vfs0,chardev=fs0,tag=mig'];
    const r = await runMigration({ script: SCRIPT, sourceArgs: fsArgs(src.socketPath), destArgs: fsArgs(dst.socketPath), migrateWhen: '\nMIG 3 src\n' });
    await new Promise((res) => setTimeout(res, 300));
    const why = `${describeMigration(r)}\n--- source host ---\n${src.log().slice(-3000)}\n--- destination host ---\n${dst.log().slice(-3000)}`;
    t.log(`QEMU ${r.qemuVersion}: ${r.verdict}; migrate ${r.migrateStatus} in ${r.timings.migrateMs} ms, QEMU downtime ${r.downtimeMs} ms`);
    t.is(r.migrateStatus, 'completed', why);
    t.regex(dst.log(), /device state loaded: \d+ bytes/, why);
    t.is(r.verdict, 'ok', why);
    const m = /\nFS-MIG-DONE (\d+)/.exec(r.destOutput);
    t.truthy(m, why);
    const n = Number(m?.[1]);
    t.regex(r.destOutput, /\nfd3: kept open\n/, why);
    t.regex(r.destOutput, /\ncwd: kept open \/mnt\/dir\/sub\n/, why);
    t.regex(r.destOutput, /\nmade after: new\n/, why);
    t.regex(r.destOutput, new RegExp(`\\nlog: ${n} lines of ${n}\\n`), why);
    // The host-side file got every line, in order, from both back-ends.
    t.is(readFileSync(join(dir, 'dir', 'log'), 'utf8'), Array.from({ length: n }, (_, i) => `w ${i + 1}\n`).join(''));
    // QEMU exiting at the end sometimes resets the socket: the session logs that ECONNRESET at
    // ERROR level, which says nothing about the device.
    const problems = dst.log().split('\n').filter((l) => / (ERROR|WARN) /.test(l) && !/ECONNRESET/.test(l));
    t.deepEqual(problems, [], why);
  } finally {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
});
