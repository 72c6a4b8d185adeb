export { FsShare, FsShareError, DEFAULT_TAG, MAX_FS_IO, MAX_TAG_BYTES, errnoName } from './share.ts';
export type { Attr, Entry, DirEntry, FsStats, FsResult, ShareOptions } from './share.ts';
export { filesystemImports } from './imports.ts';
