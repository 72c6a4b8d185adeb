// File handles for the `filesystem` capability's inodes (virtio-fs at scale): an inode the
// guest has looked up is remembered as the kernel's file handle for it (name_to_handle_at)
// instead of an O_PATH fd, and reopened by that handle (open_by_handle_at) only for the
// moment an operation needs it. A share of 100,000 looked-up files then holds a handful of
// fds, not 100,000 (the process's hard limit here is 20,000).
//
// Record (what fsNameToHandle writes and fsOpenByHandle reads), native byte order:
//    0  u32 mount id (the mount the handle was made on)
//    4  u32 handle_bytes
//    8  s32 handle_type
//   12  handle_bytes bytes of the filesystem's handle (at most MAX_HANDLE_SZ)
//
// Safety: open_by_handle_at opens an inode by identity, not by path, so a forged handle could
// reach any inode of the filesystem, outside the share. Handles therefore never leave the
// host process's share table (the plugin sees only handle numbers; migration state carries
// names, not handles), and every record is made here from an fd that a confined lookup
// returned. On top of that, fsOpenByHandle refuses a record whose mount is not the mount of
// the fd it decodes against, so a handle made on another filesystem is never decoded by this
// one's rules. It answers ESTALE, as the kernel does for a handle whose inode was deleted
// (and, on filesystems with generation numbers, whose inode number was reused): to this
// filesystem such a handle names no inode (issue 12: a foreign or stale handle is
// ESTALE/ENOENT, never another file). open_by_handle_at needs CAP_DAC_READ_SEARCH; without
// it, EPERM.
#include "common.h"
#include "fd_budget.h"
#include "fs_env.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RECORD_HEAD 12
#define RECORD_MAX (RECORD_HEAD + MAX_HANDLE_SZ)
_Static_assert(RECORD_MAX == FS_FH_RECORD_MAX, "fs_env.h's record size");

static bool arg_fd(napi_env env, napi_value v, const char *fn, int *fd) {
  return get_fd(env, v, fn, "fd", fd);
}

// The mount id of fd (the id name_to_handle_at reports), or -errno.
static int64_t mount_of(int fd) {
  struct statx sx;
  if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MNT_ID, &sx) < 0) return -errno;
  if (!(sx.stx_mask & STATX_MNT_ID)) return -EOPNOTSUPP;
  return (int64_t)sx.stx_mnt_id;
}

int fs_fh_record(int fd, const char *name, uint8_t *o) {
  union {
    struct file_handle fh;
    uint8_t bytes[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  } u;
  memset(&u, 0, sizeof u);
  u.fh.handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  // With a name: that entry itself (a symlink is not followed, nor an automount triggered).
  if (name_to_handle_at(fd, name, &u.fh, &mount_id, name[0] ? 0 : AT_EMPTY_PATH) < 0) return -errno;
  if (u.fh.handle_bytes > MAX_HANDLE_SZ) return -EOVERFLOW;
  uint32_t mid = (uint32_t)mount_id, hb = u.fh.handle_bytes;
  int32_t type = u.fh.handle_type;
  memcpy(o, &mid, 4);
  memcpy(o + 4, &hb, 4);
  memcpy(o + 8, &type, 4);
  memcpy(o + RECORD_HEAD, u.fh.f_handle, hb);
  return RECORD_HEAD + (int)hb;
}

// fsNameToHandle(fd, out: Uint8Array(>= 140)) -> record length | -errno. EOPNOTSUPP: the
// filesystem has no file handles; EOVERFLOW: its handles are larger than MAX_HANDLE_SZ.
static napi_value fs_name_to_handle(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  void *out;
  size_t cap;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsNameToHandle") || !arg_fd(env, argv[0], "fsNameToHandle", &fd) ||
      !get_bytes(env, argv[1], "fsNameToHandle", "out", &out, &cap))
    return NULL;
  if (cap < RECORD_MAX) {
    throw_range(env, "fsNameToHandle: out must hold %d bytes, not %zu", RECORD_MAX, cap);
    return NULL;
  }
  return make_number(env, fs_fh_record(fd, "", out));
}

