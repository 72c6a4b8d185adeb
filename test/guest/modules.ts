// Gathers a set of kernel modules plus everything they depend on, with the
// modules.dep that lets the guest's busybox modprobe load them by name.

import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import type { CpioEntry } from './cpio.ts';

/**
 * Every virtio driver in Debian's kernel is a module. ext2 is served by ext4,
 * and ext4 names its crc32c only as a softdep on a crypto alias, which busybox
 * modprobe does not follow: crc32c_generic is listed for that reason.
 */
export const DEFAULT_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_rng', 'virtiofs', 'ext4', 'crc32c_generic'];

/**
 * The default set plus virtio_net (and, through its `depends`, net_failover and failover),
 * for guests with a virtio-net device. Kept out of the default set so the other tests' guests
 * do not probe for a network they do not have.
 */
export const NET_MODULES = [...DEFAULT_MODULES, 'virtio_net'];

function modinfo(version: string, field: string, name: string): string {
  return execFileSync('modinfo', ['-k', version, '-F', field, name], { encoding: 'utf8' }).trim();
}

/** Absolute paths of the .ko files for `names` and their transitive `depends`. */
export function resolveModuleFiles(version: string, names: string[]): string[] {
  const files = new Set<string>();
  const seen = new Set<string>();
  const visit = (name: string): void => {
    if (seen.has(name)) return;
    seen.add(name);
    let file: string;
    try {
      file = modinfo(version, 'filename', name);
    } catch {
      throw new Error(`kernel ${version} has no module ${name} (is kmod installed?)`);
    }
    // Built-in "modules" report this instead of a path: nothing to copy.
    if (file.startsWith('(builtin)') || file === '') return;
    files.add(file);
    for (const dep of modinfo(version, 'depends', name).split(',').filter(Boolean)) visit(dep);
  };
  for (const n of names) visit(n);
  return [...files].sort();
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? [p, ...walk(p)] : [p];
  });
}

/**
 * cpio entries for lib/modules/<version> holding `names` and their dependencies,
 * indexed by `depmod -b` run on a staging copy.
 */
export function moduleEntries(version: string, names: string[]): CpioEntry[] {
  const srcRoot = `/lib/modules/${version}`;
  const stage = mkdtempSync(join(tmpdir(), 'guest-modules-'));
  try {
    const dstRoot = join(stage, 'lib/modules', version);
    mkdirSync(dstRoot, { recursive: true });
    for (const file of resolveModuleFiles(version, names)) {
      const dst = join(dstRoot, relative(srcRoot, file));
      mkdirSync(dirname(dst), { recursive: true });
      copyFileSync(file, dst);
    }
    // Lets modprobe treat built-in names (e.g. rng-core) as already loaded.
    for (const f of ['modules.builtin', 'modules.builtin.modinfo']) {
      if (existsSync(join(srcRoot, f))) copyFileSync(join(srcRoot, f), join(dstRoot, f));
    }
    execFileSync('depmod', ['-b', stage, version], { stdio: ['ignore', 'ignore', 'pipe'] });
    return walk(join(stage, 'lib')).map((p): CpioEntry => {
      const path = relative(stage, p);
      return statSync(p).isDirectory() ? { kind: 'dir', path } : { kind: 'file', path, data: readFileSync(p) };
    });
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
