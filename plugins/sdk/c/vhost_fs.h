/*
 * vhost_fs.h: the `filesystem` capability (wit/device.wit, interface filesystem) for C
 * plugins. The plugin holds opaque handles into the host's fd table; names are single
 * directory entries (bytes, no '/', never "." or ".."). Every call returns 0 or a Linux
 * errno value (what FUSE sends to the guest). Every call traps if the operator granted no
 * shared directory (--shared-dir).
 *
 * plugins/build-plugins.mjs links vhost_fs.c (with every SDK .c) into each plugin.
 *
 * Calls marked (0.2.1) were added in vhost:device@0.2.1, (0.2.2) in 0.2.2 (`@since` in the WIT):
 * a plugin built with this SDK names 0.2.2 in its imports, so an older host refuses it with a
 * version error rather than a missing-function link error (docs/plugin-abi.md, "Versioning").
 */
#ifndef VHOST_FS_H
#define VHOST_FS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint64_t vfs_handle;

/* Same layout as the WIT record (canonical ABI, wasm32): copied as is. */
typedef struct vfs_attr {
  uint64_t dev, ino, size, blocks;
  int64_t atime, mtime, ctime;
  uint32_t atime_nsec, mtime_nsec, ctime_nsec;
  uint32_t mode, nlink, uid, gid, rdev, blksize;
} vfs_attr;

typedef struct vfs_entry {
  vfs_handle node;
  vfs_attr attr;
} vfs_entry;

typedef struct vfs_dirent {
  uint64_t ino;
  uint64_t next; /* position after this entry */
  uint8_t kind;  /* DT_* */
  uint8_t *name; /* not NUL-terminated */
  size_t name_len;
} vfs_dirent;

typedef struct vfs_statfs {
  uint64_t blocks, bfree, bavail, files, ffree;
  uint32_t bsize, namelen, frsize;
} vfs_fsstats;

/* setattr `valid` bits (FUSE's FATTR_*). */
enum {
  VFS_SET_MODE = 1,
  VFS_SET_UID = 2,
  VFS_SET_GID = 4,
  VFS_SET_SIZE = 8,
  VFS_SET_ATIME = 16,
  VFS_SET_MTIME = 32,
  VFS_SET_ATIME_NOW = 128,
  VFS_SET_MTIME_NOW = 256,
};

/* The mount tag: at most `cap` bytes copied, the tag's full length returned. */
size_t vfs_tag(char *buf, size_t cap);
int vfs_read_only(void);
/* --migration-on-error: 1 for guest-error (load what can be found, EIO for the rest), 0 for abort. */
int vfs_migration_guest_error(void);
/* --cache: VFS_CACHE_NEVER, _METADATA, _AUTO (the default) or _ALWAYS. */
enum { VFS_CACHE_NEVER = 0, VFS_CACHE_METADATA = 1, VFS_CACHE_AUTO = 2, VFS_CACHE_ALWAYS = 3 };
int vfs_cache_policy(void);
/* (0.2.1) --posix-acl: 1 when the guest may have POSIX ACLs (offer FUSE_POSIX_ACL); it comes with --xattr. */
int vfs_posix_acl(void);
uint32_t vfs_root(vfs_entry *out);
uint32_t vfs_lookup(vfs_handle dir, const uint8_t *name, size_t len, vfs_entry *out);
/*
 * (0.2.1) As vfs_lookup for a name believed to be the inode of node handle `known`, (dev, ino), which
 * the caller holds: out->node is 0 (no handle to close) when it is that very inode (a new
 * file that reuses the inode number is not), else a new handle as vfs_lookup's.
 */
uint32_t vfs_lookup_known(vfs_handle dir, const uint8_t *name, size_t len, vfs_handle known, uint64_t dev, uint64_t ino,
                          vfs_entry *out);
/*
 * (0.2.1) For node handles a and b whose entries had the same (dev, ino): 1 when they are the same
 * inode, 0 when one is a new file that reuses the other's inode number (or either handle is
 * no node). Costs no system call.
 */
