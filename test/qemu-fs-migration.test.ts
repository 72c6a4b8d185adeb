// A real guest keeps using files it opened BEFORE a live migration (QEMU 10, which migrates
// vhost-user-fs back-end state through SET_DEVICE_STATE_FD): the fs plugin's state carries the
// node ids and FUSE file handles the guest kernel holds, and the destination back-end
// reopens them. fd 3 (read) and fd 4 (append) are opened on the source, used on both sides;
// the shell's working directory is inside the mount. Both back-ends serve with --posix-acl
// (the migrated session is an ACL session, state version 3): ACLs set on the source read the
// same on the destination, a create there inherits a default ACL, and the guest kernel still
// enforces them on other uids.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileFsProbe } from './guest/fs-probe.ts';
import { describeMigration, runMigration } from './guest/migration.ts';
import { ensureQemu10 } from './guest/qemu10.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !existsSync(FS_PLUGIN);
const guestTest = skip ? test.serial.skip : test.serial;

// The ACL part runs the fs probe (test/fixtures/guest/fs-probe.c, its acl-mig-* sections); the
// source's output is kept in the guest's RAM (which migrates) and printed with the
// destination's at the end: B (before) and A (after, read with the guest's inode cache
// dropped, so from the destination back-end) must be the same, CS and CD (creates on the
// source and the destination) the same but for the name.
const SCRIPT = `set -e
mount -t virtiofs mig /mnt
mkdir -p /mnt/dir/sub /mnt/acl
fs-probe /mnt/acl acl-mig-set > /acl-set
fs-probe /mnt/acl acl-mig-show > /acl-before
fs-probe /mnt/acl acl-mig-create src > /acl-create-src
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
# Evict the guest's cached inodes (and their cached ACLs): the destination back-end answers.
sync; echo 3 > /proc/sys/vm/drop_caches
fs-probe /mnt/acl acl-mig-show > /acl-after
fs-probe /mnt/acl acl-mig-create dst > /acl-create-dst
sed 's/^/S /' /acl-set; sed 's/^/B /' /acl-before; sed 's/^/A /' /acl-after
sed 's/^/CS /' /acl-create-src; sed 's/^/CD /' /acl-create-dst
cd /
umount /mnt
echo "FS-MIG-DONE $i"
`;

/** What acl-mig-show prints on either side (the guest's root made the files). */
const ACL_SHOW = [
  'mode md: 40775 uid=0 gid=0',
  'md default: v2 u::rwx u:1000:rwx g::r-x m::rwx o::---',
  'md access: v2 u::rwx u:1000:rwx g::r-x m::rwx o::r-x',
  'mode ms: 100640 uid=0 gid=0',
  'ms access: v2 u::rw- u:1000:r-- g::--- m::r-- o::---',
  'ms default: ENODATA',
  'uid 1000 read ms: ok',
  'uid 1000 write ms: EACCES',
  'uid 1001 read ms: EACCES',
];

/** What acl-mig-create NAME prints: what md's default ACL gave each new file and directory. */
const aclCreate = (name: string) => [
  'create in md (umask 077): ok',
  `mode md/${name}: 100660 uid=0 gid=0`,
  `md/${name} access: v2 u::rw- u:1000:rwx g::r-x m::rw- o::---`,
  'mkdir in md: ok',
  `mode md/${name}.d: 40770 uid=0 gid=0`,
  `md/${name}.d access: v2 u::rwx u:1000:rwx g::r-x m::rwx o::---`,
  `md/${name}.d default: v2 u::rwx u:1000:rwx g::r-x m::rwx o::---`,
  `uid 1000 create md/${name}.1000: ok`,
  `mode md/${name}.1000: 100640 uid=1000 gid=1000`,
  `md/${name}.1000 access: v2 u::rw- u:1000:rwx g::r-x m::r-- o::---`,
  `uid 1001 create md/${name}.1001: EACCES`,
];

/** The console lines that start with `tag `, without it. */
const tagged = (out: string, tag: string) => out.replace(/\r/g, '').split('\n').filter((l) => l.startsWith(`${tag} `)).map((l) => l.slice(tag.length + 1));

