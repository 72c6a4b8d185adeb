// A small tmpfs mounted for one test or file: the way tests fill a file system (ENOSPC) or get
// one without O_DIRECT or ZERO_RANGE. Needs root.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';

export interface Tmpfs {
  /** The mount point. */
  path: string;
  /**
   * Unmounts it and removes the mount point. `lazy` (umount -l) for a file system a process
   * that was killed mid-test may still hold a file on for a moment.
   */
  unmount(opts?: { lazy?: boolean }): void;
}

/** Mounts a tmpfs of `size` (mount's spelling: 64k, 1m, 8M) on a new directory under `parent`. */
export function mountTmpfs(size: string, opts: { parent?: string; prefix?: string } = {}): Tmpfs {
  const path = mkdtempSync(join(opts.parent ?? '/tmp', opts.prefix ?? 'vhost-wasm-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', path]);
  } catch (e) {
    rmSync(path, { recursive: true, force: true });
    throw e;
  }
  return {
    path,
    unmount({ lazy = false } = {}) {
      execFileSync('umount', lazy ? ['-l', path] : [path]);
      rmSync(path, { recursive: true, force: true });
    },
  };
}

/** Runs `fn` with a tmpfs of `size` mounted under `parent`, unmounted after it whatever happens. */
export async function withTmpfs<T>(size: string, parent: string, fn: (path: string) => Promise<T>): Promise<T> {
  const fs = mountTmpfs(size, { parent });
  try {
    return await fn(fs.path);
  } finally {
    fs.unmount();
  }
}
