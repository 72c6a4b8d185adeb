// --inode-file-handles (as virtiofsd's option of that name): how a share holds the inodes a
// guest has looked up. A module of its own so the CLI can check the value without loading
// the native addon.
/** never: an O_PATH fd each; prefer: a file handle where the filesystem allows, else an fd; mandatory: file handles or no start. */
export type InodeFileHandles = 'never' | 'prefer' | 'mandatory';
export const INODE_FILE_HANDLES: readonly InodeFileHandles[] = ['never', 'prefer', 'mandatory'];
