/*
 * The FUSE wire protocol (kernel ABI 7.x, little-endian), as much of it as this server
 * speaks. Written from the protocol's definition (include/uapi/linux/fuse.h semantics);
 * the structs are the wire layouts, so every size is asserted.
 */
#ifndef PLUGIN_FS_FUSE_H
#define PLUGIN_FS_FUSE_H

#include <stdint.h>

enum fuse_opcode {
  FUSE_LOOKUP = 1,
  FUSE_FORGET = 2,
  FUSE_GETATTR = 3,
  FUSE_SETATTR = 4,
  FUSE_READLINK = 5,
  FUSE_SYMLINK = 6,
  FUSE_MKNOD = 8,
  FUSE_MKDIR = 9,
  FUSE_UNLINK = 10,
  FUSE_RMDIR = 11,
  FUSE_RENAME = 12,
  FUSE_LINK = 13,
  FUSE_OPEN = 14,
  FUSE_READ = 15,
  FUSE_WRITE = 16,
  FUSE_STATFS = 17,
  FUSE_RELEASE = 18,
  FUSE_FSYNC = 20,
  FUSE_SETXATTR = 21,
  FUSE_GETXATTR = 22,
  FUSE_LISTXATTR = 23,
  FUSE_REMOVEXATTR = 24,
  FUSE_FLUSH = 25,
  FUSE_INIT = 26,
  FUSE_OPENDIR = 27,
  FUSE_READDIR = 28,
  FUSE_RELEASEDIR = 29,
  FUSE_FSYNCDIR = 30,
  FUSE_GETLK = 31,
  FUSE_SETLK = 32,
  FUSE_SETLKW = 33,
  FUSE_ACCESS = 34,
  FUSE_CREATE = 35,
  FUSE_INTERRUPT = 36,
  FUSE_DESTROY = 38,
  FUSE_BATCH_FORGET = 42,
  FUSE_FALLOCATE = 43,
  FUSE_READDIRPLUS = 44,
  FUSE_RENAME2 = 45,
  FUSE_LSEEK = 46,
  FUSE_COPY_FILE_RANGE = 47,
  FUSE_SYNCFS = 50,
  FUSE_TMPFILE = 51, /* fuse_create_in and a name ("/"), answered as CREATE */
};

/* INIT flags this server may accept. */
#define FUSE_ASYNC_READ (1u << 0)
#define FUSE_POSIX_LOCKS (1u << 1)
#define FUSE_FLOCK_LOCKS (1u << 10)
#define FUSE_LK_FLOCK 1u
#define FUSE_ATOMIC_O_TRUNC (1u << 3)
#define FUSE_BIG_WRITES (1u << 5)
#define FUSE_DO_READDIRPLUS (1u << 13)
#define FUSE_READDIRPLUS_AUTO (1u << 14)
#define FUSE_MAX_PAGES (1u << 22)
/* POSIX ACLs (--posix-acl): offered only together, as virtiofsd does. */
#define FUSE_DONT_MASK (1u << 6)
#define FUSE_POSIX_ACL (1u << 20)
#define FUSE_SETXATTR_EXT (1u << 29)
#define FUSE_SETXATTR_ACL_KILL_SGID 1u

#define FUSE_GETATTR_FH 1u
#define FUSE_FSYNC_FDATASYNC 1u
#define FUSE_ROOT_ID 1u