static int open_by_record(fs_env *fe, int mount_fd, const uint8_t *rec, size_t len, int flags) {
  if (len < RECORD_HEAD) return -EINVAL;
  uint32_t mid, hb;
  int32_t type;
  memcpy(&mid, rec, 4);
  memcpy(&hb, rec + 4, 4);
  memcpy(&type, rec + 8, 4);
  if (hb == 0 || hb > MAX_HANDLE_SZ || len != RECORD_HEAD + (size_t)hb) return -EINVAL;
  int64_t m = fs_mount_id_of(fe, mount_fd, mount_of);
  if (m < 0) return (int)m;
  if ((uint64_t)m != mid) return -ESTALE; // another filesystem's handle: none of this one's inodes
  union {
    struct file_handle fh;
    uint8_t bytes[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  } u;
  u.fh.handle_bytes = hb;
  u.fh.handle_type = type;
  memcpy(u.fh.f_handle, rec + RECORD_HEAD, hb);
  int fd;
  do fd = open_by_handle_at(mount_fd, &u.fh, flags);
  while (fd < 0 && errno == EINTR);
  return fd < 0 ? -errno : fd;
}

// The (mountFd, record, ...) arguments of the calls below; argv gets all n. false: an exception is pending.
static bool handle_args(napi_env env, napi_callback_info info, const char *fn, size_t n, napi_value *argv, int *mount_fd, void **rec,
                        size_t *len) {
  return get_args(env, info, n, n, argv, NULL, fn) && arg_fd(env, argv[0], fn, mount_fd) && get_bytes(env, argv[1], fn, "record", rec, len);
}

// fsOpenByHandle(mountFd, record) -> O_PATH fd on the handle's inode (taken from the budget,
// owned by this thread until fsClose) | -errno: ESTALE (the inode is gone, or the record was
// made on another mount than mountFd's), EPERM (no CAP_DAC_READ_SEARCH), ENFILE (budget).
static napi_value fs_open_by_handle(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int mount_fd;
  void *rec;
  size_t len;
  if (!handle_args(env, info, "fsOpenByHandle", 2, argv, &mount_fd, &rec, &len)) return NULL;
  int fd;
  if (!fs_take_budget(env, info, &fd)) return NULL;
  fs_env *fe = fs_env_of(env, info);
  if (fd == 0) fd = fs_keep(fe, open_by_record(fe, mount_fd, rec, len, O_PATH | O_CLOEXEC));
  return make_number(env, fd);
}

// fsStatByHandle(mountFd, record, out: Float64Array(FS_STAT_N)) -> 0 | -errno: fsStat of the record's
// inode, which fsOpenByHandle + fsStat + fsClose did in three calls (a GETATTR of a node held by
// handle). The fd it opens for the stat is budgeted (ENFILE when spent) and closed before it
// returns; errors as fsOpenByHandle's.
static napi_value fs_stat_by_handle(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int mount_fd;
  void *rec;
  size_t len;
  double *o = NULL;
  if (!handle_args(env, info, "fsStatByHandle", 3, argv, &mount_fd, &rec, &len) || !fs_stat_out(env, argv[2], "fsStatByHandle", FS_STAT_N, &o))
    return NULL;
  int r;
  if (!fs_take_budget(env, info, &r)) return NULL;
  if (r < 0) return make_number(env, r);
  int fd = open_by_record(fs_env_of(env, info), mount_fd, rec, len, O_PATH | O_CLOEXEC);
  if (fd >= 0) {
    struct stat st;
    if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) r = -errno;
    else fs_fill_stat(&st, o);
    close(fd);
  } else {
    r = fd;
  }
  fs_give_budget(fs_env_of(env, info), 1);
  return make_number(env, r);
}

// fsOpenFileByHandle(mountFd, record, flags) -> an fd open for I/O on the record's inode, which
// the caller knows to be a regular file (its type at lookup: an inode's type never changes, and
// a record names one inode, generation included), budgeted and owned as fsReopen's | -errno as
// fsOpenByHandle's, ENXIO if it is no regular file after all (it is closed again). Where OPEN
// took fsOpenByHandle (O_PATH), fsReopen (fstat, open of /proc/self/fd/N) and fsClose. Opened
// O_NONBLOCK like every open for I/O here (a lease answers EWOULDBLOCK), then made blocking.
static napi_value fs_open_file_by_handle(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int mount_fd;
  void *rec;
  size_t len;
  double d;
  if (!handle_args(env, info, "fsOpenFileByHandle", 3, argv, &mount_fd, &rec, &len)) return NULL;
  if (napi_get_value_double(env, argv[2], &d) != napi_ok || d != d || d < 0 || d > 0xffffffff || d != (double)(int64_t)d) {
    throw_type(env, "fsOpenFileByHandle: flags must be an unsigned 32-bit integer");
    return NULL;
  }
  int fd;
  if (!fs_take_budget(env, info, &fd)) return NULL;
  fs_env *fe = fs_env_of(env, info);
  if (fd == 0) {
    fd = open_by_record(fe, mount_fd, rec, len, fs_io_open_flags((int)(uint32_t)d));
    if (fd >= 0) fd = fs_io_regular(fd);
    fd = fs_keep(fe, fd);
  }
  return make_number(env, fd);
}

// fsMountId(fd) -> the mount id of fd's mount (as in a record) | -errno.
static napi_value fs_mount_id(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "fsMountId", &fd)) return NULL;
  return make_number(env, (double)mount_of(fd));
}

bool init_fhandle(napi_env env, napi_value exports, fs_env *fe) {
  return fs_set_fn(env, exports, "fsNameToHandle", fs_name_to_handle, fe) &&
         fs_set_fn(env, exports, "fsOpenByHandle", fs_open_by_handle, fe) &&
         fs_set_fn(env, exports, "fsStatByHandle", fs_stat_by_handle, fe) &&
         fs_set_fn(env, exports, "fsOpenFileByHandle", fs_open_file_by_handle, fe) && set_fn(env, exports, "fsMountId", fs_mount_id);
}
