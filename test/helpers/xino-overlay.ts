// An overlayfs mount whose lower layer's inode numbers carry the layer in their top bits (xino):
// with the layers on two file systems (two small tmpfs mounts) and xino=on, every lower file's
// st_ino is past 2^63, and two such files differ only in low bits a double rounds away. Needs
// root (mount), as test/helpers/small-ext4.ts does; a refused mount throws (the test fails, it
// does not pass unchecked).
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export interface XinoOverlay {
  /** The overlay's mount point. */
  merged: string;
  /** Unmounts the overlay and both tmpfs layers (lazily: a share may still hold an fd) and removes the directories. */
  unmount(): void;
}

/** Mounts an overlay whose lower layer holds `files` (path -> content; parent directories made). */
export function mountXinoOverlay(files: Record<string, string>): XinoOverlay {
  const top = mkdtempSync(join(tmpdir(), 'vhost-wasm-xino-'));
  const [lower, upperFs, merged] = ['lower', 'upper-fs', 'merged'].map((d) => join(top, d));
  const mounted: string[] = [];
  const unmount = () => {
    for (const m of mounted.reverse()) execFileSync('umount', ['-l', m]);
    mounted.length = 0;
    rmSync(top, { recursive: true, force: true });
  };
  try {
    for (const d of [lower, upperFs, merged]) mkdirSync(d);
    for (const d of [lower, upperFs]) {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'vhost-wasm-xino', d]);
      mounted.push(d);
    }
    for (const [path, content] of Object.entries(files)) {
      mkdirSync(dirname(join(lower, path)), { recursive: true });
      writeFileSync(join(lower, path), content);
    }
    mkdirSync(join(upperFs, 'upper'));
    mkdirSync(join(upperFs, 'work'));
    const opts = `lowerdir=${lower},upperdir=${join(upperFs, 'upper')},workdir=${join(upperFs, 'work')},xino=on`;
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', opts, merged]);
    mounted.push(merged);
  } catch (e) {
    unmount();
    throw e;
  }
  return { merged, unmount };
}
