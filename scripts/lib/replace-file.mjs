// Puts build outputs in place by rename(2), never by rewriting the file that is there.
//
// A running host has dist/vhost_native.node mapped (dlopen), and writing over it in place
// (copyFileSync, cp: O_TRUNC then write) is fatal to that process even with identical bytes:
// truncating a mapped file discards every page of it in every process, the private copies too
// (the relocated GOT and data), so the next native call jumps through unrelocated pointers and
// the host dies of SIGSEGV. A test that ran `node build.mjs` beside a running host killed it
// that way. A rename gives the path a new inode; a process that mapped or opened the old one
// keeps it intact, and one that opens the path sees either the whole old file or the whole new.
import { copyFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';

/** A temporary name in the same directory (rename(2) does not cross file systems). */
const temporary = (dst) => `${dst}.tmp-${process.pid}`;

function replaceWith(dst, write) {
  const tmp = temporary(dst);
  try {
    write(tmp);
    renameSync(tmp, dst);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/** Copies `src` to `dst` (with its mode) by rename, so no process using the old `dst` is disturbed. */
export function installFile(src, dst) {
  replaceWith(dst, (tmp) => copyFileSync(src, tmp));
}

/** Writes `data` to `dst` by rename: readers see the whole old file or the whole new one. */
export function writeFileReplacing(dst, data, mode = 0o644) {
  replaceWith(dst, (tmp) => writeFileSync(tmp, data, { mode }));
}
