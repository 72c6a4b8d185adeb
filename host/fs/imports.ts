// The `filesystem` import object handed to jco's glue: FsShare results become WIT
// result values ({tag, val}); an ungranted capability traps on every call. File data does
// not pass here (vhost:device@0.2.2): `backing` hands the plugin an index for answers.
import type { FsFileBackings } from './file-backings.ts';
import type { FsResult, FsShare } from './share.ts';
import type { FileLock } from './locks.ts';

type WitResult<T> = { tag: 'ok'; val: T } | { tag: 'err'; val: number };

const wit = <T>(r: FsResult<T>): WitResult<T> => (r.ok ? { tag: 'ok', val: r.val } : { tag: 'err', val: r.errno });

/**
 * `files`: where open files become backings (the device's backing table); without it (a host
 * that runs no file I/O) `backing` traps, saying so.
 */
export function filesystemImports(share: FsShare | undefined, refuse: () => never, files?: FsFileBackings): Record<string, unknown> {
  const s = (): FsShare => share ?? refuse();
  const opened = <T>(r: FsResult<T>, h: (v: T) => bigint, flags: number): FsResult<T> => {
    if (r.ok) files?.opened(h(r.val), flags);
    return r;
  };
  return {
    tag: (): string => s().tag,
    readOnly: (): boolean => s().readOnly,
    migrationOnError: (): string => s().migrationOnError,
    cache: (): string => s().cache,
    posixAcl: (): boolean => s().posixAcl,
    root: () => wit(s().root()),
    lookup: (dir: bigint, name: Uint8Array) => wit(s().lookup(dir, name)),
    lookupKnown: (dir: bigint, name: Uint8Array, known: bigint, dev: bigint, ino: bigint) => wit(s().lookupKnown(dir, name, known, dev, ino)),
    sameNode: (a: bigint, b: bigint): boolean => s().sameNode(a, b),
    close: (h: bigint): void => {
      const sh = s();
      if (files) files.close(h);
      else sh.closeHandle(h);
    },
    getattr: (h: bigint) => wit(s().getattr(h)),
    setattr: (
      h: bigint,
      valid: number,
      mode: number,
      uid: number,
      gid: number,
      size: bigint,
      atime: bigint,
      atimeNsec: number,
      mtime: bigint,
      mtimeNsec: number,
    ) => wit(s().setattr(h, valid, mode, uid, gid, size, atime, atimeNsec, mtime, mtimeNsec)),
    open: (node: bigint, flags: number) => wit(opened(s().open(node, flags), (h) => h, flags)),
    create: (dir: bigint, name: Uint8Array, flags: number, mode: number) =>
      wit(opened(s().create(dir, name, flags, mode), ([, h]) => h, flags)),
    mknod: (dir: bigint, name: Uint8Array, mode: number) => wit(s().mknod(dir, name, mode)),
    mkdir: (dir: bigint, name: Uint8Array, mode: number) => wit(s().mkdir(dir, name, mode)),
    createWithUmask: (dir: bigint, name: Uint8Array, flags: number, mode: number, umask: number) =>
      wit(opened(s().create(dir, name, flags, mode, umask), ([, h]) => h, flags)),
    tmpfile: (dir: bigint, flags: number, mode: number, umask: number | undefined) =>
      wit(opened(s().tmpfile(dir, flags, mode, umask ?? undefined), ([, h]) => h, flags)),
    mknodWithUmask: (dir: bigint, name: Uint8Array, mode: number, umask: number) => wit(s().mknod(dir, name, mode, umask)),
    mkdirWithUmask: (dir: bigint, name: Uint8Array, mode: number, umask: number) => wit(s().mkdir(dir, name, mode, umask)),
    symlink: (dir: bigint, name: Uint8Array, target: Uint8Array) => wit(s().symlink(dir, name, target)),
    link: (node: bigint, dir: bigint, name: Uint8Array) => wit(s().link(node, dir, name)),
    unlink: (dir: bigint, name: Uint8Array) => wit(s().unlink(dir, name)),
    rmdir: (dir: bigint, name: Uint8Array) => wit(s().rmdir(dir, name)),
    rename: (od: bigint, on: Uint8Array, nd: bigint, nn: Uint8Array, flags: number) =>
      wit(s().rename(od, on, nd, nn, flags)),
    readlink: (node: bigint) => wit(s().readlink(node)),
    backing: (file: bigint) => {
      s();
      if (!files) throw new Error('filesystem.backing: this host has no backing table for shared files (a host bug: report it)');
      return wit(files.backing(file));
    },
    readdir: (dir: bigint, offset: bigint, max: number) => wit(s().readdir(dir, offset, max)),
    readdirRecords: (dir: bigint, offset: bigint, maxBytes: number, perEntry: number) =>
      wit(s().readdirRecords(dir, offset, maxBytes, perEntry)),
    fsync: (file: bigint, datasync: boolean) => {
      const sh = s();
      files?.settleWrites(file);
      return wit(sh.fsync(file, datasync));
    },
    fallocate: (file: bigint, mode: number, offset: bigint, len: bigint) => wit(s().fallocate(file, mode, offset, len)),
    lseek: (file: bigint, offset: bigint, whence: number) => wit(s().lseek(file, offset, whence)),
    statfs: (h: bigint) => wit(s().statfs(h)),
    getxattr: (h: bigint, name: Uint8Array) => wit(s().getxattr(h, name)),
    listxattr: (h: bigint) => wit(s().listxattr(h)),
    setxattr: (h: bigint, name: Uint8Array, value: Uint8Array, flags: number) => wit(s().setxattr(h, name, value, flags)),
    removexattr: (h: bigint, name: Uint8Array) => wit(s().removexattr(h, name)),
    getlk: (file: bigint, owner: bigint, lock: FileLock) => wit(s().getlk(file, owner, lock)),
    setlk: (file: bigint, owner: bigint, lock: FileLock, flock: boolean, wait: bigint) => wit(s().setlk(file, owner, lock, flock, wait)),
    lockCancel: (wait: bigint): void => s().locks.cancel(wait),
    copyFileRange: (src: bigint, so: bigint, dst: bigint, dof: bigint, len: bigint) => wit(s().copyFileRange(src, so, dst, dof, len)),
    syncfs: (h: bigint) => wit(s().syncfs(h)),
  };
}
