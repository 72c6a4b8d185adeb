// The guest's locks on a share, handed from one instance of the fs device to the next in the
// same process: a live plugin upgrade (host/session/upgrade.ts). Record locks are OFD locks on
// one description per (inode, lock owner) and a flock lives on the guest's open file's own
// description (host/fs/locks.ts); a description's locks last while any fd refers to it. So
// nothing is unlocked and taken again (a host process could take the lock in between): the new
// instance's share duplicates the old one's descriptions (fsDup) before the old one closes its
// fds, and the locks never drop. Those fds are numbers in this process, so this section is
// for this process only: it names the pid and a load in any other refuses it. It is never
// part of a migration's or a host handover's state (docs/virtio-fs.md, "Locks").
//
// The new instance's open files are the plugin's reopens during finish-load (by name, new
// descriptions). Which old open file each is, is decided by (inode, access mode): the old
// share refuses to hand over (instanceBound) when an open file that holds or names a lock has
// a twin with the same inode and access mode, which would make the match a guess.
//
// Format: "VFSL", u8 version, u8 oldest version that can read it, u16 zero, then JSON (u64s
// as decimal strings). Version 1 is the first. A reader refuses a format whose oldest-reader
// version is above its own, so a later version can add fields an older host may ignore.
import { MAX_RANGES, type OwnerRecord, type Range } from './locks.ts';
import { SectionId } from '../migration/section.ts';

export const LOCK_HANDOFF_SECTION_ID = SectionId.HOST_BASE + 1;
export const LOCK_HANDOFF_VERSION = 1;
const MAGIC = 'VFSL';
const HEAD = 8;
/** More than MAX_RANGES ranges for 4096 owners: a section past this is refused unread. */
export const LOCK_HANDOFF_MAX_BYTES = 64 << 20;

/** An open file a lock names, in the giving share. */
export interface HandoffFile {
  id: bigint;
  /** "dev:ino". */
  inode: string;
  /** O_ACCMODE bits it was opened with. */
  acc: number;
  /** Its fd in the giving share (a flock lives on its description). */
  fd: number;
}

export interface LockHandoff {
  pid: number;
  files: HandoffFile[];
  owners: OwnerRecord[];
  /** Open files (giving share's ids) with a flock. */
  flocked: bigint[];
}

export function encodeLockHandoff(h: LockHandoff): Uint8Array {
  const big = (_k: string, v: unknown) => (typeof v === 'bigint' ? v.toString() : v);
  const body = Buffer.from(JSON.stringify({ pid: h.pid, files: h.files, owners: h.owners, flocked: h.flocked }, big));
  const out = Buffer.alloc(HEAD + body.length);
  out.write(MAGIC, 0, 'latin1');
  out[4] = LOCK_HANDOFF_VERSION;
  out[5] = 1;
  body.copy(out, HEAD);
  return out;
}

/** The handoff with every fd it names (open files' and owners') replaced by `fd(old)`: numbers on the wire are indexes, in a share they are fds. */
export function renumberFds(h: LockHandoff, fd: (n: number) => number): LockHandoff {
  return { ...h, files: h.files.map((f) => ({ ...f, fd: fd(f.fd) })), owners: h.owners.map((o) => ({ ...o, fd: fd(o.fd) })) };
}

/** Parses and checks a handoff; throws with what is wrong. */
export function decodeLockHandoff(bytes: Uint8Array): LockHandoff {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < HEAD || b.toString('latin1', 0, 4) !== MAGIC) throw new Error('not a lock handoff (bad magic)');
  if (b[5] > LOCK_HANDOFF_VERSION) throw new Error(`lock handoff version ${b[4]} needs a reader of version ${b[5]}; this host reads up to ${LOCK_HANDOFF_VERSION}`);
  if (b[6] !== 0 || b[7] !== 0) throw new Error('lock handoff: reserved bytes are not zero');
  let j: unknown;
  try {
    j = JSON.parse(b.toString('utf8', HEAD));
  } catch (e) {
    throw new Error(`lock handoff: the body is not JSON (${(e as Error).message})`);
  }
  const o = obj(j, 'handoff');
  const pid = int(o.pid, 'pid', 1, 2 ** 31);
  const files = arr(o.files, 'files').map((f, i) => {
    const x = obj(f, `files[${i}]`);
    return { id: u64(x.id, `files[${i}].id`), inode: inode(x.inode, `files[${i}].inode`), acc: int(x.acc, `files[${i}].acc`, 0, 3), fd: int(x.fd, `files[${i}].fd`, 0, 2 ** 31 - 1) };
  });
  const owners = arr(o.owners, 'owners').map((v, i): OwnerRecord => {
    const x = obj(v, `owners[${i}]`);
    const listed = arr(x.ranges, `owners[${i}].ranges`);
    // The table never keeps more (older ones are forgotten): nor does it take more from a peer.
    if (listed.length > MAX_RANGES) throw new Error(`lock handoff: owners[${i}] lists ${listed.length} ranges, at most ${MAX_RANGES}`);
    const ranges = listed.map((r, k): Range => {
      const y = obj(r, `owners[${i}].ranges[${k}]`);
      const start = u64(y.start, 'start');
      const end = u64(y.end, 'end');
      if (end < start) throw new Error(`lock handoff: owners[${i}].ranges[${k}] ends before it starts`);
      return { start, end, kind: int(y.kind, 'kind', 0, 1), pid: int(y.pid, 'pid', 0, 2 ** 32 - 1) };
    });
    if (typeof x.forgot !== 'boolean') throw new Error(`lock handoff: owners[${i}].forgot must be a boolean`);
    return { fd: int(x.fd, `owners[${i}].fd`, 0, 2 ** 31 - 1), inode: inode(x.inode, `owners[${i}].inode`), owner: u64(x.owner, `owners[${i}].owner`), file: u64(x.file, `owners[${i}].file`), ranges, forgot: x.forgot };
  });
  const flocked = arr(o.flocked, 'flocked').map((v, i) => u64(v, `flocked[${i}]`));
  const ids = new Set(files.map((f) => f.id));
  for (const n of [...owners.map((x) => x.file), ...flocked]) if (!ids.has(n)) throw new Error(`lock handoff: open file ${n} is named but not described`);
  return { pid, files, owners, flocked };
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`lock handoff: ${what} must be an object`);
  return v as Record<string, unknown>;
}
function arr(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`lock handoff: ${what} must be a list`);
  return v;
}
function int(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`lock handoff: ${what} must be an integer in [${min}, ${max}], not ${JSON.stringify(v)}`);
  return v;
}
function u64(v: unknown, what: string): bigint {
  if (typeof v !== 'string' || !/^\d{1,20}$/.test(v) || BigInt(v) >= 1n << 64n) throw new Error(`lock handoff: ${what} must be a u64 in decimal, not ${JSON.stringify(v)}`);
  return BigInt(v);
}
function inode(v: unknown, what: string): string {
  if (typeof v !== 'string' || !/^\d{1,20}:\d{1,20}$/.test(v)) throw new Error(`lock handoff: ${what} must be "dev:ino", not ${JSON.stringify(v)}`);
  return v;
}
