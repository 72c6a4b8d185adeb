// The transpile cache holds JavaScript the host runs with its own rights (the jco glue), so
// it must live where only the host's user can write: by default $XDG_CACHE_HOME/vhost-wasm
// (~/.cache/vhost-wasm), never a shared temp directory. Every use checks the directory
// again: it and every folder we created on the way must be real directories (no symlinks)
// owned by our effective uid and not writable by group or others; the folders above it
// must be owned by us or root and, if others can write them, sticky (like /tmp), so nobody
// else can swap a folder out from under us. Files are opened with O_NOFOLLOW and checked
// the same way through their fd.
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readSync, statSync, type Stats } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { VhostWasmError } from '../errors.ts';

export class UntrustedCacheError extends VhostWasmError {
  static override readonly code = 'ERR_UNTRUSTED_CACHE';
  override readonly name = 'UntrustedCacheError';
}

const euid = (): number => process.geteuid?.() ?? -1;

export function defaultCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  // The XDG spec: a relative $XDG_CACHE_HOME is invalid and must be ignored.
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.cache');
  return join(base, 'vhost-wasm');
}

function mode(st: Stats): string {
  return `0${(st.mode & 0o7777).toString(8)}`;
}

/** What is wrong with a file or folder only we may write, or null. */
export function untrusted(st: Stats, what: string): string | null {
  if (st.isSymbolicLink()) return `${what} is a symbolic link`;
  if (st.uid !== euid()) return `${what} is owned by uid ${st.uid}, not by this process's uid ${euid()}`;
  if (st.mode & 0o022) return `${what} is writable by group or others (mode ${mode(st)})`;
  return null;
}

/** Folders above the cache: ours or root's, and sticky if others may write them. */
function untrustedAncestor(st: Stats, path: string): string | null {
  if (st.uid !== euid() && st.uid !== 0) return `${path} (above the cache) is owned by uid ${st.uid}`;
  if (st.mode & 0o022 && !(st.mode & 0o1000)) return `${path} (above the cache) is writable by others and not sticky (mode ${mode(st)})`;
  return null;
}

/**
 * Makes sure `dir` exists (created 0700 as needed) and only we can change it; throws an
 * UntrustedCacheError saying what is wrong and how to fix it otherwise.
 */
export function trustedCacheDir(dir: string): string {
  try {
    return checkCacheDir(resolve(dir));
  } catch (e) {
    if (e instanceof UntrustedCacheError) throw e;
    // EACCES, EROFS, ENOTDIR...: a folder we cannot make or inspect is one we cannot use.
    throw new UntrustedCacheError(`transpile cache ${resolve(dir)}: ${(e as Error).message}; not using it (point XDG_CACHE_HOME at a folder this user can create)`);
  }
}

function checkCacheDir(target: string): string {
  // Walk down from the first folder that exists: those above are checked as ancestors,
  // the cache folder and everything we create on the way must be ours alone.
  const missing: string[] = [];
  let existing = target;
  for (;;) {
    try {
      lstatSync(existing);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      missing.unshift(existing);
      existing = dirname(existing);
    }
  }
  const fail = (why: string): never => {
    throw new UntrustedCacheError(`transpile cache ${target}: ${why}; not using it (remove it, or point XDG_CACHE_HOME at a folder only this user can write)`);
  };
  if (existing === target) {
    const why = untrusted(lstatSync(target), target);
    if (why) fail(why);
    if (!lstatSync(target).isDirectory()) fail(`${target} is not a directory`);
  }
  for (let p = existing === target ? dirname(target) : existing; ; p = dirname(p)) {
    const why = untrustedAncestor(statSync(p), p);
    if (why) fail(why);
    if (p === dirname(p)) break;
  }
  for (const p of missing) {
    try {
      mkdirSync(p, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    // Whoever created it (us, or someone racing us), it must be ours alone now.
    const why = untrusted(lstatSync(p), p);
    if (why) fail(why);
  }
  return target;
}

/** A whole file, read only if it is a regular file only we can write (checked on the open fd). */
export function readTrustedFile(path: string): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new UntrustedCacheError(`${path} is not a regular file`);
    const why = untrusted(st, path);
    if (why) throw new UntrustedCacheError(why);
    const buf = Buffer.alloc(st.size);
    for (let off = 0; off < st.size; ) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) throw new UntrustedCacheError(`${path} shrank while being read`);
      off += n;
    }
    return buf;
  } finally {
    closeSync(fd);
  }
}
