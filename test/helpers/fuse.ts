// FUSE requests over a real virtio-fs request queue (queue 1 unless told) of our front-end driver.
import type { VhostUserFrontend } from '../../host/frontend/driver.ts';

export const OP = { LOOKUP: 1, GETATTR: 3, OPEN: 14, READ: 15, RELEASE: 18, INIT: 26, CREATE: 35 } as const;
export const O = { RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, EXCL: 0o200 } as const;

export interface FuseReply {
  error: number;
  body: Buffer;
}

export class FuseClient {
  private unique = 1n;
  constructor(
    private readonly fe: VhostUserFrontend,
    /** The ring the requests go on (1 = the first request queue; 0 is hiprio). */
    readonly queue = 1,
  ) {}

  async req(opcode: number, nodeid: bigint, args: Buffer, writable = 8192): Promise<FuseReply> {
    const h = Buffer.alloc(40);
    h.writeUInt32LE(40 + args.length, 0);
    h.writeUInt32LE(opcode, 4);
    h.writeBigUInt64LE(this.unique++, 8);
    h.writeBigUInt64LE(nodeid, 16);
    const r = await this.fe.queues[this.queue].submit([Buffer.concat([h, args])], writable);
    const out = Buffer.from(r.data.subarray(0, r.len));
    return { error: -out.readInt32LE(4) || 0, body: out.subarray(16) };
  }

  init(): Promise<FuseReply> {
    return this.req(OP.INIT, 0n, u32s(7, 31, 65536, 0xffffffff));
  }
  lookup(dir: bigint, name: string): Promise<FuseReply> {
    return this.req(OP.LOOKUP, dir, Buffer.from(`${name}\0`));
  }
  open(node: bigint, flags: number): Promise<FuseReply> {
    return this.req(OP.OPEN, node, u32s(flags, 0));
  }
  create(dir: bigint, name: string, flags: number, mode = 0o644): Promise<FuseReply> {
    return this.req(OP.CREATE, dir, Buffer.concat([u32s(flags, mode, 0, 0), Buffer.from(`${name}\0`)]));
  }
  getattr(node: bigint): Promise<FuseReply> {
    return this.req(OP.GETATTR, node, Buffer.alloc(16));
  }
  read(fh: bigint, off: number, size: number): Promise<FuseReply> {
    // Room for the out header and all of `size`.
    return this.req(OP.READ, 0n, ioIn(fh, BigInt(off), size), Math.max(8192, 16 + size));
  }
}

export const u32s = (...v: number[]) => Buffer.from(new Uint32Array(v).buffer);

/** struct fuse_read_in (READ, READDIR, READDIRPLUS) and the head of fuse_write_in: fh, offset, size at the same places; 40 bytes. */
export function ioIn(fh: bigint, offset: bigint, size: number): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(fh, 0);
  b.writeBigUInt64LE(offset, 8);
  b.writeUInt32LE(size, 16);
  return b;
}
/** A WRITE's body: fuse_write_in for `data` at `offset` of `fh`, then the data. */
export function writeIn(fh: bigint, offset: bigint, data: Uint8Array): Buffer {
  return Buffer.concat([ioIn(fh, offset, data.length), data]);
}
/** The node id of a LOOKUP/CREATE entry reply; the fh of an OPEN reply. */
export const nodeOf = (r: FuseReply) => r.body.readBigUInt64LE(0);

/**
 * The entries of a READDIRPLUS reply: each fuse_direntplus is a 128-byte fuse_entry_out, then a
 * fuse_dirent (ino, off, namelen, type, name) padded to 8 bytes. `off` is where a listing
 * continues after that entry; `node` the entry's node id (0: not looked up, the kernel asks
 * LOOKUP itself).
 */
export function direntplus(body: Buffer): { name: string; off: bigint; node: bigint }[] {
  const out: { name: string; off: bigint; node: bigint }[] = [];
  for (let at = 0; at < body.length; ) {
    const namelen = body.readUInt32LE(at + 128 + 16);
    out.push({ name: body.subarray(at + 128 + 24, at + 128 + 24 + namelen).toString(), off: body.readBigUInt64LE(at + 128 + 8), node: body.readBigUInt64LE(at) });
    at += 128 + ((24 + namelen + 7) & ~7);
  }
  return out;
}
/** The entries of a READDIR reply: fuse_dirent records (ino, off, namelen, type, name) padded to 8 bytes. */
export function dirents(body: Buffer): { ino: bigint; name: string; off: bigint; type: number }[] {
  const out: { ino: bigint; name: string; off: bigint; type: number }[] = [];
  for (let at = 0; at < body.length; ) {
    const namelen = body.readUInt32LE(at + 16);
    out.push({ ino: body.readBigUInt64LE(at), name: body.subarray(at + 24, at + 24 + namelen).toString('latin1'), off: body.readBigUInt64LE(at + 8), type: body.readUInt32LE(at + 20) });
    at += (24 + namelen + 7) & ~7;
  }
  return out;
}
export const fhOfOpen = (r: FuseReply) => r.body.readBigUInt64LE(0);
export const ERRNO = { ENOENT: 2, EBADF: 9, EEXIST: 17, ENXIO: 6, EISDIR: 21, ENFILE: 23, ELOOP: 40 } as const;

/** fcntl lock types as FUSE carries them, and FUSE's "to the end of the file". */
export const LK = { RDLCK: 0, WRLCK: 1, UNLCK: 2, END: (1n << 63n) - 1n } as const;

/** struct fuse_lk_in: fh, owner, the lock (start, end, type, pid), lk_flags (FUSE_LK_FLOCK when `flock`). */
export function lkIn(fh: bigint, owner: bigint, start: bigint, end: bigint, type: number, pid: number, flock = false): Buffer {
  const b = Buffer.alloc(48);
  b.writeBigUInt64LE(fh, 0);
  b.writeBigUInt64LE(owner, 8);
  b.writeBigUInt64LE(start, 16);
  b.writeBigUInt64LE(end, 24);
  b.writeUInt32LE(type, 32);
  b.writeUInt32LE(pid, 36);
  b.writeUInt32LE(flock ? 1 : 0, 40);
  return b;
}

/** struct fuse_release_in: fh, flags, release_flags, lock_owner (fuse_flush_in has fh and lock_owner at the same places). */
export function releaseIn(fh: bigint, flags: number, owner: bigint): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(fh, 0);
  b.writeUInt32LE(flags, 8);
  b.writeBigUInt64LE(owner, 16);
  return b;
}
