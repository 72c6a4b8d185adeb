// A one-file FUSE file system served from this process over /dev/fuse, whose file answers
// EIO for reads and writes that touch a chosen byte range: a real backing I/O error (the kernel
// hands the host's pread/pwrite/io_uring request the errno) where device-mapper's `error`
// target is not available (a kernel without device-mapper, as in the test container).
// Only what the kernel asks of a mounted file holding a disk image is answered; anything else
// gets ENOSYS. The file is opened FOPEN_DIRECT_IO (no page cache, every request reaches here)
// unless `cached`: then reads go through the page cache, and the kernel copies a read's bytes
// into the reader's buffer only once this process answered it (no pinned pages, as O_DIRECT
// has), so a buffer unmapped under a slow read shows (EFAULT). Between hold() and open(),
// reads wait unanswered (failing ones too), or writes with hold('writes'), or both: the test
// decides when the slow file answers. A held write changes `data` when it is answered.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, read, readFileSync, readdirSync, rmdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { processAlive } from '../../host/server/takeover.ts';

const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17, RELEASE: 18,
  FSYNC: 20, FLUSH: 25, INIT: 26, OPENDIR: 27, RELEASEDIR: 29, INTERRUPT: 36, DESTROY: 38, BATCH_FORGET: 42,
} as const;
const EIO = 5;
const ENOENT = 2;
const ENOSYS = 38;
const ROOT = 1n;
const FILE = 2n;
const MAX_WRITE = 128 << 10;
const FOPEN_DIRECT_IO = 1;
const FUSE_ASYNC_READ = 1;

/** A READ or WRITE of the file as the kernel sent it (byte offset and size). */
export interface FuseIo {
  kind: 'read' | 'write';
  off: number;
  size: number;
}

export interface FaultyFuse {
  /** The file's path on the mount. */
  path: string;
  /** Its contents (what a read outside the bad range answers, what writes outside it change). */
  data: Buffer;
  /** Requests answered with EIO, by kind. */
  failed: { read: number; write: number };
  /** Every READ and WRITE the kernel sent, in arrival order (a test may empty it to start a count). */
  ops: FuseIo[];
  /** Requests held since hold(), not yet answered. */
  readonly held: number;
  /** From now on, reads (or writes, or both) wait unanswered until open(). */
  hold(what?: 'reads' | 'writes' | 'all'): void;
  /** Answers the held requests and lets every later one through. */
  open(): void;
  unmount(): Promise<void>;
}

/** Where the mounts go: /tmp/vhost-wasm-fuse-<pid of the serving process>-XXXXXX. */
const MOUNT_DIR = '/tmp';
const MOUNT_NAME = 'vhost-wasm-fuse-';
const FSTYPE = 'fuse.vhost-wasm-faulty';


/**
 * Mounts of this helper left by a test process killed before its unmount ran (the server gone,
 * every access "Transport endpoint is not connected"), and their directories: lazily unmounted
 * and removed. Only this helper's own: a directory under /tmp named with its prefix, and a mount
 * there of its file-system type. One named with a live process's pid is that process's and left
 * alone; one from before names carried the pid is taken only if a stat of it (in a child with a
 * deadline, so a live but stuck server cannot hang this process) says the server is gone.
 */
function removeStaleMounts(): void {
  const mounted = new Map<string, string>();
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0) continue;
    mounted.set(f[4].replace(/\\040/g, ' '), f[dash + 1]);
  }
  let names: string[];
  try {
    names = readdirSync(MOUNT_DIR).filter((n) => n.startsWith(MOUNT_NAME));
  } catch {
    return;
  }
  for (const name of names) {
    const dir = `${MOUNT_DIR}/${name}`;
    const fstype = mounted.get(dir);
    if (fstype !== undefined && fstype !== FSTYPE) continue; // not ours: never touched
    const pid = /^vhost-wasm-fuse-(\d+)-/.exec(name)?.[1];
    if (pid !== undefined) {
      if (Number(pid) === process.pid || processAlive(Number(pid))) continue;
    } else if (fstype !== undefined) {
      const st = spawnSync('stat', ['-c', '%i', dir], { encoding: 'utf8', timeout: 2000, killSignal: 'SIGKILL' });
      if (!/not connected/i.test(st.stderr ?? '')) continue;
    } else continue; // an old-style name, not mounted: whose it is cannot be told
    if (fstype !== undefined) spawnSync('umount', ['-l', dir]);
    try {
      rmdirSync(dir); // empty once unmounted; never a recursive removal through a mount
    } catch {
      // still mounted (umount failed) or not empty: left as it is
    }
  }
}

