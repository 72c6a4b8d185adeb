// Builds and caches the guest's kernel and base initramfs under
// <repo>/.cache/guest/, and writes the per-boot initramfs that carries a script.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpioArchive, type CpioEntry } from './cpio.ts';
import { extractVmlinux, findHostKernel, hasPvhNote } from './kernel.ts';
import { DEFAULT_MODULES, moduleEntries } from './modules.ts';
import { SCRIPT_PATH, initScript } from './protocol.ts';

export interface GuestImage {
  kernelVersion: string;
  /** What to pass to -kernel: the extracted vmlinux, or the bzImage when it lacks a PVH note. */
  kernel: string;
  bootProtocol: 'pvh' | 'bzimage';
  /** The cached base initramfs (uncompressed newc cpio). */
  initrd: string;
  modules: string[];
}

export interface GuestImageOptions {
  /** Modules (and, automatically, their dependencies) to put in and load at boot. */
  modules?: string[];
  cacheDir?: string;
}

const BUSYBOX = '/bin/busybox';
// Bump when the layout of the base initramfs changes in a way the hash cannot see.
const FORMAT = 1;

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const DEFAULT_CACHE_DIR = join(REPO_ROOT, '.cache/guest');

function sha(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex').slice(0, 16);
}

/** Writes through a temporary name: parallel ava workers may build the same file at once. */
function writeAtomic(path: string, data: Uint8Array): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

function fileStamp(path: string): string {
  const s = statSync(path);
  return `${path}:${s.size}:${s.mtimeMs}`;
}

function baseEntries(version: string, modules: string[], init: string): CpioEntry[] {
  const applets = execFileSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  return [
    ...['bin', 'dev', 'proc', 'sys', 'tmp', 'guest', 'lib', 'lib/modules'].map((path): CpioEntry => ({ kind: 'dir', path })),
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'file', path: 'bin/busybox', data: readFileSync(BUSYBOX), mode: 0o755 },
    ...applets.filter((a) => a !== 'busybox').map((a): CpioEntry => ({ kind: 'symlink', path: `bin/${a}`, target: 'busybox' })),
    // The kernel runs /sbin/modprobe itself for request_module() (e.g. mount -t of an unloaded fs).
    { kind: 'symlink', path: 'sbin', target: 'bin' },
    { kind: 'file', path: 'init', data: init, mode: 0o755 },
    ...moduleEntries(version, modules).filter((e) => e.path !== 'lib' && e.path !== 'lib/modules'),
  ];
}

const memo = new Map<string, GuestImage>();

/** Returns the cached guest image, building what is missing (~1-2 s the first time). */
export function guestImage(opts: GuestImageOptions = {}): GuestImage {
  const modules = opts.modules ?? DEFAULT_MODULES;
  const cacheDir = opts.cacheDir ?? DEFAULT_CACHE_DIR;
  const memoKey = `${cacheDir}\0${modules.join(',')}`;
  const hit = memo.get(memoKey);
  if (hit) return hit;

  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} missing: apt-get install busybox-static`);
  const kernel = findHostKernel();
  mkdirSync(cacheDir, { recursive: true });

  const vmlinux = join(cacheDir, `vmlinux-${kernel.version}-${sha(fileStamp(kernel.bzImage))}`);
  let bootProtocol: GuestImage['bootProtocol'] = 'pvh';
  if (!existsSync(vmlinux)) {
    const elf = extractVmlinux(kernel.bzImage);
    if (hasPvhNote(elf)) writeAtomic(vmlinux, elf);
    else bootProtocol = 'bzimage';
  }

  const init = initScript(modules);
  const key = sha(String(FORMAT), init, modules.join(','), fileStamp(BUSYBOX));
  const initrd = join(cacheDir, `initramfs-${kernel.version}-${key}.cpio`);
  if (!existsSync(initrd)) writeAtomic(initrd, cpioArchive(baseEntries(kernel.version, modules, init)));

  const image: GuestImage = {
    kernelVersion: kernel.version,
    kernel: bootProtocol === 'pvh' ? vmlinux : kernel.bzImage,
    bootProtocol,
    initrd,
    modules,
  };
  memo.set(memoKey, image);
  return image;
}

/**
 * Writes `outPath`: the base initramfs followed by a small archive holding the
 * script (and any extra files, paths relative to /). The kernel unpacks both.
 */
export function writeBootInitrd(
  image: GuestImage,
  script: string,
  outPath: string,
  files: Record<string, string | Uint8Array> = {},
): void {
  const all: [string, string | Uint8Array][] = [[SCRIPT_PATH, script], ...Object.entries(files)];
  // The kernel does not create missing parents while unpacking; existing ones are fine to repeat.
  const dirs = new Set<string>();
  for (const [path] of all) {
    const parts = path.replace(/^\/+/, '').split('/').slice(0, -1);
    parts.forEach((_, i) => dirs.add(parts.slice(0, i + 1).join('/')));
  }
  const extra: CpioEntry[] = [
    ...[...dirs].map((path): CpioEntry => ({ kind: 'dir', path })),
    ...all.map(([path, data]): CpioEntry => ({ kind: 'file', path, data, mode: 0o755 })),
  ];
  // Inode numbers far from the base archive's so the kernel never takes them for hard links.
  writeFileSync(outPath, Buffer.concat([readFileSync(image.initrd), cpioArchive(extra, 1_000_000)]));
}
