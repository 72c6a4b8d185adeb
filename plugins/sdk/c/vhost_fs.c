/*
 * Canonical ABI glue for the `filesystem` import of vhost:device@0.1.0 (wasm32).
 *
 * Results wider than one core value come back through a return area we pass (`ret`).
 * Layouts (bytes): result<entry|attr|u64|fs-stats|tuple<entry,handle>, errno> = tag u8 at 0,
 * payload (or the errno) at 8; result<_|u32|list<u8>|list<dir-entry>, errno> = tag at 0,
 * payload (or the errno) at 4. entry = node u64 at 0, attr at 8 (96 bytes); the tuple's
 * handle follows the entry at 104. Lists the host returns were allocated in our memory
 * through cabi_realloc and are ours to free.
 */
#include "vhost_fs.h"

#include <stdlib.h>
#include <string.h>

#ifndef VD_WIT_VERSION
#define VD_WIT_VERSION "0.1.0"
#endif
#define VFS_IMPORT(name) \
  __attribute__((import_module("vhost:device/filesystem@" VD_WIT_VERSION), import_name(name))) extern

_Static_assert(sizeof(vfs_attr) == 96, "vfs_attr must match the WIT record layout");
_Static_assert(sizeof(vfs_entry) == 104, "vfs_entry must match the WIT record layout");
_Static_assert(sizeof(vfs_dirent) == 32 && offsetof(vfs_dirent, name) == 20, "vfs_dirent layout");
_Static_assert(sizeof(vfs_fsstats) == 56, "vfs_fsstats layout");