/**
 * The mount's FUSE connection, as /sys/fs/fuse/connections names it: the minor of the
 * superblock's device (major 0, an anonymous device). Read from /proc/self/mountinfo, not by
 * stat of the mount point, which would ask this very process's server before it serves.
 */
function connectionOf(dir: string): number {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[4] === dir) return Number(f[2].split(':')[1]);
  }
  throw new Error(`${dir} is not in /proc/self/mountinfo right after its mount`);
}

/** Writes `abort` of a FUSE connection: every read of its /dev/fuse fd ends with ENODEV. fusectl is mounted if it is not. */
function abortConnection(connection: number): void {
  const ctl = '/sys/fs/fuse/connections';
  if (!existsSync(`${ctl}/${connection}`)) spawnSync('mount', ['-t', 'fusectl', 'fusectl', ctl]);
  try {
    writeFileSync(`${ctl}/${connection}/abort`, '1');
  } catch {
    // Gone meanwhile: the connection ended on its own.
  }
}

function settlesWithin(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]).finally(() => clearTimeout(timer));
}

/** Mounts the file system (root needed) with one file `name` of `data.length` bytes; [badStart, badEnd) fails with EIO. */
export async function mountFaultyFuse(name: string, data: Buffer, badStart: number, badEnd: number, opts: { cached?: boolean } = {}): Promise<FaultyFuse> {
  // A fuse built as a module (Debian's) loads on first use; a machine without /dev/fuse loads it.
  if (!existsSync('/dev/fuse')) spawnSync('modprobe', ['fuse']);
  removeStaleMounts();
  // The pid in the name: a later run can tell whether the server of a mount left behind is gone.
  const dir = mkdtempSync(`${MOUNT_DIR}/${MOUNT_NAME}${process.pid}-`);
  const fd = openSync('/dev/fuse', 'r+');
  // -i: no mount.fuse helper; the kernel takes the fd it serves over from the options.
  const m = spawnSync('mount', ['-i', '-t', 'fuse.vhost-wasm-faulty', '-o', 'fd=3,rootmode=40000,user_id=0,group_id=0,allow_other', 'faulty', dir], { stdio: ['ignore', 'pipe', 'pipe', fd], encoding: 'utf8' });
  if (m.status !== 0) {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`mounting the FUSE file system failed: ${m.stderr}`);
  }
  const connection = connectionOf(dir);
  const failed = { read: 0, write: 0 };
  const ops: FuseIo[] = [];
  let gate: (() => void)[] | null = null;
  let holdReads = true;
  let holdWrites = false;
  const bad = (off: number, len: number) => off < badEnd && off + len > badStart;
  const buf = Buffer.alloc(MAX_WRITE + 4096);
  const reply = (unique: bigint, error: number, body: Buffer = Buffer.alloc(0)) => {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(16 + body.length, 0);
    h.writeInt32LE(-error, 4);
    h.writeBigUInt64LE(unique, 8);
    try {
      writeSync(fd, Buffer.concat([h, body]));
    } catch {
      // ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
    }
  };
  const attr = (node: bigint): Buffer => {
    const a = Buffer.alloc(88);
    a.writeBigUInt64LE(node, 0);
    a.writeBigUInt64LE(node === FILE ? BigInt(data.length) : 0n, 8);
    a.writeBigUInt64LE(node === FILE ? BigInt(data.length / 512) : 0n, 16);
    a.writeUInt32LE(node === FILE ? 0o100644 : 0o40755, 60);
    a.writeUInt32LE(node === FILE ? 1 : 2, 64);
    a.writeUInt32LE(4096, 80);
    return a;
  };
  const handle = (req: Buffer): void => {
    const opcode = req.readUInt32LE(4);
    const unique = req.readBigUInt64LE(8);
    const node = req.readBigUInt64LE(16);
    const arg = req.subarray(40);
    switch (opcode) {
      case OP.INIT: {
        const out = Buffer.alloc(64);
        out.writeUInt32LE(7, 0);
        out.writeUInt32LE(31, 4);
        out.writeUInt32LE(0, 8); // no read-ahead
        // FUSE_ASYNC_READ when cached: page-cache reads of one file run side by side (else the
        // kernel sends them one at a time, and only one could be held).
        out.writeUInt32LE(opts.cached ? FUSE_ASYNC_READ : 0, 12);
        out.writeUInt16LE(16, 16);
        out.writeUInt16LE(12, 18);
        out.writeUInt32LE(MAX_WRITE, 20);
        out.writeUInt32LE(1, 24);
        out.writeUInt16LE(MAX_WRITE / 4096, 28);
        return reply(unique, 0, out);
      }
      case OP.LOOKUP: {
        const wanted = arg.subarray(0, arg.indexOf(0)).toString();
        if (node !== ROOT || wanted !== name) return reply(unique, ENOENT);
        const out = Buffer.alloc(40);
        out.writeBigUInt64LE(FILE, 0);
        return reply(unique, 0, Buffer.concat([out, attr(FILE)]));
      }
      case OP.GETATTR:
      case OP.SETATTR:
        return reply(unique, 0, Buffer.concat([Buffer.alloc(16), attr(node)]));
      case OP.OPEN:
      case OP.OPENDIR: {
        const out = Buffer.alloc(16);
        out.writeUInt32LE(opcode === OP.OPEN && !opts.cached ? FOPEN_DIRECT_IO : 0, 8);
        return reply(unique, 0, out);
      }
      case OP.READ: {
        const off = Number(arg.readBigUInt64LE(8));
        const size = arg.readUInt32LE(16);
        ops.push({ kind: 'read', off, size });
        const answer = bad(off, size)
          ? () => (failed.read++, reply(unique, EIO))
          : () => reply(unique, 0, Buffer.from(data.subarray(off, Math.min(data.length, off + size))));
        if (gate && holdReads) return void gate.push(answer);
        return answer();
      }
      case OP.WRITE: {
        const off = Number(arg.readBigUInt64LE(8));
        const size = arg.readUInt32LE(16);
        ops.push({ kind: 'write', off, size });
        if (bad(off, size)) return (failed.write++, reply(unique, EIO));
        const n = Math.max(0, Math.min(size, data.length - off));
        // A copy: `arg` is the read buffer, which the next request overwrites.
        const payload = Buffer.from(arg.subarray(40, 40 + n));
        const answer = () => {
          payload.copy(data, off);
          const out = Buffer.alloc(8);
          out.writeUInt32LE(n, 0);
          reply(unique, 0, out);
        };
        if (gate && holdWrites) return void gate.push(answer);
        return answer();
      }
      case OP.STATFS: {
        const out = Buffer.alloc(80);
        out.writeUInt32LE(4096, 40);
        out.writeUInt32LE(255, 44);
        return reply(unique, 0, out);
      }
      case OP.RELEASE:
      case OP.RELEASEDIR:
      case OP.FSYNC:
      case OP.FLUSH:
      case OP.DESTROY:
        return reply(unique, 0);
      case OP.FORGET:
      case OP.BATCH_FORGET:
      case OP.INTERRUPT:
        return; // no answer
      default:
        return reply(unique, ENOSYS);
    }
  };
  // One request per read(2) of /dev/fuse, on the thread pool: the serving never blocks this
  // thread, so a test may wait on the host while the host waits on this file system.
  const served = new Promise<void>((resolve) => {
    const next = () =>
      read(fd, buf, 0, buf.length, null, (err, n) => {
        if (err) {
          // ENODEV: unmounted, the end of the serving.
          resolve();
          return;
        }
        handle(buf.subarray(0, n));
        next();
      });
    next();
  });
  function open(): void {
    const waiting = gate ?? [];
    gate = null;
    holdReads = true;
    holdWrites = false;
    for (const answer of waiting) answer();
  }
  return {
    path: join(dir, name),
    data,
    failed,
    ops,
    get held() {
      return gate?.length ?? 0;
    },
    hold(what: 'reads' | 'writes' | 'all' = 'reads') {
      gate ??= [];
      holdReads = what !== 'writes';
      holdWrites = what !== 'reads';
    },
    open,
    async unmount() {
      open();
      spawnSync('umount', ['-l', dir]);
      // A lazy unmount ends the serving (ENODEV) only once nothing uses the file system any
      // more; a reference left anywhere (an io_uring worker, a process a test did not reap)
      // would keep the read on /dev/fuse, and with it this test process, waiting for ever.
      // So the connection is aborted if the serving has not ended within a second.
      if (!(await settlesWithin(served, 1000))) abortConnection(connection);
      if (!(await settlesWithin(served, 10_000))) throw new Error(`the FUSE server of ${dir} did not end after its unmount and an abort of connection ${connection}`);
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
