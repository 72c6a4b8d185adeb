/*
 * Canonical ABI glue for the `filesystem` import of vhost:device@0.2.2 (wasm32).
 *
 * Results wider than one core value come back through a return area we pass (`ret_area`):
 * a result's tag u8 at 0, its payload (or the errno) where vhost_abi.h says. Lists the host
 * returns were allocated in our memory through cabi_realloc and are ours to free.
 */
#include "vhost_fs.h"
#include "vhost_abi.h"

#include <stdlib.h>
#include <string.h>

#ifndef VD_WIT_VERSION
#define VD_WIT_VERSION "0.2.2"
#endif
#define VFS_IMPORT(name) \
  __attribute__((import_module("vhost:device/filesystem@" VD_WIT_VERSION), import_name(name))) extern

/* The host's records are copied into these structs whole: their C layout is the WIT's. */
#define SAME_AT(type, field, abi) (offsetof(type, field) == (abi))
_Static_assert(sizeof(vfs_attr) == VD_ABI_SIZEOF_ATTR && SAME_AT(vfs_attr, dev, VD_ABI_ATTR_DEV) &&
                   SAME_AT(vfs_attr, ino, VD_ABI_ATTR_INO) && SAME_AT(vfs_attr, size, VD_ABI_ATTR_SIZE) &&
                   SAME_AT(vfs_attr, blocks, VD_ABI_ATTR_BLOCKS) && SAME_AT(vfs_attr, atime, VD_ABI_ATTR_ATIME) &&
                   SAME_AT(vfs_attr, mtime, VD_ABI_ATTR_MTIME) && SAME_AT(vfs_attr, ctime, VD_ABI_ATTR_CTIME) &&
                   SAME_AT(vfs_attr, atime_nsec, VD_ABI_ATTR_ATIME_NSEC) &&
                   SAME_AT(vfs_attr, mtime_nsec, VD_ABI_ATTR_MTIME_NSEC) &&
                   SAME_AT(vfs_attr, ctime_nsec, VD_ABI_ATTR_CTIME_NSEC) && SAME_AT(vfs_attr, mode, VD_ABI_ATTR_MODE) &&
                   SAME_AT(vfs_attr, nlink, VD_ABI_ATTR_NLINK) && SAME_AT(vfs_attr, uid, VD_ABI_ATTR_UID) &&
                   SAME_AT(vfs_attr, gid, VD_ABI_ATTR_GID) && SAME_AT(vfs_attr, rdev, VD_ABI_ATTR_RDEV) &&
                   SAME_AT(vfs_attr, blksize, VD_ABI_ATTR_BLKSIZE),
               "vfs_attr must match the WIT record attr");
_Static_assert(sizeof(vfs_entry) == VD_ABI_SIZEOF_ENTRY && SAME_AT(vfs_entry, node, VD_ABI_ENTRY_NODE) &&
                   SAME_AT(vfs_entry, attr, VD_ABI_ENTRY_ATTR),
               "vfs_entry must match the WIT record entry");
_Static_assert(sizeof(vfs_dirent) == VD_ABI_SIZEOF_DIR_ENTRY && SAME_AT(vfs_dirent, ino, VD_ABI_DIR_ENTRY_INO) &&
                   SAME_AT(vfs_dirent, next, VD_ABI_DIR_ENTRY_NEXT) && SAME_AT(vfs_dirent, kind, VD_ABI_DIR_ENTRY_KIND) &&
                   SAME_AT(vfs_dirent, name, VD_ABI_DIR_ENTRY_NAME) &&
                   SAME_AT(vfs_dirent, name_len, VD_ABI_DIR_ENTRY_NAME + VD_ABI_LIST_LEN),
               "vfs_dirent must match the WIT record dir-entry");
