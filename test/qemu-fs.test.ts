// The virtio-fs plugin (dist/plugins/fs.wasm) serving a real guest through QEMU 7.2's
// vhost-user-fs-pci: the busybox guest mounts our share (`mount -t virtiofs`) and runs a
// script of file operations. The same script then runs against the C virtiofsd shipped
// with QEMU (/usr/lib/qemu/virtiofsd) on a copy of the same starting tree. The guest's
// outputs must match line for line and the host-side trees must end up identical.
//
// --call-deadline 2000: the watchdog is for hung plugins; on this 2-core machine, with other
// TCG guests running, a worker can be descheduled for longer than the default 100 ms.
//
// Normalised: nothing in the script prints inode numbers, timestamps, free-space counts
// or device numbers (they legitimately differ between two shares); `stat -f` prints only
// the total block count, block size and name length, which both servers take from the
// same host file system.

import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, hasQemu, type BootResult } from './guest/qemu.ts';
import { eventually, REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu();
const guestTest = skip ? test.serial.skip : test.serial;
const TAG = 'testfs';

// Every command's output goes to the console; `set -e` stops at the first failure, and
// the last line proves the script ran to the end.
const GUEST_SCRIPT = String.raw`
set -e
mount -t virtiofs ${TAG} /mnt
cd /mnt
echo "== initial"
find . | sort
cat seed/hello.txt
echo "== create write read"
echo hello > a.txt
cat a.txt
echo world >> a.txt
cat a.txt
stat -c '%n %s %a %F %h' a.txt
echo "== truncate"
truncate -s 3 a.txt
cat a.txt; echo
truncate -s 10000 a.txt
stat -c '%n %s' a.txt
od -An -c a.txt | head -2
truncate -s 0 a.txt
stat -c '%n %s' a.txt
echo again > a.txt
echo "== big file"
dd if=/dev/zero bs=4096 count=300 2>/dev/null | tr '\0' 'x' > big.bin
echo tail >> big.bin
stat -c '%n %s' big.bin
md5sum big.bin
dd if=big.bin bs=1000 skip=1200 count=1 2>/dev/null | md5sum
dd if=/dev/zero of=synced.bin bs=4096 count=3 conv=fsync 2>/dev/null
sync
stat -c '%n %s' synced.bin
echo "== mkdir -p and rename across dirs"
mkdir -p d1/d2/d3 other
mv a.txt d1/d2/b.txt
cat d1/d2/b.txt
mv d1/d2/b.txt other/c.txt
ls d1/d2 other
mv other d1/d2/d3/
find d1 | sort
echo "== hard link"
ln d1/d2/d3/other/c.txt hard.txt
stat -c '%n %s %h' hard.txt d1/d2/d3/other/c.txt
echo more >> hard.txt
cat d1/d2/d3/other/c.txt
echo "== symlink readlink"
ln -s d1/d2/d3/other/c.txt sym
ln -s /etc/passwd abs-sym
ln -s ../../../outside rel-sym
for l in sym abs-sym rel-sym; do readlink $l; done
cat sym
stat -c '%n %F' sym abs-sym
ls -l sym | awk '{print $1, $9, $10, $11}'
if cat rel-sym 2>/dev/null; then echo "rel-sym resolved"; else echo "rel-sym dangling"; fi
echo "== chmod"
chmod 640 hard.txt
chmod 711 d1
stat -c '%n %a' hard.txt d1/d2/d3/other/c.txt d1
umask 000
mkdir wide
echo x > wide/f
chmod 2775 wide
stat -c '%n %a' wide wide/f
umask 022
echo "== ownership of files a non-root user creates"
mkdir -p /etc
echo "u:x:1000:1000::/tmp:/bin/sh" >> /etc/passwd
echo "u:x:1000:" >> /etc/group
mkdir pub
chmod 777 pub
su -s /bin/sh -c "echo hi > pub/by-u; mkdir pub/dir-u; ln -s by-u pub/sym-u" u
stat -c '%n %u %g %a' pub/by-u pub/dir-u
stat -c '%n %u %g' pub/sym-u
if su -s /bin/sh -c "echo x >> hard.txt" u 2>/dev/null; then echo "u wrote root's 640 file"; else echo "u refused"; fi
echo "== readdir of 1000 entries"
mkdir many
i=0; while [ $i -lt 1000 ]; do echo $i > many/f$i; i=$((i+1)); done
ls many | wc -l
ls many | sort | md5sum
ls -a many | head -3
cat many/f999
i=0; while [ $i -lt 1000 ]; do rm many/f$i; i=$((i+2)); done
ls many | wc -l
ls many | sort | md5sum
echo "== unlink rmdir"
rm sym
rm -r many
rmdir d1/d2/d3/other 2>/dev/null || echo "rmdir non-empty refused"
rm d1/d2/d3/other/c.txt
rmdir d1/d2/d3/other
ls d1/d2/d3 | wc -l
if rmdir nonexistent 2>/dev/null; then echo bad; else echo "rmdir missing refused"; fi
if cat nonexistent 2>/dev/null; then echo bad; else echo "cat missing refused"; fi
echo "== stat sizes and modes"
find . | sort | while read f; do stat -c '%n %s %a %F %h' "$f"; done
echo "== df"
stat -f -c 'blocks=%b bsize=%S namelen=%l' /mnt
df /mnt | tail -1 | awk '{ if ($2 > 0) print "df total > 0"; else print "df total 0" }'
cd /
umount /mnt
echo "== done"
`;

function seedTree(dir: string): void {
  mkdirSync(join(dir, 'seed', 'sub'), { recursive: true });
  writeFileSync(join(dir, 'seed', 'hello.txt'), 'hello from the host\n');
  writeFileSync(join(dir, 'seed', 'sub', 'data'), Buffer.alloc(5000, 7));
}

/** The host-side tree as lines: path, type, mode, size, nlink, content hash or link target. */
function treeOf(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const n of readdirSync(d).sort()) {
      const p = join(d, n);
      const st = lstatSync(p);
      const r = `${rel}${n}`;
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) out.push(`${r} link ${mode} -> ${readlinkSync(p)}`);
      else if (st.isDirectory()) {
        out.push(`${r} dir ${mode}`);
        walk(p, `${r}/`);
      } else {
        const h = createHash('md5').update(readFileSync(p)).digest('hex');
        out.push(`${r} file ${mode} ${st.size} nlink=${st.nlink} ${h}`);
      }
    }
  };
  walk(dir, '');
  return out;
}

