// The addon's defence against front-ends that shrink the files behind guest memory: mmap
// refuses a range the file does not cover, memoryFdInfo reports what a memory fd is, and a
// SIGBUS inside a mapping (the file shrank later) is contained and counted instead of killing
// the process, while a SIGBUS from anywhere else still takes the default action.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { constants, existsSync, openSync, closeSync, statfsSync } from 'node:fs';
import { addonCandidates, errnoCode, native as n } from '../host/native/index.ts';

const F_SEAL_SHRINK = 0x2;
const F_SEAL_GROW = 0x4;
const MiB = 1 << 20;

function memfd(size: number, sealable = false): number {
  const fd = n.memfdCreate('fault-guard-test', sealable);
  n.ftruncate(fd, size);
  return fd;
}

test('memoryFdInfo names the type, size and seals of a memory fd', (t) => {
  const plain = memfd(MiB);
  t.like(n.memoryFdInfo(plain), { type: 'file', size: MiB, pageSize: 4096 });
  t.is(n.memoryFdInfo(plain).seals & F_SEAL_SHRINK, 0);
  const sealed = memfd(MiB, true);
  n.memfdAddSeals(sealed, F_SEAL_SHRINK | F_SEAL_GROW);
  t.is(n.memoryFdInfo(sealed).seals & F_SEAL_SHRINK, F_SEAL_SHRINK);
  // The kernel's promise the host relies on for sealed memfds: no shrinking, ever.
  t.is(errnoCode(t.throws(() => n.ftruncate(sealed, 4096))), 'EPERM');
  const zero = openSync('/dev/zero', 'r+');
  t.is(n.memoryFdInfo(zero).type, 'char');
  const [r, w] = n.pipe2();
  t.is(n.memoryFdInfo(r).type, 'fifo');
  t.is(n.memoryFdInfo(r).seals, -1);
  // The file system of the open file (fstatfs): shmem says TMPFS_MAGIC; a directory opened
  // is told too, the same as a statfs of its path while nothing renamed it.
  t.is(n.memoryFdInfo(plain).fsType, 0x01021994);
  const root = openSync('/', constants.O_RDONLY | constants.O_DIRECTORY);
  t.is(n.memoryFdInfo(root).fsType, statfsSync('/').type);
  t.is(n.memoryFdInfo(root).type, 'directory');
  for (const fd of [plain, sealed, r, w]) n.close(fd);
  closeSync(zero);
  closeSync(root);
});

test('mmap refuses a range past the end of the file and anything that is not a file', (t) => {
  const fd = memfd(64 * 1024);
  const past = t.throws(() => n.mmap(fd, MiB, 0, true));
  t.is(errnoCode(past), 'ERR_MAPPING_BEYOND_FILE');
  t.regex(past!.message, /offset 0, \+size 1048576\).*65536-byte file/);
  t.is(errnoCode(t.throws(() => n.mmap(fd, 4096, 128 * 1024, true))), 'ERR_MAPPING_BEYOND_FILE');
  const zero = openSync('/dev/zero', 'r+');
  const dev = t.throws(() => n.mmap(zero, 4096, 4096, true));
  t.is(errnoCode(dev), 'ERR_MAPPING_NOT_FILE');
  t.regex(dev!.message, /character device/);
  closeSync(zero);
  // Exactly the file's size is fine.
  n.mmap(fd, 64 * 1024, 0, true).unmap();
  n.close(fd);
});

test('a file shrunk under a mapping: the fault is contained with zero pages and counted for that mapping only', (t) => {
  const victimFd = memfd(MiB);
  const otherFd = memfd(MiB);
  const victim = n.mmap(victimFd, MiB, 0, true);
  const other = n.mmap(otherFd, MiB, 0, true);
  const v = new Uint8Array(victim.window(0, MiB));
  const o = new Uint8Array(other.window(0, MiB));
  v[100] = 1;
  v[5 * 4096] = 2;
  o[5 * 4096] = 3;
  const before = n.mappingFaultCount();
  n.ftruncate(victimFd, 4096); // the front-end takes all but the first page away
  t.is(v[100], 1, 'the page still in the file is untouched');
  t.is(v[5 * 4096], 0, 'a page past the new end reads as zero instead of faulting');
  v[6 * 4096] = 9; // a write completes too (into a private page the front-end never sees)
  t.is(v[6 * 4096], 9);
  t.is(victim.faults(), 2);
  t.is(other.faults(), 0);
  t.is(o[5 * 4096], 3, 'another mapping is not affected');
  t.is(n.mappingFaultCount(), before + 2);
  victim.unmap();
  t.is(victim.faults(), 2, 'the count survives unmap');
  other.unmap();
  n.close(victimFd);
  n.close(otherFd);
});

test('a SIGBUS that is not a fault in a guarded mapping still takes the default action', (t) => {
  const addon = addonCandidates.find((p) => existsSync(p))!;
  const script = `
    const a = require(${JSON.stringify(addon)});
    const fd = a.memfdCreate('x', false); a.ftruncate(fd, 4096); a.mmap(fd, 4096, 0, true);
    process.kill(process.pid, 'SIGBUS');
    setTimeout(() => console.log('survived'), 500);`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 });
  t.is(r.signal, 'SIGBUS');
  t.notRegex(r.stdout, /survived/);
});