int vfs_same_node(vfs_handle a, vfs_handle b);
void vfs_close(vfs_handle h);
uint32_t vfs_getattr(vfs_handle h, vfs_attr *out);
uint32_t vfs_setattr(vfs_handle h, uint32_t valid, uint32_t mode, uint32_t uid, uint32_t gid, uint64_t size,
                     int64_t atime, uint32_t atime_nsec, int64_t mtime, uint32_t mtime_nsec, vfs_attr *out);
uint32_t vfs_open(vfs_handle node, uint32_t flags, vfs_handle *out);
uint32_t vfs_create(vfs_handle dir, const uint8_t *name, size_t len, uint32_t flags, uint32_t mode, vfs_entry *out,
                    vfs_handle *file);
uint32_t vfs_mknod(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, vfs_entry *out);
uint32_t vfs_mkdir(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, vfs_entry *out);
/*
 * (0.2.1) As vfs_create, vfs_mknod and vfs_mkdir for a guest that leaves the umask to the file system
 * (FUSE_DONT_MASK): `mode` unmasked, the host creates under `umask`, which the kernel applies
 * only where `dir` has no default ACL (the default ACL decides where it has one).
 */
uint32_t vfs_create_umask(vfs_handle dir, const uint8_t *name, size_t len, uint32_t flags, uint32_t mode, uint32_t umask,
                          vfs_entry *out, vfs_handle *file);
uint32_t vfs_mknod_umask(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, uint32_t umask, vfs_entry *out);
uint32_t vfs_mkdir_umask(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, uint32_t umask, vfs_entry *out);
/*
 * (0.2.2) An unnamed regular file in `dir` (O_TMPFILE): its entry (nlink 0) and an open-file
 * handle. flags: the access mode, O_APPEND/O_SYNC/O_DSYNC, and O_EXCL (never linkable).
 * has_umask: create under `umask` as vfs_create_umask; 0: `mode` is already masked. A later
 * vfs_link of the node names it. EOPNOTSUPP where the share's filesystem has no O_TMPFILE.
 */
uint32_t vfs_tmpfile(vfs_handle dir, uint32_t flags, uint32_t mode, int has_umask, uint32_t umask, vfs_entry *out,
                     vfs_handle *file);
uint32_t vfs_symlink(vfs_handle dir, const uint8_t *name, size_t len, const uint8_t *target, size_t target_len,
                     vfs_entry *out);
uint32_t vfs_link(vfs_handle node, vfs_handle dir, const uint8_t *name, size_t len, vfs_entry *out);
uint32_t vfs_unlink(vfs_handle dir, const uint8_t *name, size_t len);
uint32_t vfs_rmdir(vfs_handle dir, const uint8_t *name, size_t len);
uint32_t vfs_rename(vfs_handle old_dir, const uint8_t *old_name, size_t old_len, vfs_handle new_dir,
                    const uint8_t *new_name, size_t new_len, uint32_t flags);
/* At most `cap` bytes of the target into dst; *len = the target's length. */
uint32_t vfs_readlink(vfs_handle node, uint8_t *dst, size_t cap, size_t *len);
/* The backing index of open file `file`, for answers (vd_answer_backing_read, vd_answer_transfer):
 * the host reads and writes the file straight from and into the guest's buffers. The same
 * handle gives the same index until it is closed (vfs_close releases the index too). A file
 * opened O_RDONLY is a read-only backing: a transfer to it fails the device. */