struct fuse_in_header {
  uint32_t len, opcode;
  uint64_t unique, nodeid;
  uint32_t uid, gid, pid;
  uint16_t total_extlen, padding;
};
struct fuse_out_header {
  uint32_t len;
  int32_t error;
  uint64_t unique;
};
struct fuse_attr {
  uint64_t ino, size, blocks, atime, mtime, ctime;
  uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct fuse_entry_out {
  uint64_t nodeid, generation, entry_valid, attr_valid;
  uint32_t entry_valid_nsec, attr_valid_nsec;
  struct fuse_attr attr;
};
struct fuse_attr_out {
  uint64_t attr_valid;
  uint32_t attr_valid_nsec, dummy;
  struct fuse_attr attr;
};
struct fuse_getattr_in {
  uint32_t getattr_flags, dummy;
  uint64_t fh;
};
struct fuse_setattr_in {
  uint32_t valid, padding;
  uint64_t fh, size, lock_owner, atime, mtime, ctime;
  uint32_t atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5;
};
struct fuse_forget_in {
  uint64_t nlookup;
};
struct fuse_forget_one {
  uint64_t nodeid, nlookup;
};
struct fuse_batch_forget_in {
  uint32_t count, dummy;
};
struct fuse_mknod_in {
  uint32_t mode, rdev, umask, padding;
};
struct fuse_mkdir_in {
  uint32_t mode, umask;
};
struct fuse_rename_in {
  uint64_t newdir;
};
struct fuse_rename2_in {
  uint64_t newdir;
  uint32_t flags, padding;
};
struct fuse_link_in {
  uint64_t oldnodeid;
};
struct fuse_open_in {
  uint32_t flags, open_flags;
};
struct fuse_create_in {
  uint32_t flags, mode, umask, open_flags;
};
struct fuse_open_out {
  uint64_t fh;
  uint32_t open_flags, padding;
};
struct fuse_file_lock {
  uint64_t start, end;
  uint32_t type, pid;
};
struct fuse_lk_in {
  uint64_t fh, owner;
  struct fuse_file_lock lk;
  uint32_t lk_flags, padding;
};
struct fuse_lk_out {
  struct fuse_file_lock lk;
};
struct fuse_copy_file_range_in {
  uint64_t fh_in, off_in, nodeid_out, fh_out, off_out, len, flags;
};
struct fuse_interrupt_in {
  uint64_t unique;
};
struct fuse_release_in {
  uint64_t fh;
  uint32_t flags, release_flags;
  uint64_t lock_owner;
};
struct fuse_read_in {
  uint64_t fh, offset;
  uint32_t size, read_flags;
  uint64_t lock_owner;
  uint32_t flags, padding;
};
struct fuse_write_in {
  uint64_t fh, offset;
  uint32_t size, write_flags;
  uint64_t lock_owner;
  uint32_t flags, padding;
};
struct fuse_write_out {
  uint32_t size, padding;
};
struct fuse_kstatfs {
  uint64_t blocks, bfree, bavail, files, ffree;
  uint32_t bsize, namelen, frsize, padding, spare[6];
};
struct fuse_fsync_in {
  uint64_t fh;
  uint32_t fsync_flags, padding;
};
struct fuse_init_in {
  uint32_t major, minor, max_readahead, flags;
};
struct fuse_init_out {
  uint32_t major, minor, max_readahead, flags;
  uint16_t max_background, congestion_threshold;
  uint32_t max_write, time_gran;
  uint16_t max_pages, map_alignment;
  uint32_t flags2, unused[7];
};
/* Without FUSE_SETXATTR_EXT setxattr_in is the 8-byte form; with it (POSIX ACLs) the 16-byte one. */
struct fuse_setxattr_in {
  uint32_t size, flags;
};
struct fuse_setxattr_ext_in {
  uint32_t size, flags, setxattr_flags, padding;
};
struct fuse_getxattr_in {
  uint32_t size, padding;
};
struct fuse_getxattr_out {
  uint32_t size, padding;
};
struct fuse_dirent {
  uint64_t ino, off;
  uint32_t namelen, type;
};
struct fuse_fallocate_in {
  uint64_t fh, offset, length;
  uint32_t mode, padding;
};
struct fuse_lseek_in {
  uint64_t fh, offset;
  uint32_t whence, padding;
};
struct fuse_lseek_out {
  uint64_t offset;
};

_Static_assert(sizeof(struct fuse_in_header) == 40, "in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "out_header");
_Static_assert(sizeof(struct fuse_attr) == 88, "attr");
_Static_assert(sizeof(struct fuse_entry_out) == 128, "entry_out");
_Static_assert(sizeof(struct fuse_attr_out) == 104, "attr_out");
_Static_assert(sizeof(struct fuse_setattr_in) == 88, "setattr_in");
_Static_assert(sizeof(struct fuse_release_in) == 24, "release_in");
_Static_assert(sizeof(struct fuse_copy_file_range_in) == 56, "copy_file_range_in");
_Static_assert(sizeof(struct fuse_lk_in) == 48 && sizeof(struct fuse_lk_out) == 24, "lk_in/lk_out");
_Static_assert(sizeof(struct fuse_read_in) == 40, "read_in");
_Static_assert(sizeof(struct fuse_write_in) == 40, "write_in");
_Static_assert(sizeof(struct fuse_kstatfs) == 80, "kstatfs");
_Static_assert(sizeof(struct fuse_init_out) == 64, "init_out");
_Static_assert(sizeof(struct fuse_dirent) == 24, "dirent");
_Static_assert(sizeof(struct fuse_setxattr_in) == 8 && sizeof(struct fuse_setxattr_ext_in) == 16 && sizeof(struct fuse_getxattr_in) == 8 &&
                   sizeof(struct fuse_getxattr_out) == 8,
               "xattr structs");
_Static_assert(sizeof(struct fuse_fallocate_in) == 32, "fallocate_in");
_Static_assert(sizeof(struct fuse_lseek_in) == 24, "lseek_in");

#endif
