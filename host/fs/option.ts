// The filesystem grant as it travels from the CLI to the device worker (structured-clone
// friendly), and its opening inside the worker.
import { FsShare, INODE_FILE_HANDLES, MIGRATION_ON_ERROR, type InodeFileHandles, type MigrationOnError } from './share.ts';
import { CACHE_POLICIES, type CachePolicy } from './cache-policy.ts';
import type { IdMapRule } from './id-map.ts';
import type { XattrRule } from './xattr-map.ts';

export interface FilesystemSpec {
  /** The operator's --shared-dir. */
  dir: string;
  readOnly: boolean;
  /** virtio-fs mount tag (--tag). */
  tag?: string;
  /** --migration-on-error (default abort). */
  migrationOnError?: MigrationOnError;
  /** --xattr: extended attributes reach the share. */
  xattr?: boolean;
  /** --posix-acl (comes with xattr): the guest gets POSIX ACLs. */
  posixAcl?: boolean;
  /** The daemon's limits.openFiles: most host fds this device's share may hold (its own fd budget). */
  maxHandles?: number;
  /** --inode-file-handles (default prefer). */
  inodeFileHandles?: InodeFileHandles;
  /** --cache (default auto). */
  cache?: CachePolicy;
  /** --translate-uid / --translate-gid, parsed (host/fs/id-map.ts). */
  translateUid?: IdMapRule[];
  translateGid?: IdMapRule[];
  /** --xattrmap, parsed (host/fs/xattr-map.ts). */
  xattrmap?: XattrRule[];
}

export function isFilesystemSpec(v: unknown): v is FilesystemSpec {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return typeof o.dir === 'string' && typeof o.readOnly === 'boolean' && (o.tag === undefined || typeof o.tag === 'string') &&
    (o.migrationOnError === undefined || MIGRATION_ON_ERROR.includes(o.migrationOnError as MigrationOnError)) &&
    (o.xattr === undefined || typeof o.xattr === 'boolean') &&
    (o.posixAcl === undefined || typeof o.posixAcl === 'boolean') &&
    (o.maxHandles === undefined || (Number.isSafeInteger(o.maxHandles) && (o.maxHandles as number) > 0)) &&
    (o.inodeFileHandles === undefined || INODE_FILE_HANDLES.includes(o.inodeFileHandles as InodeFileHandles)) &&
    (o.cache === undefined || CACHE_POLICIES.includes(o.cache as CachePolicy)) &&
    (o.translateUid === undefined || Array.isArray(o.translateUid)) &&
    (o.translateGid === undefined || Array.isArray(o.translateGid)) &&
    (o.xattrmap === undefined || Array.isArray(o.xattrmap));
}

/** Open the share named by a worker option, or undefined when none was granted. */
export function openShareOption(v: unknown, label?: string): FsShare | undefined {
  if (v === undefined) return undefined;
  if (!isFilesystemSpec(v)) throw new TypeError(`filesystem must be {dir, readOnly, tag?, migrationOnError?, xattr?, posixAcl?, maxHandles?, inodeFileHandles?, ...}, not ${JSON.stringify(v)}`);
  return new FsShare(v.dir, {
    readOnly: v.readOnly,
    tag: v.tag,
    migrationOnError: v.migrationOnError,
    xattr: v.xattr,
    posixAcl: v.posixAcl,
    maxHandles: v.maxHandles,
    inodeFileHandles: v.inodeFileHandles,
    cache: v.cache,
    translateUid: v.translateUid,
    translateGid: v.translateGid,
    xattrmap: v.xattrmap,
    label,
  });
}
