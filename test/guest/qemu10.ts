// QEMU 10 (Debian trixie's), fetched by scripts/qemu10.sh into <repo>/.cache/qemu10/ and run
// from there through trixie's own loader. Nothing is installed system-wide.
//
//   const q = await ensureQemu10();   // first use on a fresh machine: ~6-60 s (37 MB download)
//   bootGuest({ qemuBinary: q.binary, ... });
//   startStorageDaemon({ binary: q.storageDaemon, ... });

import { execFile } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './image.ts';

export interface Qemu10 {
  /** "QEMU emulator version 10.0.13 (Debian ...)" */
  version: string;
  /** A wrapper script: use it like qemu-system-x86_64 (e.g. BootOptions.qemuBinary). */
  binary: string;
  /** Wrapper for QEMU 10's qemu-storage-daemon. */
  storageDaemon: string;
  /** Wrapper for QEMU 10's qemu-img. */
  img: string;
  /** The same as `binary` without the wrapper: argv to prepend to QEMU's own arguments... */
  prefix: string[];
  /** ...with this environment added. */
  env: Record<string, string>;
  /** The private root the packages were unpacked into. */
  root: string;
}

export const QEMU10_SCRIPT = join(REPO_ROOT, 'scripts/qemu10.sh');

function baseDir(): string {
  const dir = process.env.VHOST_WASM_QEMU10_DIR ?? join(REPO_ROOT, '.cache/qemu10');
  // Physically, as scripts/qemu10.sh writes the wrappers: a worktree whose .cache links to
  // another checkout's then finds them (its own path is in no wrapper, so it saw no QEMU 10).
  return existsSync(dir) ? realpathSync(dir) : dir;
}

/** QEMU 10 if scripts/qemu10.sh already fetched it, else null (no network, no process started). */
export function qemu10(): Qemu10 | null {
  const base = baseDir();
  const stamp = join(base, '.complete');
  const bin = join(base, 'bin');
  if (!existsSync(stamp) || !existsSync(join(bin, 'qemu-system-x86_64'))) return null;
  const root = join(base, 'root');
  // The wrappers hold absolute paths: a copied or moved cache needs the script to run again.
  if (!readFileSync(join(bin, 'qemu-system-x86_64'), 'utf8').includes(`${root}/usr/bin/`)) return null;
  const libdir = join(root, 'usr/lib/x86_64-linux-gnu');
  return {
    version: readFileSync(stamp, 'utf8').trim(),
    binary: join(bin, 'qemu-system-x86_64'),
    storageDaemon: join(bin, 'qemu-storage-daemon'),
    img: join(bin, 'qemu-img'),
    prefix: [
      join(libdir, 'ld-linux-x86-64.so.2'),
      '--library-path', libdir,
      '--argv0', 'qemu-system-x86_64',
      join(root, 'usr/bin/qemu-system-x86_64'),
      '-L', join(root, 'usr/share/qemu'),
      '-L', join(root, 'usr/share/seabios'),
    ],
    env: { QEMU_MODULE_DIR: join(libdir, 'qemu') },
    root,
  };
}

let pending: Promise<Qemu10> | undefined;

/**
 * Returns QEMU 10, running scripts/qemu10.sh first when it is not cached yet (private apt
 * against deb.debian.org: ~6 s on a fast mirror, allow a few minutes). Concurrent callers,
 * also in other processes, share one fetch (the script takes a lock).
 */
export function ensureQemu10(opts: { timeoutMs?: number } = {}): Promise<Qemu10> {
  const cached = qemu10();
  if (cached) return Promise.resolve(cached);
  pending ??= new Promise<Qemu10>((resolve, reject) => {
    execFile(
      'bash',
      [QEMU10_SCRIPT, '--quiet'],
      { timeout: opts.timeoutMs ?? 600_000, maxBuffer: 64 << 20 },
      (err, _stdout, stderr) => {
        const q = qemu10();
        if (err || !q) {
          pending = undefined;
          reject(new Error(`scripts/qemu10.sh failed (${err?.message ?? 'no QEMU 10 afterwards'}):\n${stderr.slice(-4000)}`));
        } else resolve(q);
      },
    );
  });
  return pending;
}