/** A host file's xattr, hex ('' when absent). */
const hostXattr = (path: string, name: string) =>
  execFileSync('python3', ['-c', 'import os,sys\ntry: print(os.getxattr(sys.argv[1], sys.argv[2]).hex())\nexcept OSError: print("")', path, name], { encoding: 'utf8' }).trim();

guestTest('files opened before a QEMU 10 live migration keep working on the destination back-end; POSIX ACLs read and act the same there', async (t) => {
  t.timeout(240_000);
  const dir = mkdtempSync(join(tmpdir(), 'qemu-fs-mig-'));
  const hosts: HostProcess[] = [];
  try {
    const args = ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', 'mig', '--posix-acl', '--call-deadline', '2000'];
    hosts.push(...(await Promise.all([startHost(args, { socketName: 'src.sock' }), startHost(args, { socketName: 'dst.sock' })])));
    const [src, dst] = hosts;
    const fsArgs = (sock: string) => ['-chardev', `socket,id=fs0,path=${sock}`, '-device', 'vhost-user-fs-pci,id=vfs0,chardev=fs0,tag=mig'];
    const r = await runMigration({
      script: SCRIPT,
      files: { 'bin/fs-probe': compileFsProbe() },
      sourceArgs: fsArgs(src.socketPath),
      destArgs: fsArgs(dst.socketPath),
      migrateWhen: '\nMIG 3 src\n',
    });
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
    // POSIX ACLs: set on the source, read the same on the destination (and enforced the same
    // on uids 1000 and 1001); a create on the destination inherits md's default ACL as one on
    // the source did.
    t.deepEqual(tagged(r.destOutput, 'S'), ['set md default: ok', 'set md access: ok', 'set ms access: ok'], why);
    t.deepEqual(tagged(r.destOutput, 'B'), ACL_SHOW, why);
    t.deepEqual(tagged(r.destOutput, 'A'), ACL_SHOW, why);
    t.deepEqual(tagged(r.destOutput, 'CS'), aclCreate('src'), why);
    t.deepEqual(tagged(r.destOutput, 'CD'), aclCreate('dst'), why);
    // They are the host's ACLs: what a guest kernel wrote reached the share's files.
    const md = join(dir, 'acl', 'md');
    t.is(hostXattr(md, 'system.posix_acl_default'), '0200000001000700ffffffff02000700e803000004000500ffffffff10000700ffffffff20000000ffffffff');
    t.is(hostXattr(join(md, 'dst'), 'system.posix_acl_access'), hostXattr(join(md, 'src'), 'system.posix_acl_access'));
    t.not(hostXattr(join(md, 'dst'), 'system.posix_acl_access'), '');
    t.is(hostXattr(join(dir, 'dir', 'log'), 'system.posix_acl_access'), '', 'no ACL where none was set or inherited');
    // QEMU exiting at the end sometimes resets the socket: the session logs that ECONNRESET at
    // ERROR level, which says nothing about the device.
    const problems = dst.log().split('\n').filter((l) => / (ERROR|WARN) /.test(l) && !/ECONNRESET/.test(l));
    t.deepEqual(problems, [], why);
  } finally {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
});

// The failure path. Source and destination serve their own copies of one tree; the file the
// guest holds open is deleted from the destination's copy just before the migration. QEMU 10
// sends our state through SET_DEVICE_STATE_FD; the destination back-end's LOAD/CHECK fails
// (--migration-on-error abort, the default) with a log line naming the path; the destination
// QEMU refuses the stream, the migration fails (return-path on: the source hears of it) and
// the source guest runs on: its loop keeps reading the open file and appending to another.
//
// runMigration stops both QEMUs at most ~1 s after a failed migration (it waits that long for
// the destination QEMU to exit). So that the source is watched for that second, the
// destination runs under a wrapper that lingers 2 s after its QEMU exited; the source runs
// as is.
const LOOP_SCRIPT = `set -e
mount -t virtiofs mig /mnt
exec 3< /mnt/dir/sub/keep
exec 4>> /mnt/dir/log
i=0
while :; do
  i=$((i+1))
  [ $i -le 19900 ] || { echo "TOO-MANY-ITERATIONS"; exit 4; }
  read -r k <&3
  echo "w $i" >&4
  echo "SRC $i $k"
done
`;

function lingeringDestination(dir: string, qemu: string): { binary: string; pidFile: string } {
  const binary = join(dir, 'qemu-linger.sh');
  const pidFile = join(dir, 'dest-qemu.pid');
  writeFileSync(binary, `#!/bin/sh
case " $* " in
*" -incoming "*)
  "${qemu}" "$@" &
  echo $! > "${pidFile}"
  wait $!
  st=$?
  sleep 2
  exit $st;;
*) exec "${qemu}" "$@";;
esac
`);
  chmodSync(binary, 0o755);
  return { binary, pidFile };
}

guestTest('a file missing on the destination share fails a QEMU 10 migration; the source guest runs on', async (t) => {
  t.timeout(240_000);
  const work = mkdtempSync(join(tmpdir(), 'qemu-fs-migfail-'));
  const srcDir = join(work, 'src');
  const dstDir = join(work, 'dst');
  const keep = Array.from({ length: 20000 }, (_, i) => `k ${i + 1}\n`).join('');
  for (const d of [srcDir, dstDir]) {
    mkdirSync(join(d, 'dir', 'sub'), { recursive: true });
    writeFileSync(join(d, 'dir', 'sub', 'keep'), keep);
  }
  const hosts: HostProcess[] = [];
  const wrapper = lingeringDestination(work, (await ensureQemu10()).binary);
  try {
    const args = (dir: string) => ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', 'mig', '--call-deadline', '2000'];
    hosts.push(...(await Promise.all([startHost(args(srcDir), { socketName: 'src.sock' }), startHost(args(dstDir), { socketName: 'dst.sock' })])));
    const [src, dst] = hosts;
    const fsArgs = (sock: string) => ['-chardev', `socket,id=fs0,path=${sock}`, '-device', 'vhost-user-fs-pci,id=vfs0,chardev=fs0,tag=mig'];
    const srcChunks: { at: number; text: string }[] = [];
    let deleted = false;
    const r = await runMigration({
      script: LOOP_SCRIPT,
      qemu: { binary: wrapper.binary },
      sourceArgs: fsArgs(src.socketPath),
      destArgs: fsArgs(dst.socketPath),
      capabilities: { 'return-path': true },
      onSourceOutput: (text) => srcChunks.push({ at: performance.now(), text }),
      migrateWhen: (out) => {
        if (!out.includes('\nSRC 3 k 3\n')) return false;
        if (!deleted) rmSync(join(dstDir, 'dir', 'sub', 'keep'));
        deleted = true;
        return true;
      },
    });
    await new Promise((res) => setTimeout(res, 300));
    const why = `${describeMigration(r)}\n--- source host ---\n${src.log().slice(-3000)}\n--- destination host ---\n${dst.log().slice(-3000)}`;
    t.log(`QEMU ${r.qemuVersion}: ${r.verdict}; migrate ${r.migrateStatus} in ${r.timings.migrateMs} ms: ${r.diagnosis}`);
    t.true(deleted, why);
    // The destination back-end refused the state, and said which file it could not find.
    t.regex(dst.log(), /cannot find "dir\/sub\/keep" \(node \d+\) in the destination's share: ENOENT \(--migration-on-error abort\)/, why);
    t.notRegex(dst.log(), /device state loaded/, why);
    t.is(r.verdict, 'migration-failed', why);
    t.is(r.migrateStatus, 'failed', why);
    t.regex(r.destStderr, /Back-end failed to process its internal state|vhost-user-fs|load of migration failed/i, why);
    // The source guest resumed (RESUME after the failure) and its loop went on: lines printed
    // after the RESUME event, each with the next line of the file it held open.
    const failedAt = r.events.source.find((e) => e.event === 'MIGRATION' && e.data?.status === 'failed')?.receivedAt;
    const resumedAt = r.events.source.find((e) => e.event === 'RESUME' && failedAt !== undefined && e.receivedAt >= failedAt)?.receivedAt;
    t.truthy(failedAt, why);
    t.truthy(resumedAt, `the source never resumed\n${why}`);
    // (The last line may be cut short where the harness stopped the source QEMU.)
    const lines = r.sourceOutput.split('\n').slice(0, -1).filter((l) => /^SRC \d+ /.test(l));
    const bad = lines.find((l, n) => l !== `SRC ${n + 1} k ${n + 1}`);
    t.is(bad, undefined, `the source guest's loop, reading its open file, went wrong at: ${bad}\n${why}`);
    const after = srcChunks.filter((c) => resumedAt !== undefined && c.at > resumedAt).map((c) => c.text).join('');
    const afterIters = after.split('\n').filter((l) => /^SRC \d+ /.test(l)).length;
    const last = lines.length ? Number(/^SRC (\d+)/.exec(lines[lines.length - 1])![1]) : 0;
    t.log(`source: ${last} iterations, ${afterIters} after the failed migration (${Math.round(performance.now() - (resumedAt ?? 0))} ms ago)`);
    t.true(afterIters >= 2, `the source guest's loop did not go on after the failure\n${why}`);
    t.notRegex(r.sourceOutput, /TOO-MANY|Input\/output error|Bad file descriptor/, why);
    // Every append the source guest made landed, in order (the source host served them all).
    const log = readFileSync(join(srcDir, 'dir', 'log'), 'utf8');
    const n = log.split('\n').length - 1;
    t.true(n >= last, `log has ${n} lines, the guest printed ${last}`);
    t.is(log, Array.from({ length: n }, (_, i) => `w ${i + 1}\n`).join(''), why);
    t.is(readFileSync(join(srcDir, 'dir', 'sub', 'keep'), 'utf8'), keep, 'the source share is untouched');
    const problems = src.log().split('\n').filter((l) => / (ERROR|WARN) /.test(l) && !/ECONNRESET/.test(l));
    t.deepEqual(problems, [], why);
  } finally {
    // The destination QEMU normally exited by itself; never leave it behind.
    try {
      const pid = Number(readFileSync(wrapper.pidFile, 'utf8'));
      if (pid > 1 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system-x86_64')) process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(work, { recursive: true, force: true });
  }
});

// --migration-on-error guest-error on the destination: the same loss (a file the guest holds
// open for appending is deleted from the destination's copy) no longer fails the migration;
// the guest's writes to that file fail with EIO on the destination, everything else (another
// open file, the mount) keeps working.
const GUEST_ERROR_SCRIPT = `set -e
mount -t virtiofs mig /mnt
exec 4>> /mnt/dir/log
exec 5>> /mnt/dir/sub/gone
i=0; after=0
while [ $after -lt 3 ]; do
  i=$((i+1))
  [ $i -le 5000 ] || { echo "TOO-MANY-ITERATIONS"; exit 4; }
  echo "w $i" >&4
  # Where the write ran is known only if the migration did not happen during it: an iteration
  # that starts on the source and ends on the destination is MID (its write may be on either).
  if migrated; then was=1; else was=0; fi
  # (busybox's echo ignores write errors; cat reports them)
  g=$(echo "g $i" | cat 2>&1 >&5) && g=ok || g="failed: $g"
  if [ $was = 1 ]; then after=$((after+1)); echo "DST $i gone $g"; elif migrated; then echo "MID $i gone $g"; else echo "SRC $i gone $g"; fi
done
echo "log: $(wc -l < /mnt/dir/log) lines of $i"
echo "new file: $(echo fresh > /mnt/dir/fresh && cat /mnt/dir/fresh)"
exec 4>&- 5>&-
echo "FS-MIG-DONE $i"
`;

guestTest('--migration-on-error guest-error: the QEMU 10 migration succeeds and the lost file answers EIO', async (t) => {
  t.timeout(240_000);
  const work = mkdtempSync(join(tmpdir(), 'qemu-fs-migerr-'));
  const srcDir = join(work, 'src');
  const dstDir = join(work, 'dst');
  for (const d of [srcDir, dstDir]) mkdirSync(join(d, 'dir', 'sub'), { recursive: true });
  // The log is one file in both shares (a hard link): appends from both sides land in it.
  // "gone" is created by the guest on the source and never exists in the destination's share.
  writeFileSync(join(srcDir, 'dir', 'log'), '');
  linkSync(join(srcDir, 'dir', 'log'), join(dstDir, 'dir', 'log'));
  const hosts: HostProcess[] = [];
  try {
    const args = (dir: string) => ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--tag', 'mig', '--call-deadline', '2000'];
    hosts.push(...(await Promise.all([
      startHost(args(srcDir), { socketName: 'src.sock' }),
      startHost([...args(dstDir), '--migration-on-error', 'guest-error'], { socketName: 'dst.sock' }),
    ])));
    const [src, dst] = hosts;
    const fsArgs = (sock: string) => ['-chardev', `socket,id=fs0,path=${sock}`, '-device', 'vhost-user-fs-pci,id=vfs0,chardev=fs0,tag=mig'];
    const r = await runMigration({
      script: GUEST_ERROR_SCRIPT,
      sourceArgs: fsArgs(src.socketPath),
      destArgs: fsArgs(dst.socketPath),
      capabilities: { 'return-path': true },
      migrateWhen: '\nSRC 3 gone ok\n',
    });
    await new Promise((res) => setTimeout(res, 300));
    const why = `${describeMigration(r)}\n--- source host ---\n${src.log().slice(-3000)}\n--- destination host ---\n${dst.log().slice(-3000)}`;
    t.log(`QEMU ${r.qemuVersion}: ${r.verdict}; migrate ${r.migrateStatus} in ${r.timings.migrateMs} ms, QEMU downtime ${r.downtimeMs} ms`);
    t.is(r.migrateStatus, 'completed', why);
    t.regex(dst.log(), /cannot find "dir\/sub\/gone" \(node \d+\) in the destination's share: ENOENT; the guest gets EIO for it/, why);
    t.regex(dst.log(), /device state loaded: \d+ bytes/, why);
    t.is(r.verdict, 'ok', why);
    const dstLines = r.destOutput.split('\n').filter((l) => /^DST \d+ gone /.test(l));
    t.is(dstLines.length, 3, why);
    for (const l of dstLines) t.regex(l, /^DST \d+ gone failed: .*(I\/O error|Input\/output error)/, why);
    const m = /\nFS-MIG-DONE (\d+)/.exec(r.destOutput);
    t.truthy(m, why);
    const n = Number(m?.[1]);
    t.regex(r.destOutput, new RegExp(`\\nlog: ${n} lines of ${n}\\n`), why);
    t.regex(r.destOutput, /\nnew file: fresh\n/, why);
    t.false(existsSync(join(dstDir, 'dir', 'sub', 'gone')), 'nothing recreated the lost file');
    // Every write that succeeded before the switch-over (SRC, and MID when its write was still
    // on the source) is in the source's file, in order, and nothing else is.
    const onSource = [...`${r.sourceOutput}\n${r.destOutput}`.matchAll(/^(?:SRC|MID) (\d+) gone ok$/gm)].map((x) => Number(x[1]));
    const last = Math.max(0, ...onSource);
    t.true(last >= n - 4 && last <= n - 3, `the last write on the source was iteration ${last} of ${n}\n${why}`);
    const srcGone = readFileSync(join(srcDir, 'dir', 'sub', 'gone'), 'utf8');
    t.is(srcGone, Array.from({ length: last }, (_, i) => `g ${i + 1}\n`).join(''), 'the source got every write before the switch-over');
    t.is(readFileSync(join(dstDir, 'dir', 'log'), 'utf8'), Array.from({ length: n }, (_, i) => `w ${i + 1}\n`).join(''));
  } finally {
    await Promise.all(hosts.map((h) => h.stop()));
    rmSync(work, { recursive: true, force: true });
  }
});