function explain(r: BootResult, log: string): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n` +
    `--- console ---\n${r.output.slice(-6000)}\n--- qemu stderr ---\n${r.qemuStderr}\n--- back-end log ---\n${log.slice(-4000)}`;
}

function qemuArgs(socket: string): string[] {
  return ['-chardev', `socket,id=fs0,path=${socket}`, '-device', `vhost-user-fs-pci,chardev=fs0,tag=${TAG}`];
}

async function runGuest(t: ExecutionContext, socket: string, log: () => string, which: string): Promise<string> {
  const r = await bootGuest({ timeoutMs: 120_000, qemuArgs: qemuArgs(socket), script: GUEST_SCRIPT });
  t.log(`${which}: boot + file script + poweroff in ${r.durationMs} ms`);
  t.is(r.exitCode, 0, explain(r, log()));
  t.regex(r.scriptOutput, /== done/, explain(r, log()));
  return r.scriptOutput.replace(/\r/g, '');
}

/** The C virtiofsd on `dir`; resolves once its socket exists. */
async function startVirtiofsd(dir: string, socket: string): Promise<{ log: () => string; stop: () => Promise<void> }> {
  const child = spawn(VIRTIOFSD, [`--socket-path=${socket}`, '-o', `source=${dir}`, '-o', 'cache=auto', '-o', 'sandbox=chroot'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const start = Date.now();
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() - start > 10_000) throw new Error(`virtiofsd did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    log: () => log,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