typedef uint8_t *R;
VFS_IMPORT("tag") void imp_tag(R ret);
VFS_IMPORT("read-only") int32_t imp_read_only(void);
VFS_IMPORT("migration-on-error") int32_t imp_migration_on_error(void);
VFS_IMPORT("root") void imp_root(R ret);
VFS_IMPORT("lookup") void imp_lookup(int64_t dir, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("close") void imp_close(int64_t h);
VFS_IMPORT("getattr") void imp_getattr(int64_t h, R ret);
VFS_IMPORT("setattr") void imp_setattr(int64_t h, int32_t valid, int32_t mode, int32_t uid, int32_t gid, int64_t size,
                                       int64_t atime, int32_t ansec, int64_t mtime, int32_t mnsec, R ret);
VFS_IMPORT("open") void imp_open(int64_t node, int32_t flags, R ret);
VFS_IMPORT("create") void imp_create(int64_t dir, const uint8_t *name, size_t len, int32_t flags, int32_t mode, R ret);
VFS_IMPORT("mknod") void imp_mknod(int64_t dir, const uint8_t *name, size_t len, int32_t mode, R ret);
VFS_IMPORT("mkdir") void imp_mkdir(int64_t dir, const uint8_t *name, size_t len, int32_t mode, R ret);
VFS_IMPORT("symlink") void imp_symlink(int64_t dir, const uint8_t *name, size_t len, const uint8_t *t, size_t tl, R ret);
VFS_IMPORT("link") void imp_link(int64_t node, int64_t dir, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("unlink") void imp_unlink(int64_t dir, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("rmdir") void imp_rmdir(int64_t dir, const uint8_t *name, size_t len, R ret);
VFS_IMPORT("rename") void imp_rename(int64_t od, const uint8_t *on, size_t ol, int64_t nd, const uint8_t *nn, size_t nl,
                                     int32_t flags, R ret);
VFS_IMPORT("readlink") void imp_readlink(int64_t node, R ret);
VFS_IMPORT("read") void imp_read(int64_t file, int64_t off, int32_t len, R ret);
VFS_IMPORT("write") void imp_write(int64_t file, int64_t off, const uint8_t *data, size_t len, R ret);
VFS_IMPORT("readdir") void imp_readdir(int64_t dir, int64_t off, int32_t max, R ret);
VFS_IMPORT("fsync") void imp_fsync(int64_t file, int32_t datasync, R ret);
VFS_IMPORT("fallocate") void imp_fallocate(int64_t file, int32_t mode, int64_t off, int64_t len, R ret);
VFS_IMPORT("lseek") void imp_lseek(int64_t file, int64_t off, int32_t whence, R ret);
VFS_IMPORT("statfs") void imp_statfs(int64_t h, R ret);

static _Alignas(8) uint8_t ret_area[128];

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
  size_t n = u32_at(ret_area + 4);
  memcpy(buf, p, n < cap ? n : cap);
  free(p);
  return n;
}

int vfs_read_only(void) { return imp_read_only() != 0; }
int vfs_migration_guest_error(void) { return imp_migration_on_error() == 1; }

static uint32_t entry_result(vfs_entry *out) {
  if (ret_area[0]) return err_at(ret_area + 8);
  memcpy(out, ret_area + 8, sizeof *out);
  return 0;
}

static uint32_t unit_result(void) { return ret_area[0] ? err_at(ret_area + 4) : 0; }

uint32_t vfs_root(vfs_entry *out) {
  imp_root(ret_area);
  return entry_result(out);
}

uint32_t vfs_lookup(vfs_handle dir, const uint8_t *name, size_t len, vfs_entry *out) {
  imp_lookup((int64_t)dir, name, len, ret_area);
  return entry_result(out);
}

void vfs_close(vfs_handle h) { imp_close((int64_t)h); }

uint32_t vfs_getattr(vfs_handle h, vfs_attr *out) {
  imp_getattr((int64_t)h, ret_area);
  if (ret_area[0]) return err_at(ret_area + 8);
  memcpy(out, ret_area + 8, sizeof *out);
  return 0;
}

uint32_t vfs_setattr(vfs_handle h, uint32_t valid, uint32_t mode, uint32_t uid, uint32_t gid, uint64_t size,
                     int64_t atime, uint32_t atime_nsec, int64_t mtime, uint32_t mtime_nsec, vfs_attr *out) {
  imp_setattr((int64_t)h, (int32_t)valid, (int32_t)mode, (int32_t)uid, (int32_t)gid, (int64_t)size, atime,
              (int32_t)atime_nsec, mtime, (int32_t)mtime_nsec, ret_area);
  if (ret_area[0]) return err_at(ret_area + 8);
  memcpy(out, ret_area + 8, sizeof *out);
  return 0;
}

uint32_t vfs_open(vfs_handle node, uint32_t flags, vfs_handle *out) {
  imp_open((int64_t)node, (int32_t)flags, ret_area);
  if (ret_area[0]) return err_at(ret_area + 8);
  memcpy(out, ret_area + 8, 8);
  return 0;
}

uint32_t vfs_create(vfs_handle dir, const uint8_t *name, size_t len, uint32_t flags, uint32_t mode, vfs_entry *out,
                    vfs_handle *file) {
  imp_create((int64_t)dir, name, len, (int32_t)flags, (int32_t)mode, ret_area);
  if (ret_area[0]) return err_at(ret_area + 8);
  memcpy(out, ret_area + 8, sizeof *out);
  memcpy(file, ret_area + 8 + sizeof *out, 8);
  return 0;
}

uint32_t vfs_mknod(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, vfs_entry *out) {
  imp_mknod((int64_t)dir, name, len, (int32_t)mode, ret_area);
  return entry_result(out);
}

uint32_t vfs_mkdir(vfs_handle dir, const uint8_t *name, size_t len, uint32_t mode, vfs_entry *out) {
  imp_mkdir((int64_t)dir, name, len, (int32_t)mode, ret_area);
  return entry_result(out);
}

uint32_t vfs_symlink(vfs_handle dir, const uint8_t *name, size_t len, const uint8_t *target, size_t target_len,
                     vfs_entry *out) {
  imp_symlink((int64_t)dir, name, len, target, target_len, ret_area);
  return entry_result(out);
}

uint32_t vfs_link(vfs_handle node, vfs_handle dir, const uint8_t *name, size_t len, vfs_entry *out) {
  imp_link((int64_t)node, (int64_t)dir, name, len, ret_area);
  return entry_result(out);
}

uint32_t vfs_unlink(vfs_handle dir, const uint8_t *name, size_t len) {
  imp_unlink((int64_t)dir, name, len, ret_area);
  return unit_result();
}

uint32_t vfs_rmdir(vfs_handle dir, const uint8_t *name, size_t len) {
  imp_rmdir((int64_t)dir, name, len, ret_area);
  return unit_result();
}

uint32_t vfs_rename(vfs_handle old_dir, const uint8_t *old_name, size_t old_len, vfs_handle new_dir,
                    const uint8_t *new_name, size_t new_len, uint32_t flags) {
  imp_rename((int64_t)old_dir, old_name, old_len, (int64_t)new_dir, new_name, new_len, (int32_t)flags, ret_area);
  return unit_result();
}

uint32_t vfs_readlink(vfs_handle node, uint8_t *dst, size_t cap, size_t *len) {
  imp_readlink((int64_t)node, ret_area);
  if (ret_area[0]) return err_at(ret_area + 4);
  uint8_t *p = (uint8_t *)(uintptr_t)u32_at(ret_area + 4);
  size_t n = u32_at(ret_area + 8);
  memcpy(dst, p, n < cap ? n : cap);
  free(p);
  *len = n;
  return 0;
}

uint32_t vfs_read(vfs_handle file, uint64_t offset, uint32_t len, uint8_t *dst, uint32_t *got) {
  imp_read((int64_t)file, (int64_t)offset, (int32_t)len, ret_area);
  if (ret_area[0]) return err_at(ret_area + 4);
  uint8_t *p = (uint8_t *)(uintptr_t)u32_at(ret_area + 4);
  uint32_t n = u32_at(ret_area + 8);
  /* The host never answers with more than asked; if it did, the guest gets no heap bytes. */
  if (n > len) n = len;
  memcpy(dst, p, n);
  free(p);
  *got = n;
  return 0;
}

uint32_t vfs_write(vfs_handle file, uint64_t offset, const uint8_t *data, uint32_t len, uint32_t *written) {
  imp_write((int64_t)file, (int64_t)offset, data, len, ret_area);
  if (ret_area[0]) return err_at(ret_area + 4);
  *written = u32_at(ret_area + 4);
  return 0;
}

uint32_t vfs_readdir(vfs_handle dir, uint64_t offset, uint32_t max, vfs_dirent **entries, size_t *n) {
  imp_readdir((int64_t)dir, (int64_t)offset, (int32_t)max, ret_area);
  if (ret_area[0]) return err_at(ret_area + 4);
  *entries = (vfs_dirent *)(uintptr_t)u32_at(ret_area + 4);
  *n = u32_at(ret_area + 8);
  return 0;
}

void vfs_dirents_free(vfs_dirent *entries, size_t n) {
  for (size_t i = 0; i < n; i++) free(entries[i].name);
  free(entries);
}

uint32_t vfs_fsync(vfs_handle file, int datasync) {
  imp_fsync((int64_t)file, datasync != 0, ret_area);
  return unit_result();
}

uint32_t vfs_fallocate(vfs_handle file, uint32_t mode, uint64_t offset, uint64_t len) {
  imp_fallocate((int64_t)file, (int32_t)mode, (int64_t)offset, (int64_t)len, ret_area);
  return unit_result();
}

uint32_t vfs_lseek(vfs_handle file, int64_t offset, uint32_t whence, uint64_t *out) {
  imp_lseek((int64_t)file, offset, (int32_t)whence, ret_area);
  if (ret_area[0]) return err_at(ret_area + 8);
  memcpy(out, ret_area + 8, 8);
  return 0;
}

uint32_t vfs_statfs(vfs_handle h, vfs_fsstats *out) {
  imp_statfs((int64_t)h, ret_area);
  if (ret_area[0]) return err_at(ret_area + 8);
  memcpy(out, ret_area + 8, sizeof *out);
  return 0;
}