uint32_t vfs_backing(vfs_handle file, uint32_t *out);
/* *entries is malloc'd (names too): release with vfs_dirents_free. */
uint32_t vfs_readdir(vfs_handle dir, uint64_t offset, uint32_t max, vfs_dirent **entries, size_t *n);
void vfs_dirents_free(vfs_dirent *entries, size_t n);
/*
 * (0.2.1) The same entries packed as FUSE's fuse_dirent records (ino u64, next u64, name length u32,
 * d_type u32, name, zeros to a multiple of 8): as many whole records as fit in max_bytes when
 * each counts per_entry bytes more (a READDIRPLUS entry's fuse_entry_out). *records is
 * malloc'd (free it; NULL when *len is 0). A host's bytes are still checked before use:
 * vfs_record_next walks them.
 */
#define VFS_RECORD_HEAD 24
#define VFS_RECORD_MAX 280 /* a 255-byte name's record */
uint32_t vfs_readdir_records(vfs_handle dir, uint64_t offset, uint32_t max_bytes, uint32_t per_entry, uint8_t **records,
                             size_t *len);
/*
 * The record at `at` of `records` (len bytes) into *out (its name points into records) and
 * its length; 0 at the end or for a record that is malformed (a name of 0 or more than 255
 * bytes, or running past len).
 */
size_t vfs_record_next(const uint8_t *records, size_t len, size_t at, vfs_dirent *out);
uint32_t vfs_fsync(vfs_handle file, int datasync);
uint32_t vfs_fallocate(vfs_handle file, uint32_t mode, uint64_t offset, uint64_t len);
uint32_t vfs_lseek(vfs_handle file, int64_t offset, uint32_t whence, uint64_t *out);
uint32_t vfs_statfs(vfs_handle h, vfs_fsstats *out);

/* Extended attributes (of a symlink: the link's own). ENOSYS unless the operator gave --xattr;
 * `trusted.` and `security.` names EPERM (and absent from lists). In 0.2.0 from the start.
 * getxattr/listxattr copy at most `cap` bytes into dst (NULL with cap 0 asks only the size)
 * and set *len to the full length; a list is names each followed by a NUL byte.
 * setxattr flags: 1 XATTR_CREATE, 2 XATTR_REPLACE. */
#define VFS_XATTR_MAX 65536u
uint32_t vfs_getxattr(vfs_handle h, const uint8_t *name, size_t name_len, uint8_t *dst, size_t cap, size_t *len);
uint32_t vfs_listxattr(vfs_handle h, uint8_t *dst, size_t cap, size_t *len);
uint32_t vfs_setxattr(vfs_handle h, const uint8_t *name, size_t name_len, const uint8_t *value, size_t value_len,
                      uint32_t flags);
uint32_t vfs_removexattr(vfs_handle h, const uint8_t *name, size_t name_len);

/* Record locks and flock (FUSE_GETLK/SETLK/SETLKW): [start, end] with end included
 * (VFS_LOCK_END_MAX: to the end of any file); kind 0 F_RDLCK, 1 F_WRLCK, 2 F_UNLCK.
 * vfs_setlk with wait 0 answers EAGAIN on a conflict; with a token it answers EINPROGRESS
 * and the host delivers VD_EVENT_TIMER with that token once the wait resolved: ask again with
 * wait 0 for the verdict. vfs_lock_cancel ends a wait without an event. */
typedef struct vfs_lock {
  uint64_t start, end;
  uint32_t kind, pid;
} vfs_lock;
#define VFS_LOCK_END_MAX 0x7fffffffffffffffull
uint32_t vfs_getlk(vfs_handle file, uint64_t owner, const vfs_lock *lock, vfs_lock *out);
uint32_t vfs_setlk(vfs_handle file, uint64_t owner, const vfs_lock *lock, int flock, uint64_t wait);
void vfs_lock_cancel(uint64_t wait);

/* copy_file_range(2) between two open files, inside the host; *copied gets the count. */
uint32_t vfs_copy_file_range(vfs_handle src, uint64_t src_off, vfs_handle dst, uint64_t dst_off, uint64_t len,
                             uint64_t *copied);
/* syncfs(2) of the share's filesystem. */
uint32_t vfs_syncfs(vfs_handle h);

#ifdef __cplusplus
}
#endif

#endif