guestTest('a guest mounts the fs plugin share and its file operations match virtiofsd line for line', async (t) => {
  t.timeout(300_000);
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  if (!existsSync(VIRTIOFSD)) return t.fail(`${VIRTIOFSD} is missing: apt-get install qemu-system-common`);
  const top = mkdtempSync(join(tmpdir(), 'qemu-fs-'));
  const ours = join(top, 'ours');
  const theirs = join(top, 'theirs');
  mkdirSync(ours);
  seedTree(ours);
  cpSync(ours, theirs, { recursive: true });
  writeFileSync(join(top, 'outside'), 'outside the share\n');
  t.teardown(() => rmSync(top, { recursive: true, force: true }));

  const host: HostProcess = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', ours, '--tag', TAG, '--call-deadline', '2000']);
  let ourOut: string;
  try {
    const baselineFds = host.fdCount();
    ourOut = await runGuest(t, host.socketPath, () => host.log(), 'vhost-wasm fs plugin');
    // (QEMU exiting may reset the socket; the session logs that ECONNRESET at ERROR level.)
    t.deepEqual(host.log().split('\n').filter((l) => / (ERROR|WARN) /.test(l) && !/ECONNRESET/.test(l)), [], host.log());
    // The device is reset when QEMU goes: every fd the share held for the guest is closed.
    await host.waitForLog(/front-end disconnected/);
    t.true(await eventually(() => host.fdCount() === baselineFds), `fds ${host.fdCount()} vs baseline ${baselineFds}`);
  } finally {
    await host.stop();
  }

  const vsock = join(top, 'virtiofsd.sock');
  const vfsd = await startVirtiofsd(theirs, vsock);
  let theirOut: string;
  try {
    theirOut = await runGuest(t, vsock, vfsd.log, 'C virtiofsd');
  } finally {
    await vfsd.stop();
  }

  const a = ourOut.trimEnd().split('\n');
  const b = theirOut.trimEnd().split('\n');
  t.log(`guest output: ${a.length} lines`);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) {
      t.fail(`guest output differs at line ${i + 1}:\n  ours:      ${a[i]}\n  virtiofsd: ${b[i]}\n--- ours ---\n${ourOut}\n--- virtiofsd ---\n${theirOut}`);
      break;
    }
  }
  t.deepEqual(treeOf(ours), treeOf(theirs), 'the host-side trees differ');
  t.true(a.length > 60, 'the script printed too little to compare');
  // Not only equal but right: a non-root guest user owns what it creates, and cannot write
  // root's 0640 file.
  t.regex(ourOut, /^pub\/by-u 1000 1000 644$/m, ourOut);
  t.regex(ourOut, /^pub\/dir-u 1000 1000 755$/m, ourOut);
  t.regex(ourOut, /^pub\/sym-u 1000 1000$/m, ourOut);
  t.regex(ourOut, /^u refused$/m, ourOut);
});

const READ_ONLY_SCRIPT = String.raw`
mount -t virtiofs ${TAG} /mnt || exit 1
cd /mnt
cat seed/hello.txt
for cmd in "touch new" "mkdir newdir" "rm seed/hello.txt" "mv seed/hello.txt moved" "ln seed/hello.txt hl" \
    "ln -s x sl" "chmod 600 seed/hello.txt" "truncate -s 0 seed/hello.txt" "rmdir seed/sub"; do
  if $cmd 2>/tmp/err; then echo "$cmd: allowed"; else echo "$cmd: $(sed 's/.*: //' /tmp/err)"; fi
done
if (echo x >> seed/hello.txt) 2>/dev/null; then echo "append: allowed"; else echo "append: refused"; fi
cd /
umount /mnt
echo "== done"
`;

guestTest('a --read-only share refuses every change the guest attempts', async (t) => {
  t.timeout(120_000);
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const top = mkdtempSync(join(tmpdir(), 'qemu-fs-ro-'));
  t.teardown(() => rmSync(top, { recursive: true, force: true }));
  seedTree(top);
  const before = treeOf(top);
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', top, '--tag', TAG, '--read-only', '--call-deadline', '2000']);
  try {
    const r = await bootGuest({ timeoutMs: 60_000, qemuArgs: qemuArgs(host.socketPath), script: READ_ONLY_SCRIPT });
    t.is(r.exitCode, 0, explain(r, host.log()));
    const lines = r.scriptOutput.replace(/\r/g, '').trimEnd().split('\n');
    t.is(lines[0], 'hello from the host', explain(r, host.log()));
    const verdicts = lines.slice(1, -1);
    t.is(verdicts.length, 10, r.scriptOutput);
    for (const v of verdicts) t.regex(v, /: (Read-only file system|refused)$/, r.scriptOutput);
    t.is(lines.at(-1), '== done');
  } finally {
    await host.stop();
  }
  t.deepEqual(treeOf(top), before, 'the host tree changed');
});