_Static_assert(sizeof(vfs_lock) == VD_ABI_SIZEOF_FILE_LOCK && SAME_AT(vfs_lock, start, VD_ABI_FILE_LOCK_START) &&
                   SAME_AT(vfs_lock, end, VD_ABI_FILE_LOCK_END) && SAME_AT(vfs_lock, kind, VD_ABI_FILE_LOCK_KIND) &&
                   SAME_AT(vfs_lock, pid, VD_ABI_FILE_LOCK_PID),
               "vfs_lock must match the WIT record file-lock");
_Static_assert(sizeof(vfs_fsstats) == VD_ABI_SIZEOF_FS_STATS && SAME_AT(vfs_fsstats, blocks, VD_ABI_FS_STATS_BLOCKS) &&
                   SAME_AT(vfs_fsstats, bfree, VD_ABI_FS_STATS_BFREE) &&
                   SAME_AT(vfs_fsstats, bavail, VD_ABI_FS_STATS_BAVAIL) &&
                   SAME_AT(vfs_fsstats, files, VD_ABI_FS_STATS_FILES) &&
                   SAME_AT(vfs_fsstats, ffree, VD_ABI_FS_STATS_FFREE) &&
                   SAME_AT(vfs_fsstats, bsize, VD_ABI_FS_STATS_BSIZE) &&
                   SAME_AT(vfs_fsstats, namelen, VD_ABI_FS_STATS_NAMELEN) &&
                   SAME_AT(vfs_fsstats, frsize, VD_ABI_FS_STATS_FRSIZE),
               "vfs_fsstats must match the WIT record fs-stats");

typedef uint8_t *R;
VFS_IMPORT("tag") void imp_tag(R ret);
VFS_IMPORT("read-only") int32_t imp_read_only(void);
VFS_IMPORT("migration-on-error") int32_t imp_migration_on_error(void);
VFS_IMPORT("cache") int32_t imp_cache(void);
VFS_IMPORT("root") void imp_root(R ret);
VFS_IMPORT("lookup") void imp_lookup(int64_t dir, const uint8_t *name, size_t len, R ret);
/* Added in 0.2.1. */
VFS_IMPORT("lookup-known") void imp_lookup_known(int64_t dir, const uint8_t *name, size_t len, int64_t known, int64_t dev,
                                                 int64_t ino, R ret);
VFS_IMPORT("same-node") int32_t imp_same_node(int64_t a, int64_t b);
VFS_IMPORT("close") void imp_close(int64_t h);
VFS_IMPORT("getattr") void imp_getattr(int64_t h, R ret);
VFS_IMPORT("setattr") void imp_setattr(int64_t h, int32_t valid, int32_t mode, int32_t uid, int32_t gid, int64_t size,
                                       int64_t atime, int32_t ansec, int64_t mtime, int32_t mnsec, R ret);
VFS_IMPORT("open") void imp_open(int64_t node, int32_t flags, R ret);
VFS_IMPORT("create") void imp_create(int64_t dir, const uint8_t *name, size_t len, int32_t flags, int32_t mode, R ret);
VFS_IMPORT("mknod") void imp_mknod(int64_t dir, const uint8_t *name, size_t len, int32_t mode, R ret);
VFS_IMPORT("mkdir") void imp_mkdir(int64_t dir, const uint8_t *name, size_t len, int32_t mode, R ret);
/* Added in 0.2.1 (POSIX ACLs). */
VFS_IMPORT("posix-acl") int32_t imp_posix_acl(void);
VFS_IMPORT("create-with-umask") void imp_create_with_umask(int64_t dir, const uint8_t *name, size_t len, int32_t flags,
                                                           int32_t mode, int32_t umask, R ret);
VFS_IMPORT("mknod-with-umask") void imp_mknod_with_umask(int64_t dir, const uint8_t *name, size_t len, int32_t mode,
                                                         int32_t umask, R ret);
VFS_IMPORT("mkdir-with-umask") void imp_mkdir_with_umask(int64_t dir, const uint8_t *name, size_t len, int32_t mode,
                                                         int32_t umask, R ret);
