// A small ext4 file system on a loop device, for tests that need an inode number given to a new
// file. ext4 hands a freed number out again only when it is the lowest free one in the group it
// searches (and, without a journal, not within a minute of the delete unless nothing else is
// free), so on a machine's /tmp whether a number comes back depends on everything deleted there
// lately. Here every other inode is taken first (fillInodes): the next file must get the freed
// one. Needs root (mount -o loop) and e2fsprogs (mkfs.ext4), both in scripts/install-deps.sh.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SmallExt4 {
  /** The mount point. */
  path: string;
  /** Unmounts it (lazily: a share may still hold a directory fd for a moment) and removes its image. */
  unmount(): void;
}

/** Makes and mounts an ext4 image of `sizeMiB` with `inodes` inodes (mkfs rounds up to whole inode-table blocks). */
export function mountSmallExt4(opts: { sizeMiB?: number; inodes?: number } = {}): SmallExt4 {
  const top = mkdtempSync(join(tmpdir(), 'vhost-wasm-ext4-'));
  const image = join(top, 'fs.img');
  const path = join(top, 'mnt');
  mkdirSync(path);
  try {
    execFileSync('truncate', ['-s', `${opts.sizeMiB ?? 8}M`, image]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-N', String(opts.inodes ?? 64), image]);
    execFileSync('mount', ['-o', 'loop', image, path]);
  } catch (e) {
    rmSync(top, { recursive: true, force: true });
    throw e;
  }
  return {
    path,
    unmount() {
      execFileSync('umount', ['-l', path]);
      rmSync(top, { recursive: true, force: true });
    },
  };
}

/** Creates empty files `.fill<n>` in `dir` until the file system has no free inode left; returns their paths. */
export function fillInodes(dir: string): string[] {
  const made: string[] = [];
  for (;;) {
    const p = join(dir, `.fill${made.length}`);
    try {
      writeFileSync(p, '');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC') return made;
      throw e;
    }
    made.push(p);
    if (made.length > 100_000) throw new Error(`${dir}: still not full after 100,000 files: not a small file system`);
  }
}
