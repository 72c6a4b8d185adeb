// A newc ("070701") cpio writer. The kernel unpacks such archives into its
// initramfs, and accepts several concatenated ones, which lets a boot append
// its own small archive to a cached one without rebuilding it.

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Uint8Array | string; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

function record(ino: number, name: string, mode: number, data: Buffer, rdev = [0, 0], nlink = 1): Buffer[] {
  const nameBuf = Buffer.from(`${name}\0`);
  // mtime 0 keeps the archive byte-identical across builds, so its hash is stable.
  const header =
    '070701' +
    [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdev[0], rdev[1], nameBuf.length, 0].map(hex8).join('');
  const head = Buffer.concat([Buffer.from(header, 'ascii'), nameBuf]);
  return [head, pad4(head.length), data, pad4(data.length)];
}

/** Encodes entries (paths without a leading slash) as one newc archive, trailer included. */
export function cpioArchive(entries: CpioEntry[], firstIno = 1): Buffer {
  const parts: Buffer[] = [];
  let ino = firstIno;
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    switch (e.kind) {
      case 'dir':
        parts.push(...record(ino++, path, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0), [0, 0], 2));
        break;
      case 'file':
        parts.push(...record(ino++, path, S_IFREG | (e.mode ?? 0o644), Buffer.from(e.data)));
        break;
      case 'symlink':
        parts.push(...record(ino++, path, S_IFLNK | 0o777, Buffer.from(e.target)));
        break;
      case 'chardev':
        parts.push(...record(ino++, path, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), [e.major, e.minor]));
        break;
    }
  }
  parts.push(...record(0, 'TRAILER!!!', 0, Buffer.alloc(0), [0, 0], 1));
  return Buffer.concat(parts);
}