/* Added in 0.2.2. option<u32> umask: its case (0 none, 1 some) and value. */
VFS_IMPORT("tmpfile") void imp_tmpfile(int64_t dir, int32_t flags, int32_t mode, int32_t has_umask, int32_t umask, R ret);
VFS_IMPORT("symlink") void imp_symlink(int64_t dir, const uint8_t *name, size_t len, const uint8_t *t, size_t tl, R ret);
VFS_IMPORT("link") void imp_link(int64_t node, int64_t dir, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("unlink") void imp_unlink(int64_t dir, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("rmdir") void imp_rmdir(int64_t dir, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("rename") void imp_rename(int64_t od, const uint8_t *on, size_t ol, int64_t nd, const uint8_t *nn, size_t nl,
                                     int32_t flags, R ret);
VFS_IMPORT("readlink") void imp_readlink(int64_t node, R ret);
VFS_IMPORT("backing") void imp_backing(int64_t file, R ret);
VFS_IMPORT("readdir") void imp_readdir(int64_t dir, int64_t off, int32_t max, R ret);
/* Added in 0.2.1. */
VFS_IMPORT("readdir-records") void imp_readdir_records(int64_t dir, int64_t off, int32_t max_bytes, int32_t per_entry, R ret);
VFS_IMPORT("fsync") void imp_fsync(int64_t file, int32_t datasync, R ret);
VFS_IMPORT("fallocate") void imp_fallocate(int64_t file, int32_t mode, int64_t off, int64_t len, R ret);
VFS_IMPORT("lseek") void imp_lseek(int64_t file, int64_t off, int32_t whence, R ret);
VFS_IMPORT("statfs") void imp_statfs(int64_t h, R ret);
/* In 0.2.0 from the start. */
VFS_IMPORT("getxattr") void imp_getxattr(int64_t h, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("listxattr") void imp_listxattr(int64_t h, R ret);
VFS_IMPORT("setxattr") void imp_setxattr(int64_t h, const uint8_t *name, size_t len, const uint8_t *v, size_t vl,
                                         int32_t flags, R ret);
VFS_IMPORT("removexattr") void imp_removexattr(int64_t h, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("getlk") void imp_getlk(int64_t file, int64_t owner, int64_t start, int64_t end, int32_t kind, int32_t pid, R ret);
VFS_IMPORT("setlk") void imp_setlk(int64_t file, int64_t owner, int64_t start, int64_t end, int32_t kind, int32_t pid,
                                   int32_t flock, int64_t wait, R ret);
VFS_IMPORT("lock-cancel") void imp_lock_cancel(int64_t wait);
VFS_IMPORT("copy-file-range") void imp_copy_file_range(int64_t src, int64_t soff, int64_t dst, int64_t doff, int64_t len, R ret);
VFS_IMPORT("syncfs") void imp_syncfs(int64_t h, R ret);

/* One return area for every call: create's (result<tuple<entry, handle>, errno>) is the largest. */
static _Alignas(8) uint8_t ret_area[VD_ABI_SIZEOF_FILESYSTEM_CREATE_RET];
_Static_assert(VD_ABI_SIZEOF_FILESYSTEM_ROOT_RET <= sizeof ret_area && VD_ABI_SIZEOF_FILESYSTEM_STATFS_RET <= sizeof ret_area &&
                   VD_ABI_SIZEOF_FILESYSTEM_GETATTR_RET <= sizeof ret_area &&
                   VD_ABI_SIZEOF_FILESYSTEM_GETXATTR_RET <= sizeof ret_area &&
                   VD_ABI_SIZEOF_FILESYSTEM_LISTXATTR_RET <= sizeof ret_area &&
                   VD_ABI_SIZEOF_FILESYSTEM_GETLK_RET <= sizeof ret_area &&
                   VD_ABI_SIZEOF_FILESYSTEM_TMPFILE_RET <= sizeof ret_area,
               "ret_area holds every filesystem return area");

static uint32_t u32_at(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* The errno of a failed result, never 0 (a 0 would read as success). */
static uint32_t err_at(const uint8_t *p) {
  uint32_t e = u32_at(p);
  return e ? e : 5 /* EIO */;
}

size_t vfs_tag(char *buf, size_t cap) {
  imp_tag(ret_area);
  char *p = (char *)(uintptr_t)u32_at(ret_area);
  size_t n = u32_at(ret_area + VD_ABI_LIST_LEN);
  memcpy(buf, p, n < cap ? n : cap);
  free(p);
  return n;
}

int vfs_read_only(void) { return imp_read_only() != 0; }
int vfs_migration_guest_error(void) { return imp_migration_on_error() == VD_ABI_MIGRATION_ERROR_POLICY_GUEST_ERROR; }

int vfs_cache_policy(void) { return imp_cache(); }

int vfs_posix_acl(void) { return imp_posix_acl() != 0; }

/* result<entry, errno>, with the payload offsets of the call that filled ret_area. */
static uint32_t entry_result(vfs_entry *out, size_t ok, size_t err) {
  if (ret_area[0]) return err_at(ret_area + err);
  memcpy(out, ret_area + ok, sizeof *out);
  return 0;
}

/* result<_, errno>. */
static uint32_t unit_result(size_t err) { return ret_area[0] ? err_at(ret_area + err) : 0; }

uint32_t vfs_root(vfs_entry *out) {
  imp_root(ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_ROOT_RET_OK, VD_ABI_FILESYSTEM_ROOT_RET_ERR);
}

uint32_t vfs_lookup(vfs_handle dir, const uint8_t *name, size_t len, vfs_entry *out) {
  imp_lookup((int64_t)dir, name, len, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_LOOKUP_RET_OK, VD_ABI_FILESYSTEM_LOOKUP_RET_ERR);
}

uint32_t vfs_lookup_known(vfs_handle dir, const uint8_t *name, size_t len, vfs_handle known, uint64_t dev, uint64_t ino,
                          vfs_entry *out) {
  imp_lookup_known((int64_t)dir, name, len, (int64_t)known, (int64_t)dev, (int64_t)ino, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_LOOKUP_KNOWN_RET_OK, VD_ABI_FILESYSTEM_LOOKUP_KNOWN_RET_ERR);
}

int vfs_same_node(vfs_handle a, vfs_handle b) { return imp_same_node((int64_t)a, (int64_t)b) != 0; }

void vfs_close(vfs_handle h) { imp_close((int64_t)h); }

uint32_t vfs_getattr(vfs_handle h, vfs_attr *out) {
  imp_getattr((int64_t)h, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_GETATTR_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_GETATTR_RET_OK, sizeof *out);
  return 0;
}

uint32_t vfs_setattr(vfs_handle h, uint32_t valid, uint32_t mode, uint32_t uid, uint32_t gid, uint64_t size,
                     int64_t atime, uint32_t atime_nsec, int64_t mtime, uint32_t mtime_nsec, vfs_attr *out) {
  imp_setattr((int64_t)h, (int32_t)valid, (int32_t)mode, (int32_t)uid, (int32_t)gid, (int64_t)size, atime,
              (int32_t)atime_nsec, mtime, (int32_t)mtime_nsec, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_SETATTR_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_SETATTR_RET_OK, sizeof *out);
  return 0;
}

uint32_t vfs_open(vfs_handle node, uint32_t flags, vfs_handle *out) {
  imp_open((int64_t)node, (int32_t)flags, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_OPEN_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_OPEN_RET_OK, 8);
  return 0;
}

uint32_t vfs_create(vfs_handle dir, const uint8_t *name, size_t len, uint32_t flags, uint32_t mode, vfs_entry *out,
                    vfs_handle *file) {
  imp_create((int64_t)dir, name, len, (int32_t)flags, (int32_t)mode, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_CREATE_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_CREATE_RET_OK_0, sizeof *out);
  memcpy(file, ret_area + VD_ABI_FILESYSTEM_CREATE_RET_OK_1, 8);
  return 0;
}

uint32_t vfs_mknod(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, vfs_entry *out) {
  imp_mknod((int64_t)dir, name, len, (int32_t)mode, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_MKNOD_RET_OK, VD_ABI_FILESYSTEM_MKNOD_RET_ERR);
}

uint32_t vfs_mkdir(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, vfs_entry *out) {
  imp_mkdir((int64_t)dir, name, len, (int32_t)mode, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_MKDIR_RET_OK, VD_ABI_FILESYSTEM_MKDIR_RET_ERR);
}

uint32_t vfs_create_umask(vfs_handle dir, const uint8_t *name, size_t len, uint32_t flags, uint32_t mode, uint32_t umask,
                          vfs_entry *out, vfs_handle *file) {
  imp_create_with_umask((int64_t)dir, name, len, (int32_t)flags, (int32_t)mode, (int32_t)umask, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_CREATE_WITH_UMASK_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_CREATE_WITH_UMASK_RET_OK_0, sizeof *out);
  memcpy(file, ret_area + VD_ABI_FILESYSTEM_CREATE_WITH_UMASK_RET_OK_1, 8);
  return 0;
}

uint32_t vfs_mknod_umask(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, uint32_t umask, vfs_entry *out) {
  imp_mknod_with_umask((int64_t)dir, name, len, (int32_t)mode, (int32_t)umask, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_MKNOD_WITH_UMASK_RET_OK, VD_ABI_FILESYSTEM_MKNOD_WITH_UMASK_RET_ERR);
}

uint32_t vfs_mkdir_umask(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, uint32_t umask, vfs_entry *out) {
  imp_mkdir_with_umask((int64_t)dir, name, len, (int32_t)mode, (int32_t)umask, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_MKDIR_WITH_UMASK_RET_OK, VD_ABI_FILESYSTEM_MKDIR_WITH_UMASK_RET_ERR);
}

uint32_t vfs_tmpfile(vfs_handle dir, uint32_t flags, uint32_t mode, int has_umask, uint32_t umask, vfs_entry *out,
                     vfs_handle *file) {
  imp_tmpfile((int64_t)dir, (int32_t)flags, (int32_t)mode, has_umask ? 1 : 0, has_umask ? (int32_t)umask : 0, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_TMPFILE_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_TMPFILE_RET_OK_0, sizeof *out);
  memcpy(file, ret_area + VD_ABI_FILESYSTEM_TMPFILE_RET_OK_1, 8);
  return 0;
}

uint32_t vfs_symlink(vfs_handle dir, const uint8_t *name, size_t len, const uint8_t *target, size_t target_len,
                     vfs_entry *out) {
  imp_symlink((int64_t)dir, name, len, target, target_len, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_SYMLINK_RET_OK, VD_ABI_FILESYSTEM_SYMLINK_RET_ERR);
}

uint32_t vfs_link(vfs_handle node, vfs_handle dir, const uint8_t *name, size_t len, vfs_entry *out) {
  imp_link((int64_t)node, (int64_t)dir, name, len, ret_area);
  return entry_result(out, VD_ABI_FILESYSTEM_LINK_RET_OK, VD_ABI_FILESYSTEM_LINK_RET_ERR);
}

uint32_t vfs_unlink(vfs_handle dir, const uint8_t *name, size_t len) {
  imp_unlink((int64_t)dir, name, len, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_UNLINK_RET_ERR);
}

uint32_t vfs_rmdir(vfs_handle dir, const uint8_t *name, size_t len) {
  imp_rmdir((int64_t)dir, name, len, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_RMDIR_RET_ERR);
}

uint32_t vfs_rename(vfs_handle old_dir, const uint8_t *old_name, size_t old_len, vfs_handle new_dir,
                    const uint8_t *new_name, size_t new_len, uint32_t flags) {
  imp_rename((int64_t)old_dir, old_name, old_len, (int64_t)new_dir, new_name, new_len, (int32_t)flags, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_RENAME_RET_ERR);
}

uint32_t vfs_readlink(vfs_handle node, uint8_t *dst, size_t cap, size_t *len) {
  imp_readlink((int64_t)node, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_READLINK_RET_ERR);
  uint8_t *p = (uint8_t *)(uintptr_t)u32_at(ret_area + VD_ABI_FILESYSTEM_READLINK_RET_OK);
  size_t n = u32_at(ret_area + VD_ABI_FILESYSTEM_READLINK_RET_OK + VD_ABI_LIST_LEN);
  memcpy(dst, p, n < cap ? n : cap);
  free(p);
  *len = n;
  return 0;
}

uint32_t vfs_backing(vfs_handle file, uint32_t *out) {
  imp_backing((int64_t)file, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_BACKING_RET_ERR);
  *out = u32_at(ret_area + VD_ABI_FILESYSTEM_BACKING_RET_OK);
  return 0;
}

uint32_t vfs_readdir(vfs_handle dir, uint64_t offset, uint32_t max, vfs_dirent **entries, size_t *n) {
  imp_readdir((int64_t)dir, (int64_t)offset, (int32_t)max, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_READDIR_RET_ERR);
  *entries = (vfs_dirent *)(uintptr_t)u32_at(ret_area + VD_ABI_FILESYSTEM_READDIR_RET_OK);
  *n = u32_at(ret_area + VD_ABI_FILESYSTEM_READDIR_RET_OK + VD_ABI_LIST_LEN);
  return 0;
}

void vfs_dirents_free(vfs_dirent *entries, size_t n) {
  for (size_t i = 0; i < n; i++) free(entries[i].name);
  free(entries);
}

uint32_t vfs_readdir_records(vfs_handle dir, uint64_t offset, uint32_t max_bytes, uint32_t per_entry, uint8_t **records,
                             size_t *len) {
  imp_readdir_records((int64_t)dir, (int64_t)offset, (int32_t)max_bytes, (int32_t)per_entry, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_READDIR_RECORDS_RET_ERR);
  *records = (uint8_t *)(uintptr_t)u32_at(ret_area + VD_ABI_FILESYSTEM_READDIR_RECORDS_RET_OK);
  *len = u32_at(ret_area + VD_ABI_FILESYSTEM_READDIR_RECORDS_RET_OK + VD_ABI_LIST_LEN);
  return 0;
}

size_t vfs_record_next(const uint8_t *records, size_t len, size_t at, vfs_dirent *out) {
  if (at >= len || len - at < VFS_RECORD_HEAD) return 0;
  const uint8_t *p = records + at;
  uint32_t name_len = u32_at(p + 16);
  if (name_len == 0 || name_len > 255) return 0;
  size_t rec = (VFS_RECORD_HEAD + name_len + 7) & ~(size_t)7;
  if (rec > len - at) return 0;
  memcpy(&out->ino, p, 8);
  memcpy(&out->next, p + 8, 8);
  out->kind = (uint8_t)u32_at(p + 20);
  out->name = (uint8_t *)(uintptr_t)(p + VFS_RECORD_HEAD);
  out->name_len = name_len;
  return rec;
}

uint32_t vfs_fsync(vfs_handle file, int datasync) {
  imp_fsync((int64_t)file, datasync != 0, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_FSYNC_RET_ERR);
}

uint32_t vfs_fallocate(vfs_handle file, uint32_t mode, uint64_t offset, uint64_t len) {
  imp_fallocate((int64_t)file, (int32_t)mode, (int64_t)offset, (int64_t)len, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_FALLOCATE_RET_ERR);
}

uint32_t vfs_lseek(vfs_handle file, int64_t offset, uint32_t whence, uint64_t *out) {
  imp_lseek((int64_t)file, offset, (int32_t)whence, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_LSEEK_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_LSEEK_RET_OK, 8);
  return 0;
}

uint32_t vfs_statfs(vfs_handle h, vfs_fsstats *out) {
  imp_statfs((int64_t)h, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_STATFS_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_STATFS_RET_OK, sizeof *out);
  return 0;
}

/* A list<u8> result: at most `cap` bytes into dst (dst may be NULL when cap is 0), *len = its length. */
static uint32_t bytes_result(size_t ok, size_t err, uint8_t *dst, size_t cap, size_t *len) {
  if (ret_area[0]) return err_at(ret_area + err);
  uint8_t *p = (uint8_t *)(uintptr_t)u32_at(ret_area + ok);
  size_t n = u32_at(ret_area + ok + VD_ABI_LIST_LEN);
  if (cap) memcpy(dst, p, n < cap ? n : cap);
  free(p);
  *len = n;
  return 0;
}

uint32_t vfs_getxattr(vfs_handle h, const uint8_t *name, size_t name_len, uint8_t *dst, size_t cap, size_t *len) {
  imp_getxattr((int64_t)h, name, name_len, ret_area);
  return bytes_result(VD_ABI_FILESYSTEM_GETXATTR_RET_OK, VD_ABI_FILESYSTEM_GETXATTR_RET_ERR, dst, cap, len);
}

uint32_t vfs_listxattr(vfs_handle h, uint8_t *dst, size_t cap, size_t *len) {
  imp_listxattr((int64_t)h, ret_area);
  return bytes_result(VD_ABI_FILESYSTEM_LISTXATTR_RET_OK, VD_ABI_FILESYSTEM_LISTXATTR_RET_ERR, dst, cap, len);
}

uint32_t vfs_setxattr(vfs_handle h, const uint8_t *name, size_t name_len, const uint8_t *value, size_t value_len,
                      uint32_t flags) {
  imp_setxattr((int64_t)h, name, name_len, value, value_len, (int32_t)flags, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_SETXATTR_RET_ERR);
}

uint32_t vfs_removexattr(vfs_handle h, const uint8_t *name, size_t name_len) {
  imp_removexattr((int64_t)h, name, name_len, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_REMOVEXATTR_RET_ERR);
}

uint32_t vfs_getlk(vfs_handle file, uint64_t owner, const vfs_lock *lock, vfs_lock *out) {
  imp_getlk((int64_t)file, (int64_t)owner, (int64_t)lock->start, (int64_t)lock->end, (int32_t)lock->kind,
            (int32_t)lock->pid, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_GETLK_RET_ERR);
  memcpy(out, ret_area + VD_ABI_FILESYSTEM_GETLK_RET_OK, sizeof *out);
  return 0;
}

uint32_t vfs_setlk(vfs_handle file, uint64_t owner, const vfs_lock *lock, int flock, uint64_t wait) {
  imp_setlk((int64_t)file, (int64_t)owner, (int64_t)lock->start, (int64_t)lock->end, (int32_t)lock->kind,
            (int32_t)lock->pid, flock != 0, (int64_t)wait, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_SETLK_RET_ERR);
}

void vfs_lock_cancel(uint64_t wait) { imp_lock_cancel((int64_t)wait); }

uint32_t vfs_copy_file_range(vfs_handle src, uint64_t src_off, vfs_handle dst, uint64_t dst_off, uint64_t len,
                             uint64_t *copied) {
  imp_copy_file_range((int64_t)src, (int64_t)src_off, (int64_t)dst, (int64_t)dst_off, (int64_t)len, ret_area);
  if (ret_area[0]) return err_at(ret_area + VD_ABI_FILESYSTEM_COPY_FILE_RANGE_RET_ERR);
  memcpy(copied, ret_area + VD_ABI_FILESYSTEM_COPY_FILE_RANGE_RET_OK, 8);
  return 0;
}

uint32_t vfs_syncfs(vfs_handle h) {
  imp_syncfs((int64_t)h, ret_area);
  return unit_result(VD_ABI_FILESYSTEM_SYNCFS_RET_ERR);
}
