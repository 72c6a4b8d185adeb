// fd-relative file-system syscalls for the `filesystem` capability (virtio-fs). Every call
// here works on fds the host already holds beneath the share root and on single path
// components: no call ever resolves a multi-component path given by the guest.
//
// Confinement (the guest is hostile):
//  - Names are validated here: non-empty, at most NAME_MAX bytes, no '/', no NUL, never
//    "." or "..". A name is therefore one directory entry of the directory the fd holds.
//  - Lookups and creates go through openat2(2) with
//      RESOLVE_BENEATH       the result must stay beneath the dirfd, even if the name was
//                            swapped for ".." or an absolute path by a bug above us;
//      RESOLVE_NO_SYMLINKS   never follow a symlink, not even as the last component (a
//                            symlink the guest or anyone else swapped in mid-operation is
//                            returned as itself, O_PATH|O_NOFOLLOW, or refused with ELOOP
//                            for O_CREAT), so relative and absolute symlinks can never
//                            take us out of the share;
//      RESOLVE_NO_MAGICLINKS /proc-style links are refused during any guest-driven lookup;
//      RESOLVE_NO_XDEV       a mount point inside the share is not crossed: submounts are
//                            not part of the grant (EXDEV).
//  - Operations on an existing node (reopen for I/O, chmod, utimens, truncate, link, xattrs) go
//    through /proc/self/fd/N of the O_PATH fd we hold. That magic link names exactly the
//    inode the fd pins, so no name is looked up and nothing can be swapped in between:
//    renames and symlink swaps racing it are harmless. This is the only place magic links
//    are followed, and the path is built here from our own fd number, never from the guest.
//  - Only regular files and directories are ever opened for I/O (no FIFOs or devices that
//    could block the device worker or reach host hardware); MKNOD creates regular files.
//    No open here can block: lookups are O_PATH (which never opens the file itself), the type
//    of an existing inode is checked on its O_PATH fd before it is reopened, a create opens
//    only what it made itself (O_EXCL; an existing entry goes through the O_PATH check), and
//    every open for I/O carries O_NONBLOCK (a lease held by another process answers
//    EWOULDBLOCK instead of stalling the worker until the lease breaks), cleared afterwards.
//
// File descriptors: every fd these calls hand out (the share's handles) is taken from the
// process-wide fd budget (fd_budget.c) before it is opened, answering ENFILE when it is
// spent, and is recorded as owned by this thread's environment. fsClose gives it back. When
// the environment ends (a device worker exits or is terminated mid-call) a cleanup hook
// closes whatever it still owns, so a killed worker cannot leak share fds or budget.
//
// Calls return a result >= 0 or -errno: failures are the normal case for a file server
// (ENOENT on every negative lookup), so they are values, not exceptions. Only argument
// errors (a bug in the TypeScript caller) throw.
#include "common.h"
#include "fd_budget.h"
#include "fs_env.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/file.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#define RESOLVE_FLAGS (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)

// This environment's (thread's) share fds: owned[fd] != 0. A byte per fd number: fds are
// dense small numbers below RLIMIT_NOFILE.
struct fs_env {
  uint8_t *owned;
  size_t cap;
  // fsStatByHandle's last mount fd and its mount id (fs_mount_id_of): the id of an open fd's
  // mount never changes, and fsClose of that fd forgets it (the number may be reused).
  int mount_fd;
  int64_t mount_id;
  // This thread's share of the fd budget (fd_budget.h): what it holds, its reserve.
  fd_account acct;
};

static bool own(fs_env *fe, int fd) {
  if ((size_t)fd >= fe->cap) {
    size_t cap = fe->cap ? fe->cap : 1024;
    while (cap <= (size_t)fd) cap *= 2;
    uint8_t *p = realloc(fe->owned, cap);
    if (!p) return false;
    memset(p + fe->cap, 0, cap - fe->cap);
    fe->owned = p;
    fe->cap = cap;
  }
  fe->owned[fd] = 1;
  return true;
}

static bool owns(fs_env *fe, int fd) { return fd >= 0 && (size_t)fd < fe->cap && fe->owned[fd]; }

static void disown(fs_env *fe, int fd) {
  fe->owned[fd] = 0;
  if (fe->mount_fd == fd) fe->mount_fd = -1;
}

int64_t fs_mount_id_of(fs_env *fe, int fd, int64_t (*mount_of)(int)) {
  // Only an fd this environment owns is remembered: it cannot be closed behind our back
  // (fsClose forgets it), so its number cannot come to mean another mount.
  if (fe->mount_fd == fd && fd >= 0) return fe->mount_id;
  int64_t m = mount_of(fd);
  if (m >= 0 && owns(fe, fd)) {
    fe->mount_fd = fd;
    fe->mount_id = m;
  }
  return m;
}

static void fs_env_teardown(void *arg) {
  fs_env *fe = arg;
  long n = 0;
  for (size_t fd = 0; fd < fe->cap; fd++) {
    if (!fe->owned[fd]) continue;
    close((int)fd);
    n++;
  }
  fd_budget_drop(&fe->acct, n);
  free(fe->owned);
  free(fe);
}

fs_env *fs_env_of(napi_env env, napi_callback_info info) {
  void *data = NULL;
  napi_get_cb_info(env, info, NULL, NULL, NULL, &data);
  return data;
}

// Before a call that hands out a share fd: one fd from the budget. false (exception pending)
// if the budget was never set up, a bug; otherwise *r is 0, or -ENFILE when it is spent.
bool fs_take_budget(napi_env env, napi_callback_info info, int *r) {
  *r = 0;
  switch (fd_budget_take(&fs_env_of(env, info)->acct)) {
    case FD_BUDGET_OK: return true;
    case FD_BUDGET_SPENT: *r = -ENFILE; return true;
    default: return throw_plain(env, "ERR_FD_BUDGET_UNSET", "the fd budget was never set up (fdBudgetInit)");
  }
}

void fs_give_budget(fs_env *fe, long n) { fd_budget_give(&fe->acct, n); }

// After it: the fd it opened is owned by fe; on failure the budget taken is given back.
int fs_keep(fs_env *fe, int r) {
  if (r >= 0 && !own(fe, r)) {
    close(r);
    r = -ENOMEM;
  }
  if (r < 0) fd_budget_give(&fe->acct, 1);
  return r;
}

static napi_value num(napi_env env, double d) { return make_number(env, d); }

void fs_fill_bits(double *o, uint64_t ino, uint64_t size, uint64_t blocks, int64_t atime, int64_t mtime, int64_t ctime) {
  // memcpy: the bits as they are into a double's slot (a store through a uint64_t * would alias).
  uint64_t bits[FS_STAT_N - FS_STAT_BITS] = {ino, size, blocks, (uint64_t)atime, (uint64_t)mtime, (uint64_t)ctime};
  memcpy(o + FS_STAT_BITS, bits, sizeof bits);
}

void fs_fill_stat(const struct stat *st, double *o) {
  o[0] = (double)st->st_dev, o[1] = (double)st->st_ino, o[2] = st->st_mode, o[3] = (double)st->st_nlink;
  o[4] = st->st_uid, o[5] = st->st_gid, o[6] = (double)st->st_rdev, o[7] = (double)st->st_size;
  o[8] = (double)st->st_blksize, o[9] = (double)st->st_blocks;
  o[10] = (double)st->st_atim.tv_sec, o[11] = (double)st->st_atim.tv_nsec;
  o[12] = (double)st->st_mtim.tv_sec, o[13] = (double)st->st_mtim.tv_nsec;
  o[14] = (double)st->st_ctim.tv_sec, o[15] = (double)st->st_ctim.tv_nsec;
  fs_fill_bits(o, st->st_ino, (uint64_t)st->st_size, (uint64_t)st->st_blocks, st->st_atim.tv_sec, st->st_mtim.tv_sec, st->st_ctim.tv_sec);
}
static napi_value neg(napi_env env, int err) { return make_number(env, -(double)err); }

static bool arg_int(napi_env env, napi_value v, const char *fn, const char *name, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d != d || d < -SAFE_INT_MAX || d > SAFE_INT_MAX ||
      d != (double)(int64_t)d)
    return throw_type(env, "%s: %s must be a safe integer", fn, name);
  *out = (int64_t)d;
  return true;
}

static bool arg_fd(napi_env env, napi_value v, const char *fn, int *fd) {
  int64_t x = 0;
  if (!arg_int(env, v, fn, "fd", &x)) return false;
  if (x < 0 || x > INT_MAX) return throw_range(env, "%s: fd %lld is not a file descriptor", fn, (long long)x);
  *fd = (int)x;
  return true;
}

// A name from the guest -> a NUL-terminated copy in `buf` (NAME_MAX + 1), or -errno.
static int take_name(napi_env env, napi_value v, const char *fn, char *buf, bool *threw) {
  void *data;
  size_t len;
  *threw = false;
  if (!get_bytes(env, v, fn, "name", &data, &len)) {
    *threw = true;
    return -EINVAL;
  }
  if (len == 0) return -ENOENT;
  if (len > NAME_MAX) return -ENAMETOOLONG;
  if (memchr(data, '/', len) || memchr(data, 0, len)) return -EINVAL;
  if ((len == 1 && ((char *)data)[0] == '.') || (len == 2 && memcmp(data, "..", 2) == 0)) return -EINVAL;
  memcpy(buf, data, len);
  buf[len] = 0;
  return 0;
}

static int openat2_beneath(int dirfd, const char *name, int flags, mode_t mode) {
  struct open_how how = {.flags = (uint64_t)flags, .mode = mode, .resolve = RESOLVE_FLAGS};
  long r;
  do r = syscall(SYS_openat2, dirfd, name, &how, sizeof how);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : (int)r;
}

static void proc_path(char *buf, size_t n, int fd) { snprintf(buf, n, "/proc/self/fd/%d", fd); }

static int fstat_fd(int fd, struct stat *st) {
  return fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

// Open flags a guest may ask for; everything else (O_CREAT, O_PATH, O_NOFOLLOW, O_DIRECT,
// O_ASYNC, ...) is dropped or added by us.
#define OPEN_ALLOWED (O_ACCMODE | O_APPEND | O_TRUNC | O_SYNC | O_DSYNC | O_NOATIME | O_DIRECTORY)

// O_NONBLOCK was only for the open itself: I/O on the share is synchronous. -> fd | -errno (fd closed).
static int clear_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

// The type check every open for I/O goes through (virtiofsd refuses the same set with EBADF;
// ENXIO is what the kernel itself answers for a FIFO without a peer or a device without a
// driver, and says "this object cannot do I/O" to the guest's program).
static int io_type_check(const struct stat *st, int flags) {
  if (S_ISLNK(st->st_mode)) return -ELOOP;
  if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode)) return -ENXIO;
  if (S_ISDIR(st->st_mode) && (flags & O_ACCMODE) != O_RDONLY) return -EISDIR;
  return 0;
}

int fs_io_open_flags(int flags) { return (flags & OPEN_ALLOWED & ~O_NOATIME) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK; }

int fs_io_regular(int fd) {
  struct stat st;
  int r = fstat_fd(fd, &st);
  if (r == 0 && !S_ISREG(st.st_mode)) r = -ENXIO;
  if (r < 0) {
    close(fd);
    return r;
  }
  return clear_nonblock(fd);
}

// Reopen the inode an O_PATH fd pins, for I/O (see the top of the file for why via /proc).
static int reopen_fd(int fd, int flags) {
  struct stat st;
  int r = fstat_fd(fd, &st);
  if (r < 0) return r;
  if ((r = io_type_check(&st, flags)) < 0) return r;
  char path[64];
  proc_path(path, sizeof path, fd);
  int f = fs_io_open_flags(flags);
  int nfd;
  do nfd = open(path, f);
  while (nfd < 0 && errno == EINTR);
  if (nfd < 0) return -errno;
  return clear_nonblock(nfd);
}

static int open_root(const char *path) {
  int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

// fsOpenRoot(path) -> O_PATH|O_DIRECTORY fd | -errno. The operator's path, not the guest's.
static napi_value fs_open_root(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  char *path;
  if (!get_args(env, info, 1, 1, argv, NULL, "fsOpenRoot")) return NULL;
  if (!get_string(env, argv[0], "fsOpenRoot", "path", PATH_MAX, &path)) return NULL;
  int fd;
  if (!fs_take_budget(env, info, &fd)) {
    free(path);
    return NULL;
  }
  if (fd == 0) fd = fs_keep(fs_env_of(env, info), open_root(path));
  free(path);
  return num(env, fd);
}

// fsLookup(dirfd, name) -> O_PATH|O_NOFOLLOW fd of that entry | -errno.
static napi_value fs_lookup(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int dirfd;
  char name[NAME_MAX + 1];
  bool threw;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsLookup") || !arg_fd(env, argv[0], "fsLookup", &dirfd)) return NULL;
  int r = take_name(env, argv[1], "fsLookup", name, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  int fd;
  if (!fs_take_budget(env, info, &fd)) return NULL;
  if (fd == 0) fd = fs_keep(fs_env_of(env, info), openat2_beneath(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0));
  return num(env, fd);
}

// fsStat(fd, out: Float64Array(FS_STAT_N)) -> 0 | -errno. Layout: fs_env.h's FS_STAT_N.
static napi_value fs_stat(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  double *data = NULL;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsStat") || !arg_fd(env, argv[0], "fsStat", &fd) ||
      !fs_stat_out(env, argv[1], "fsStat", FS_STAT_N, &data))
    return NULL;
  struct stat st;
  int r = fstat_fd(fd, &st);
  if (r < 0) return neg(env, -r);
  fs_fill_stat(&st, data);
  return num(env, 0);
}

bool fs_stat_out(napi_env env, napi_value v, const char *fn, size_t n, double **out) {
  void *data;
  size_t len;
  if (!get_typed(env, v, fn, "out", napi_float64_array, "Float64Array", &data, &len)) return false;
  if (len < n * sizeof(double) || ((uintptr_t)data & 7))
    return throw_range(env, "%s: out must be an aligned Float64Array of at least %zu (%zu bytes), not %zu bytes", fn, n, n * sizeof(double), len);
  *out = data;
  return true;
}

// The arguments fsLookupEntry and fsStatName share: (dirfd, name, out: Float64Array(FS_ENTRY_N),
// fh: Uint8Array(>= FS_FH_RECORD_MAX) | null). false: an exception is pending. Otherwise *r is 0,
// or -errno for a name that is no single valid component (the call answers it).
static bool entry_args(napi_env env, napi_callback_info info, const char *fn, int *dirfd, char *name, double **o, void **fh, int *r) {
  napi_value argv[4];
  size_t fhcap = 0;
  napi_valuetype t;
  bool threw;
  *fh = NULL;
  if (!get_args(env, info, 4, 4, argv, NULL, fn) || !arg_fd(env, argv[0], fn, dirfd) || !fs_stat_out(env, argv[2], fn, FS_ENTRY_N, o) ||
      napi_typeof(env, argv[3], &t) != napi_ok)
    return false;
  if (t != napi_null) {
    if (!get_bytes(env, argv[3], fn, "fh", fh, &fhcap)) return false;
    if (fhcap < FS_FH_RECORD_MAX) return throw_range(env, "%s: fh must hold %d bytes, not %zu", fn, FS_FH_RECORD_MAX, fhcap);
  }
  *r = take_name(env, argv[1], fn, name, &threw);
  return !threw;
}

// fsLookupEntry(dirfd, name, out: Float64Array(FS_ENTRY_N), fh: Uint8Array(>= 140) | null) -> 0 | -errno:
// a LOOKUP's host side in one call, where fsLookup + fsStat + fsNameToHandle + fsClose took
// four (each crossing into native code costs about as much as the syscall it makes). The
// name resolves exactly as fsLookup's. out[0..FS_STAT_N) as fsStat's; out[FS_STAT_N] the O_PATH fd kept
// (budgeted and owned as fsLookup's) or -1; out[FS_STAT_N + 1] the file-handle record's length in fh,
// -errno when name_to_handle_at failed (the fd is then kept), 0 when fh is null (no handle
// asked for: the fd is kept). With a record the fd is closed here: nothing pins the inode.
static napi_value fs_lookup_entry(napi_env env, napi_callback_info info) {
  int dirfd, r = 0;
  char name[NAME_MAX + 1];
  double *o = NULL;
  void *fh;
  if (!entry_args(env, info, "fsLookupEntry", &dirfd, name, &o, &fh, &r)) return NULL;
  if (r < 0) return neg(env, -r);
  fs_env *fe = fs_env_of(env, info);
  int fd;
  if (!fs_take_budget(env, info, &fd)) return NULL;
  if (fd < 0) return neg(env, -fd);
  fd = fs_keep(fe, openat2_beneath(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0));
  if (fd < 0) return neg(env, -fd);
  struct stat st;
  r = fstat_fd(fd, &st);
  int n = 0;
  if (r == 0) {
    fs_fill_stat(&st, o);
    if (fh) n = fs_fh_record(fd, "", fh);
  }
  if (r < 0 || n > 0) {
    disown(fe, fd);
    close(fd);
    fd_budget_give(&fe->acct, 1);
    fd = -1;
  }
  if (r < 0) return neg(env, -r);
  o[FS_STAT_N] = fd;
  o[FS_STAT_N + 1] = n;
  return num(env, 0);
}

// fsStatName(dirfd, name, out: Float64Array(FS_ENTRY_N), fh: Uint8Array(>= 140) | null) -> 0 | -errno:
// entry `name` of dirfd as it is now, without opening it: out[0..FS_STAT_N) as fsStat's (statx of the
// entry itself: no symlink followed, no automount), out[FS_STAT_N] the mount id it is on (a mount point
// in the directory shows the mounted root: another id), out[FS_STAT_N + 1] its file-handle record's length
// in fh (-errno when name_to_handle_at failed; 0 for fh null).
//
// For a warm LOOKUP: whether a name is still the inode the caller holds, in two syscalls where
// fsLookupEntry makes four (openat2, fstat, name_to_handle_at, close). The name is one validated
// component as fsLookup's, resolved beneath dirfd. The two calls resolve it separately, the stat
// first: if the record then equals the one of a held inode X (a record names one inode, its
// generation included) X still existed when the record was made, so it also existed at the stat,
// when no other live inode of the filesystem can have had X's number; so a stat that shows X's
// (dev, ino) on the share's mount was a stat of X. The caller checks all three; anything else
// goes the fsLookupEntry way. Nothing is opened here, so nothing is budgeted.
static napi_value fs_stat_name(napi_env env, napi_callback_info info) {
  int dirfd, r = 0;
  char name[NAME_MAX + 1];
  double *o = NULL;
  void *fh;
  if (!entry_args(env, info, "fsStatName", &dirfd, name, &o, &fh, &r)) return NULL;
  if (r < 0) return neg(env, -r);
  struct statx sx;
  if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS | STATX_MNT_ID, &sx) < 0) return neg(env, errno);
  if (!(sx.stx_mask & STATX_MNT_ID)) return neg(env, EOPNOTSUPP);
  o[0] = (double)makedev(sx.stx_dev_major, sx.stx_dev_minor), o[1] = (double)sx.stx_ino, o[2] = sx.stx_mode;
  o[3] = sx.stx_nlink, o[4] = sx.stx_uid, o[5] = sx.stx_gid;
  o[6] = (double)makedev(sx.stx_rdev_major, sx.stx_rdev_minor), o[7] = (double)sx.stx_size;
  o[8] = sx.stx_blksize, o[9] = (double)sx.stx_blocks;
  o[10] = (double)sx.stx_atime.tv_sec, o[11] = sx.stx_atime.tv_nsec;
  o[12] = (double)sx.stx_mtime.tv_sec, o[13] = sx.stx_mtime.tv_nsec;
  o[14] = (double)sx.stx_ctime.tv_sec, o[15] = sx.stx_ctime.tv_nsec;
  fs_fill_bits(o, sx.stx_ino, sx.stx_size, sx.stx_blocks, sx.stx_atime.tv_sec, sx.stx_mtime.tv_sec, sx.stx_ctime.tv_sec);
  o[FS_STAT_N] = (double)sx.stx_mnt_id;
  o[FS_STAT_N + 1] = fh ? fs_fh_record(dirfd, name, fh) : 0;
  return num(env, 0);
}

// fsReopen(fd, flags) -> an fd open for I/O on the same inode | -errno.
static napi_value fs_reopen(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t flags = 0;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsReopen") || !arg_fd(env, argv[0], "fsReopen", &fd) ||
      !arg_int(env, argv[1], "fsReopen", "flags", &flags))
    return NULL;
  int nfd;
  if (!fs_take_budget(env, info, &nfd)) return NULL;
  if (nfd == 0) nfd = fs_keep(fs_env_of(env, info), reopen_fd(fd, (int)flags));
  return num(env, nfd);
}

// fsDup(fd, onto) -> an fd on the same open file description as fd (its locks, its flock) |
// -errno. For a live plugin upgrade: the new instance's share takes over the descriptions that
// hold the guest's locks from the old instance's (another thread of this process), so the
// locks never drop. onto -1: a new fd, budgeted and owned by this thread like every share fd;
// onto >= 0: a share fd this thread owns is made to refer to fd's description instead (dup3:
// the number, its ownership and budget stay; whatever already names that number keeps working).
// Only a regular file or a directory, not O_PATH, is duplicated (EBADF otherwise); onto keeps
// its access mode (EACCES when fd's differs): the caller then checks it is the inode it expected.
static napi_value fs_dup(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t onto = -1;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsDup") || !arg_fd(env, argv[0], "fsDup", &fd) ||
      !arg_int(env, argv[1], "fsDup", "onto", &onto))
    return NULL;
  struct stat st;
  if (fstat(fd, &st) < 0) return neg(env, errno);
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return neg(env, EBADF);
  // An O_PATH fd holds no lock and does no I/O (fstat works on it, so it is refused here).
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return neg(env, errno);
  if (fl & O_PATH) return neg(env, EBADF);
  fs_env *fe = fs_env_of(env, info);
  if (onto >= 0) {
    if (onto > INT_MAX || !owns(fe, (int)onto) || onto == fd) return neg(env, EBADF);
    // The share fd keeps the access the guest opened it with: a description open for writing
    // (a peer's fd in a host handover) must not turn a read-only open file into a writable one.
    int ofl = fcntl((int)onto, F_GETFL);
    if (ofl < 0) return neg(env, errno);
    if ((ofl & (O_ACCMODE | O_PATH)) != (fl & O_ACCMODE)) return neg(env, EACCES);
    // `onto` may now be another mount: forget its remembered mount id.
    if (fe->mount_fd == (int)onto) fe->mount_fd = -1;
    return dup3(fd, (int)onto, O_CLOEXEC) < 0 ? neg(env, errno) : num(env, (double)onto);
  }
  int nfd;
  if (!fs_take_budget(env, info, &nfd)) return NULL;
  if (nfd == 0) {
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    nfd = fs_keep(fe, d < 0 ? -errno : d);
  }
  return num(env, nfd);
}

static int path_of(int fd) {
  char path[64];
  proc_path(path, sizeof path, fd);
  int r = open(path, O_PATH | O_CLOEXEC);
  return r < 0 ? -errno : r;
}

// fsPathOf(fd) -> a new O_PATH fd on the inode fd refers to (after a create) | -errno.
static napi_value fs_path_of(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, 1, argv, NULL, "fsPathOf") || !arg_fd(env, argv[0], "fsPathOf", &fd)) return NULL;
  int nfd;
  if (!fs_take_budget(env, info, &nfd)) return NULL;
  if (nfd == 0) nfd = fs_keep(fs_env_of(env, info), path_of(fd));
  return num(env, nfd);
}

// A new regular file `name` in dirfd, or (without O_EXCL in flags) the existing regular file
// of that name, open for I/O -> fd | -errno. O_CREAT alone would open whatever already has
// the name, and opening a FIFO blocks until a peer appears (a device node may do worse), so
// an existing entry is never opened by name: it is pinned with O_PATH, its type checked on
// that fd, and exactly that inode reopened (reopen_fd), as OPEN does.
static int create_at(int dirfd, const char *name, int flags, mode_t mode) {
  int io = flags & (O_ACCMODE | O_APPEND | O_TRUNC | O_SYNC | O_DSYNC);
  int r = -EEXIST;
  // An entry that vanishes between the two steps (a host-side rename/unlink racing us) is
  // created afresh; one that keeps flapping is not worth more than a few tries.
  for (int attempt = 0; attempt < 4; attempt++) {
    // O_CREAT | O_EXCL opens nothing that already exists (not even a symlink's target): what
    // it opens is the regular file it just made, so no O_NONBLOCK (which a FIFO would need)
    // and no two fcntl calls to clear it again (io_uring treats an O_NONBLOCK file's reads
    // differently), two system calls fewer per guest create.
    r = openat2_beneath(dirfd, name, io | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, mode);
    if (r >= 0) return r;
    if (r != -EEXIST || (flags & O_EXCL)) return r;
    int p = openat2_beneath(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
    if (p == -ENOENT) continue;
    if (p < 0) return p;
    struct stat st;
    r = fstat_fd(p, &st);
    // Creating over an existing directory is EISDIR even for O_RDONLY.
    if (r == 0 && S_ISDIR(st.st_mode)) r = -EISDIR;
    if (r == 0) r = io_type_check(&st, io);
    if (r == 0) r = reopen_fd(p, io);
    close(p);
    return r;
  }
  return r;
}

// fsCreate(dirfd, name, flags, mode) -> fd open for I/O on a new (or, without O_EXCL, an
// existing regular) file | -errno. A symlink in the name's place gives ELOOP, a directory
// EISDIR, a FIFO, socket or device node ENXIO (never opened).
static napi_value fs_create(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int dirfd;
  int64_t flags = 0, mode = 0;
  char name[NAME_MAX + 1];
  bool threw;
  if (!get_args(env, info, 4, 4, argv, NULL, "fsCreate") || !arg_fd(env, argv[0], "fsCreate", &dirfd) ||
      !arg_int(env, argv[2], "fsCreate", "flags", &flags) || !arg_int(env, argv[3], "fsCreate", "mode", &mode))
    return NULL;
  int r = take_name(env, argv[1], "fsCreate", name, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  int fd;
  if (!fs_take_budget(env, info, &fd)) return NULL;
  if (fd == 0) fd = fs_keep(fs_env_of(env, info), create_at(dirfd, name, (int)flags, (mode_t)mode & 07777));
  return num(env, fd);
}

// fsTmpfile(dirfd, flags, mode) -> fd open for I/O on a new unnamed regular file in dirfd
// (O_TMPFILE) | -errno. Opened through openat2 of "." beneath dirfd, so it is made in exactly
// the directory the share holds; flags: the access mode, O_APPEND/O_SYNC/O_DSYNC, and O_EXCL
// (the kernel then never lets it be linked). Nothing existing is opened, so it cannot block.
// A filesystem without O_TMPFILE answers EOPNOTSUPP (older kernels: EISDIR, said the same way).
static napi_value fs_tmpfile(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int dirfd;
  int64_t flags = 0, mode = 0;
  if (!get_args(env, info, 3, 3, argv, NULL, "fsTmpfile") || !arg_fd(env, argv[0], "fsTmpfile", &dirfd) ||
      !arg_int(env, argv[1], "fsTmpfile", "flags", &flags) || !arg_int(env, argv[2], "fsTmpfile", "mode", &mode))
    return NULL;
  int io = (int)flags & (O_ACCMODE | O_APPEND | O_SYNC | O_DSYNC | O_EXCL);
  int fd;
  if (!fs_take_budget(env, info, &fd)) return NULL;
  if (fd == 0) {
    int r = openat2_beneath(dirfd, ".", io | O_TMPFILE | O_CLOEXEC | O_NOCTTY, (mode_t)mode & 07777);
    if (r == -EISDIR) r = -EOPNOTSUPP;
    fd = fs_keep(fs_env_of(env, info), r);
  }
  return num(env, fd);
}

// fsMake(kind, dirfd, name, mode, target?) -> 0 | -errno. kind: 'f' regular file (mknod),
// 'p' FIFO, 's' socket (mknod: inert until opened, and the share never opens either),
// 'd' directory, 'l' symlink to target (bytes; never followed by us). No device nodes.
static napi_value fs_make(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int dirfd;
  int64_t mode = 0;
  char name[NAME_MAX + 1], kind[2];
  size_t klen;
  bool threw;
  if (!get_args(env, info, 5, 4, argv, NULL, "fsMake")) return NULL;
  if (napi_get_value_string_utf8(env, argv[0], kind, sizeof kind, &klen) != napi_ok || klen != 1) {
    throw_type(env, "fsMake: kind must be 'f', 'p', 's', 'd' or 'l'");
    return NULL;
  }
  if (!arg_fd(env, argv[1], "fsMake", &dirfd) || !arg_int(env, argv[3], "fsMake", "mode", &mode)) return NULL;
  int r = take_name(env, argv[2], "fsMake", name, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  switch (kind[0]) {
    case 'f': r = mknodat(dirfd, name, S_IFREG | ((mode_t)mode & 07777), 0); break;
    case 'p': r = mknodat(dirfd, name, S_IFIFO | ((mode_t)mode & 07777), 0); break;
    case 's': r = mknodat(dirfd, name, S_IFSOCK | ((mode_t)mode & 07777), 0); break;
    case 'd': r = mkdirat(dirfd, name, (mode_t)mode & 07777); break;
    case 'l': {
      void *data;
      size_t len;
      if (!get_bytes(env, argv[4], "fsMake", "target", &data, &len)) return NULL;
      if (len == 0 || len >= PATH_MAX || memchr(data, 0, len)) return neg(env, len >= PATH_MAX ? ENAMETOOLONG : EINVAL);
      char *t = malloc(len + 1);
      if (!t) return neg(env, ENOMEM);
      memcpy(t, data, len);
      t[len] = 0;
      r = symlinkat(t, dirfd, name);
      int err = errno;
      free(t);
      errno = err;
      break;
    }
    default: throw_type(env, "fsMake: kind must be 'f', 'd' or 'l'"); return NULL;
  }
  return r < 0 ? neg(env, errno) : num(env, 0);
}

// fsUmask(mask) -> the calling thread's previous umask | -errno. The umask is a process-wide
// attribute shared by every thread (CLONE_FS) unless a thread unshares it: the first call
// in a thread does (unshare(CLONE_FS), which a multi-threaded process may do), so a device
// worker can create under the guest's umask (POSIX ACLs: the kernel applies it only where the
// parent has no default ACL) without another thread's creates seeing it. The thread's cwd
// and root stay what they were; nothing here uses them.
static __thread bool own_fs_attrs;
static napi_value fs_umask(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t mask = 0;
  if (!get_args(env, info, 1, 1, argv, NULL, "fsUmask") || !arg_int(env, argv[0], "fsUmask", "mask", &mask)) return NULL;
  if (mask < 0 || mask > 0777) {
    throw_type(env, "fsUmask: mask must be 0-0777");
    return NULL;
  }
  if (!own_fs_attrs) {
    if (unshare(CLONE_FS) != 0) return neg(env, errno);
    own_fs_attrs = true;
  }
  return num(env, umask((mode_t)mask));
}

// fsLink(fd, newdirfd, name) -> 0 | -errno: a new name for the inode fd pins.
static napi_value fs_link(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd, dirfd;
  char name[NAME_MAX + 1];
  bool threw;
  if (!get_args(env, info, 3, 3, argv, NULL, "fsLink") || !arg_fd(env, argv[0], "fsLink", &fd) ||
      !arg_fd(env, argv[1], "fsLink", &dirfd))
    return NULL;
  int r = take_name(env, argv[2], "fsLink", name, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  struct stat st;
  if ((r = fstat_fd(fd, &st)) < 0) return neg(env, -r);
  if (S_ISDIR(st.st_mode)) return neg(env, EPERM);
  // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, the /proc magic link of our own fd
  // (AT_SYMLINK_FOLLOW follows the magic link to the pinned inode, not a symlink's target).
  if (linkat(fd, "", dirfd, name, AT_EMPTY_PATH) == 0) return num(env, 0);
  if (errno != ENOENT && errno != EPERM) return neg(env, errno);
  char path[64];
  proc_path(path, sizeof path, fd);
  return linkat(AT_FDCWD, path, dirfd, name, AT_SYMLINK_FOLLOW) < 0 ? neg(env, errno) : num(env, 0);
}

// fsUnlink(dirfd, name, isDir) -> 0 | -errno.
static napi_value fs_unlink(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int dirfd;
  bool dir;
  char name[NAME_MAX + 1];
  bool threw;
  if (!get_args(env, info, 3, 3, argv, NULL, "fsUnlink") || !arg_fd(env, argv[0], "fsUnlink", &dirfd) ||
      !get_bool(env, argv[2], "fsUnlink", "isDir", &dir))
    return NULL;
  int r = take_name(env, argv[1], "fsUnlink", name, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  return unlinkat(dirfd, name, dir ? AT_REMOVEDIR : 0) < 0 ? neg(env, errno) : num(env, 0);
}

// fsRename(olddirfd, oldname, newdirfd, newname, flags) -> 0 | -errno (renameat2 flags:
// RENAME_NOREPLACE 1, RENAME_EXCHANGE 2, RENAME_WHITEOUT 4: overlayfs' whiteout, a 0:0
// character device that nothing can open, left at the old name; the kernel needs CAP_MKNOD).
static napi_value fs_rename(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int od, nd;
  int64_t flags = 0;
  char on[NAME_MAX + 1], nn[NAME_MAX + 1];
  bool threw;
  if (!get_args(env, info, 5, 5, argv, NULL, "fsRename") || !arg_fd(env, argv[0], "fsRename", &od) ||
      !arg_fd(env, argv[2], "fsRename", &nd) || !arg_int(env, argv[4], "fsRename", "flags", &flags))
    return NULL;
  int r = take_name(env, argv[1], "fsRename", on, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  r = take_name(env, argv[3], "fsRename", nn, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  if (flags & ~7LL) return neg(env, EINVAL);
  return syscall(SYS_renameat2, od, on, nd, nn, (unsigned)flags) < 0 ? neg(env, errno) : num(env, 0);
}

// fsReadlink(fd, buf) -> bytes | -errno.
static napi_value fs_readlink(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  void *data;
  size_t len;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsReadlink") || !arg_fd(env, argv[0], "fsReadlink", &fd) ||
      !get_bytes(env, argv[1], "fsReadlink", "buf", &data, &len))
    return NULL;
  ssize_t n = readlinkat(fd, "", data, len);
  return n < 0 ? neg(env, errno) : num(env, (double)n);
}

// fsSetattr(fd, what, a, b, c, d) -> 0 | -errno, one change per call:
//   'mode' a=mode; 'owner' a=uid b=gid (-1 keeps); 'size' a=size;
//   'times' a=atime b=atimeNsec c=mtime d=mtimeNsec (UTIME_NOW/UTIME_OMIT as nsec).
static napi_value fs_setattr(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int fd;
  char what[8];
  size_t wlen;
  int64_t a[4] = {0};
  if (!get_args(env, info, 6, 3, argv, NULL, "fsSetattr") || !arg_fd(env, argv[0], "fsSetattr", &fd)) return NULL;
  if (napi_get_value_string_utf8(env, argv[1], what, sizeof what, &wlen) != napi_ok) {
    throw_type(env, "fsSetattr: what must be a string");
    return NULL;
  }
  for (int i = 0; i < 4; i++) {
    napi_valuetype t;
    napi_typeof(env, argv[2 + i], &t);
    if (t != napi_undefined && !arg_int(env, argv[2 + i], "fsSetattr", "value", &a[i])) return NULL;
  }
  struct stat st;
  int r = fstat_fd(fd, &st);
  if (r < 0) return neg(env, -r);
  char path[64];
  proc_path(path, sizeof path, fd);
  if (strcmp(what, "owner") == 0) {
    r = fchownat(fd, "", (uid_t)a[0], (gid_t)a[1], AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  } else if (S_ISLNK(st.st_mode) && strcmp(what, "times") == 0) {
    // The /proc magic link would follow the symlink; the O_PATH fd itself names the link.
    struct timespec ts[2] = {{a[0], a[1]}, {a[2], a[3]}};
    r = utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  } else if (S_ISLNK(st.st_mode)) {
    return neg(env, EOPNOTSUPP); // symlinks have no mode of their own (lchmod is EOPNOTSUPP in Linux too)
  } else if (strcmp(what, "mode") == 0) {
    r = fchmodat(AT_FDCWD, path, (mode_t)a[0] & 07777, 0);
  } else if (strcmp(what, "times") == 0) {
    struct timespec ts[2] = {{a[0], a[1]}, {a[2], a[3]}};
    r = utimensat(AT_FDCWD, path, ts, 0);
  } else if (strcmp(what, "size") == 0) {
    if (S_ISDIR(st.st_mode)) return neg(env, EISDIR);
    if (!S_ISREG(st.st_mode)) return neg(env, EINVAL);
    if (a[0] < 0) return neg(env, EINVAL);
    int wfd = reopen_fd(fd, O_WRONLY);
    if (wfd < 0) return neg(env, -wfd);
    r = ftruncate(wfd, a[0]);
    int err = errno;
    close(wfd);
    errno = err;
  } else {
    throw_type(env, "fsSetattr: unknown attribute '%s'", what);
    return NULL;
  }
  return r < 0 ? neg(env, errno) : num(env, 0);
}

static bool fd_buf_off(napi_env env, napi_callback_info info, const char *fn, int *fd, void **data, size_t *len,
                       int64_t *off) {
  napi_value argv[3];
  return get_args(env, info, 3, 3, argv, NULL, fn) && arg_fd(env, argv[0], fn, fd) &&
         get_bytes(env, argv[1], fn, "buf", data, len) && arg_int(env, argv[2], fn, "offset", off);
}

// fsPread/fsPwrite(fd, buf, offset) -> bytes | -errno.
static napi_value fs_pread(napi_env env, napi_callback_info info) {
  int fd;
  void *data;
  size_t len;
  int64_t off = 0;
  if (!fd_buf_off(env, info, "fsPread", &fd, &data, &len, &off)) return NULL;
  if (off < 0) return neg(env, EINVAL);
  ssize_t n;
  do n = pread(fd, data, len, off);
  while (n < 0 && errno == EINTR);
  return n < 0 ? neg(env, errno) : num(env, (double)n);
}

static napi_value fs_pwrite(napi_env env, napi_callback_info info) {
  int fd;
  void *data;
  size_t len;
  int64_t off = 0;
  if (!fd_buf_off(env, info, "fsPwrite", &fd, &data, &len, &off)) return NULL;
  if (off < 0) return neg(env, EINVAL);
  ssize_t n;
  do n = pwrite(fd, data, len, off);
  while (n < 0 && errno == EINTR);
  return n < 0 ? neg(env, errno) : num(env, (double)n);
}

// fsPreadv/fsPwritev(fd, bufs: Uint8Array[], offset) -> bytes | -errno: one system call for a
// request scattered over many guest pages (a 1 MiB FUSE_READ is up to 256 of them) where a
// pread each would cost 256. At most IOV_MAX buffers; the caller goes on after a short transfer.
// fsPreadv(fd, bufs, offset, true): preadv2 with RWF_NOWAIT, which copies what the page cache
// holds and never waits for the device: -EAGAIN when the first byte is not cached, a short
// count when a later one is not (or at end of file), -EOPNOTSUPP where the file system has no
// non-blocking reads. The io_uring executor serves page-cache hits this way, in their turn.
static napi_value fs_rwv(napi_env env, napi_callback_info info, bool write) {
  const char *fn = write ? "fsPwritev" : "fsPreadv";
  napi_value argv[4];
  int fd;
  int64_t off = 0;
  bool is_array = false;
  bool nowait = false;
  uint32_t n = 0;
  if (!get_args(env, info, write ? 3 : 4, 3, argv, NULL, fn) || !arg_fd(env, argv[0], fn, &fd) ||
      !arg_int(env, argv[2], fn, "offset", &off))
    return NULL;
  if (!write) {
    napi_valuetype t = napi_undefined;
    if (napi_typeof(env, argv[3], &t) != napi_ok) return NULL;
    if (t != napi_undefined && !get_bool(env, argv[3], fn, "nowait", &nowait)) return NULL;
  }
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &n) != napi_ok) {
    throw_type(env, "%s: bufs must be an array of Uint8Array", fn);
    return NULL;
  }
  if (n == 0 || n > IOV_MAX) {
    throw_range(env, "%s: %u buffers; give 1 to %d", fn, n, IOV_MAX);
    return NULL;
  }
  if (off < 0) return neg(env, EINVAL);
  struct iovec iov[IOV_MAX];
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    if (napi_get_element(env, argv[1], i, &b) != napi_ok) {
      throw_napi(env, napi_generic_failure, fn);
      return NULL;
    }
    if (!get_bytes(env, b, fn, "bufs[i]", &iov[i].iov_base, &iov[i].iov_len)) return NULL;
  }
  ssize_t r;
  do r = write ? pwritev(fd, iov, (int)n, off) : preadv2(fd, iov, (int)n, off, nowait ? RWF_NOWAIT : 0);
  while (r < 0 && errno == EINTR);
  return r < 0 ? neg(env, errno) : num(env, (double)r);
}
static napi_value fs_preadv(napi_env env, napi_callback_info info) { return fs_rwv(env, info, false); }
static napi_value fs_pwritev(napi_env env, napi_callback_info info) { return fs_rwv(env, info, true); }

// fsGetdents(fd, buf, offset: bigint | null) -> bytes of linux_dirent64 records from the
// directory position `offset` (a d_off from an earlier record, or 0n) | -errno. A bigint: ext4
// hands out 63-bit hash positions that a double would round. null: from where the fd is, with
// no lseek (on ext4 even a seek to where the fd already is makes the next read hash its
// directory block again: ~0.1 us per entry of a 4 KiB listing).
static napi_value fs_getdents(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  void *data;
  size_t len;
  int64_t off = 0;
  bool lossless;
  napi_valuetype t;
  if (!get_args(env, info, 3, 3, argv, NULL, "fsGetdents") || !arg_fd(env, argv[0], "fsGetdents", &fd) ||
      !get_bytes(env, argv[1], "fsGetdents", "buf", &data, &len))
    return NULL;
  if (napi_typeof(env, argv[2], &t) != napi_ok) return NULL;
  if (t != napi_null && (napi_get_value_bigint_int64(env, argv[2], &off, &lossless) != napi_ok || !lossless)) {
    throw_type(env, "fsGetdents: offset must be a bigint in the s64 range, or null");
    return NULL;
  }
  if (t != napi_null && lseek(fd, off, SEEK_SET) < 0) return neg(env, errno);
  long n = syscall(SYS_getdents64, fd, data, len);
  return n < 0 ? neg(env, errno) : num(env, (double)n);
}

// fsStatfs(fd, out: Float64Array(8)) -> 0 | -errno: blocks bfree bavail files ffree bsize namelen frsize.
static napi_value fs_statfs(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  double *o = NULL;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsStatfs") || !arg_fd(env, argv[0], "fsStatfs", &fd) ||
      !fs_stat_out(env, argv[1], "fsStatfs", 8, &o))
    return NULL;
  struct statfs s;
  if (fstatfs(fd, &s) < 0) return neg(env, errno);
  o[0] = (double)s.f_blocks, o[1] = (double)s.f_bfree, o[2] = (double)s.f_bavail, o[3] = (double)s.f_files;
  o[4] = (double)s.f_ffree, o[5] = (double)s.f_bsize, o[6] = (double)s.f_namelen, o[7] = (double)s.f_frsize;
  return num(env, 0);
}

// fsFsync(fd, datasync) -> 0 | -errno.
static napi_value fs_fsync(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  bool data;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsFsync") || !arg_fd(env, argv[0], "fsFsync", &fd) ||
      !get_bool(env, argv[1], "fsFsync", "datasync", &data))
    return NULL;
  return (data ? fdatasync(fd) : fsync(fd)) < 0 ? neg(env, errno) : num(env, 0);
}

// fsFallocate(fd, mode, offset, len) -> 0 | -errno.
static napi_value fs_fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  int64_t mode = 0, off = 0, len = 0;
  if (!get_args(env, info, 4, 4, argv, NULL, "fsFallocate") || !arg_fd(env, argv[0], "fsFallocate", &fd) ||
      !arg_int(env, argv[1], "fsFallocate", "mode", &mode) || !arg_int(env, argv[2], "fsFallocate", "offset", &off) ||
      !arg_int(env, argv[3], "fsFallocate", "len", &len))
    return NULL;
  if (off < 0 || len <= 0) return neg(env, EINVAL);
  return fallocate(fd, (int)mode, off, len) < 0 ? neg(env, errno) : num(env, 0);
}

// fsLseek(fd, offset, whence) -> new offset | -errno (SEEK_DATA/SEEK_HOLE for FUSE_LSEEK). An
// offset past 2^53 - 1 comes back as a bigint: SEEK_HOLE past a sparse file's last data answers
// its size, which a double would round.
static napi_value fs_lseek(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  int64_t off = 0, whence = 0;
  if (!get_args(env, info, 3, 3, argv, NULL, "fsLseek") || !arg_fd(env, argv[0], "fsLseek", &fd) ||
      !arg_int(env, argv[1], "fsLseek", "offset", &off) || !arg_int(env, argv[2], "fsLseek", "whence", &whence))
    return NULL;
  off_t r = lseek(fd, off, (int)whence);
  if (r < 0) return neg(env, errno);
  if (r <= (off_t)SAFE_INT_MAX) return num(env, (double)r);
  napi_value big;
  if (napi_create_bigint_int64(env, r, &big) != napi_ok) {
    throw_napi(env, napi_generic_failure, "fsLseek");
    return NULL;
  }
  return big;
}

// fsClose(fd) -> 0 | -EBADF: closes a share fd this thread's calls handed out and gives it
// back to the budget. Any other fd is refused (never closed), so a confused caller cannot
// close a socket or a memfd through it, nor return budget it never took.
// Extended attributes, on the inode an O_PATH fd pins. f*xattr refuses O_PATH fds (EBADF), so
// these go through /proc/self/fd/N with the *following* forms (getxattr, not lgetxattr):
// following that magic link lands on exactly the fd's own inode, a symlink included (the
// link itself, never its target), and nothing is opened, so a FIFO or device node cannot
// block. The l* forms would act on the /proc link itself (EOPNOTSUPP; measured on 6.18).
// The policy (--xattr, refused namespaces, read-only) is host/fs/share.ts's; here only the
// name is checked: non-empty, at most XATTR_NAME_MAX bytes, no NUL.
static int take_xattr_name(napi_env env, napi_value v, const char *fn, char *buf, bool *threw) {
  void *data;
  size_t len;
  *threw = false;
  if (!get_bytes(env, v, fn, "name", &data, &len)) {
    *threw = true;
    return -EINVAL;
  }
  if (len == 0) return -EINVAL;
  if (len > XATTR_NAME_MAX) return -ERANGE;
  if (memchr(data, 0, len)) return -EINVAL;
  memcpy(buf, data, len);
  buf[len] = 0;
  return 0;
}

// fsGetxattr(fd, name, buf) -> the value's length | -errno; an empty buf asks only the length.
static napi_value fs_getxattr(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  void *data;
  size_t len;
  char name[XATTR_NAME_MAX + 1], path[32];
  bool threw;
  if (!get_args(env, info, 3, 3, argv, NULL, "fsGetxattr") || !arg_fd(env, argv[0], "fsGetxattr", &fd)) return NULL;
  int r = take_xattr_name(env, argv[1], "fsGetxattr", name, &threw);
  if (threw) return NULL;
  if (!get_bytes(env, argv[2], "fsGetxattr", "buf", &data, &len)) return NULL;
  if (r < 0) return neg(env, -r);
  proc_path(path, sizeof path, fd);
  ssize_t n = getxattr(path, name, len ? data : NULL, len);
  return n < 0 ? neg(env, errno) : num(env, (double)n);
}

// fsListxattr(fd, buf) -> bytes of NUL-terminated names | -errno; an empty buf asks the length.
static napi_value fs_listxattr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  void *data;
  size_t len;
  char path[32];
  if (!get_args(env, info, 2, 2, argv, NULL, "fsListxattr") || !arg_fd(env, argv[0], "fsListxattr", &fd) ||
      !get_bytes(env, argv[1], "fsListxattr", "buf", &data, &len))
    return NULL;
  proc_path(path, sizeof path, fd);
  ssize_t n = listxattr(path, len ? data : NULL, len);
  return n < 0 ? neg(env, errno) : num(env, (double)n);
}

// fsSetxattr(fd, name, value, flags) -> 0 | -errno; flags XATTR_CREATE 1, XATTR_REPLACE 2.
static napi_value fs_setxattr(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  void *data;
  size_t len;
  int64_t flags = 0;
  char name[XATTR_NAME_MAX + 1], path[32];
  bool threw;
  if (!get_args(env, info, 4, 4, argv, NULL, "fsSetxattr") || !arg_fd(env, argv[0], "fsSetxattr", &fd)) return NULL;
  int r = take_xattr_name(env, argv[1], "fsSetxattr", name, &threw);
  if (threw) return NULL;
  if (!get_bytes(env, argv[2], "fsSetxattr", "value", &data, &len) ||
      !arg_int(env, argv[3], "fsSetxattr", "flags", &flags))
    return NULL;
  if (r < 0) return neg(env, -r);
  if (flags & ~(int64_t)(XATTR_CREATE | XATTR_REPLACE)) return neg(env, EINVAL);
  if (len > XATTR_SIZE_MAX) return neg(env, E2BIG);
  proc_path(path, sizeof path, fd);
  return setxattr(path, name, data, len, (int)flags) < 0 ? neg(env, errno) : num(env, 0);
}

// fsRemovexattr(fd, name) -> 0 | -errno.
static napi_value fs_removexattr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  char name[XATTR_NAME_MAX + 1], path[32];
  bool threw;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsRemovexattr") || !arg_fd(env, argv[0], "fsRemovexattr", &fd))
    return NULL;
  int r = take_xattr_name(env, argv[1], "fsRemovexattr", name, &threw);
  if (threw) return NULL;
  if (r < 0) return neg(env, -r);
  proc_path(path, sizeof path, fd);
  return removexattr(path, name) < 0 ? neg(env, errno) : num(env, 0);
}

// fsLock(fd, set, type, start, len, out) -> 0 | -errno: an open-file-description record lock
// (F_OFD_GETLK when set is 0, F_OFD_SETLK otherwise; never F_OFD_SETLKW: a wait would block
// the worker, host/fs/locks.ts retries instead). type: F_RDLCK 0, F_WRLCK 1, F_UNLCK 2;
// len 0: to the end of any file. out (BigInt64Array of 4) gets what F_OFD_GETLK reports:
// type, start, len, pid (-1 for an OFD lock). 64-bit integers, not doubles: a conflicting lock
// another process took may start or run past 2^53.
static napi_value fs_lock(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int fd;
  int64_t set = 0, type = 0, start = 0, len = 0;
  void *out;
  size_t outlen;
  if (!get_args(env, info, 6, 6, argv, NULL, "fsLock") || !arg_fd(env, argv[0], "fsLock", &fd) ||
      !arg_int(env, argv[1], "fsLock", "set", &set) || !arg_int(env, argv[2], "fsLock", "type", &type) ||
      !arg_int(env, argv[3], "fsLock", "start", &start) || !arg_int(env, argv[4], "fsLock", "len", &len) ||
      !get_typed(env, argv[5], "fsLock", "out", napi_bigint64_array, "BigInt64Array", &out, &outlen))
    return NULL;
  if (outlen < 4 * sizeof(int64_t) || ((uintptr_t)out & 7)) {
    throw_range(env, "fsLock: out must be an aligned BigInt64Array of at least 4 (32 bytes), not %zu bytes", outlen);
    return NULL;
  }
  if ((type != F_RDLCK && type != F_WRLCK && type != F_UNLCK) || start < 0 || len < 0) return neg(env, EINVAL);
  struct flock fl = {.l_type = (short)type, .l_whence = SEEK_SET, .l_start = start, .l_len = len, .l_pid = 0};
  if (fcntl(fd, set ? F_OFD_SETLK : F_OFD_GETLK, &fl) < 0) return neg(env, errno);
  int64_t *o = out;
  o[0] = fl.l_type;
  o[1] = fl.l_start;
  o[2] = fl.l_len;
  o[3] = fl.l_pid;
  return num(env, 0);
}

// fsCopyFileRange(fdIn, offIn, fdOut, offOut, len) -> bytes copied | -errno (copy_file_range(2),
// explicit offsets: the fds' own positions never move; at most 1 GiB per call).
static napi_value fs_copy_file_range(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int in, out;
  int64_t oi = 0, oo = 0, len = 0;
  if (!get_args(env, info, 5, 5, argv, NULL, "fsCopyFileRange") || !arg_fd(env, argv[0], "fsCopyFileRange", &in) ||
      !arg_int(env, argv[1], "fsCopyFileRange", "offIn", &oi) || !arg_fd(env, argv[2], "fsCopyFileRange", &out) ||
      !arg_int(env, argv[3], "fsCopyFileRange", "offOut", &oo) || !arg_int(env, argv[4], "fsCopyFileRange", "len", &len))
    return NULL;
  if (oi < 0 || oo < 0 || len < 0) return neg(env, EINVAL);
  if (len > (1 << 30)) len = 1 << 30;
  loff_t li = oi, lo = oo;
  ssize_t n = copy_file_range(in, &li, out, &lo, (size_t)len, 0);
  return n < 0 ? neg(env, errno) : num(env, (double)n);
}

// fsSyncfs(fd) -> 0 | -errno: syncfs(2) of the filesystem fd is on.
static napi_value fs_syncfs(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, 1, argv, NULL, "fsSyncfs") || !arg_fd(env, argv[0], "fsSyncfs", &fd)) return NULL;
  // syncfs refuses O_PATH fds (EBADF): go through a real open of the same inode.
  int rfd = reopen_fd(fd, O_RDONLY);
  if (rfd < 0) return neg(env, -rfd);
  int r = syncfs(rfd);
  int err = errno;
  close(rfd);
  return r < 0 ? neg(env, err) : num(env, 0);
}

// fsFlock(fd, op) -> 0 | -errno: flock(2), always LOCK_NB (op: LOCK_SH 1, LOCK_EX 2, LOCK_UN 8).
static napi_value fs_flock(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t op = 0;
  if (!get_args(env, info, 2, 2, argv, NULL, "fsFlock") || !arg_fd(env, argv[0], "fsFlock", &fd) ||
      !arg_int(env, argv[1], "fsFlock", "op", &op))
    return NULL;
  if (op != LOCK_SH && op != LOCK_EX && op != LOCK_UN) return neg(env, EINVAL);
  return flock(fd, (int)op | LOCK_NB) < 0 ? neg(env, errno) : num(env, 0);
}

static napi_value fs_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, 1, argv, NULL, "fsClose") || !arg_fd(env, argv[0], "fsClose", &fd)) return NULL;
  fs_env *fe = fs_env_of(env, info);
  if (!owns(fe, fd)) return neg(env, EBADF);
  disown(fe, fd);
  close(fd);
  fd_budget_give(&fe->acct, 1);
  return num(env, 0);
}

// fsBudgetJoin(maxHandles) -> 0: a share opened in this thread; the thread holds a reserve of
// the fd budget (at most maxHandles) until every share that joined has left (fd_budget.c).
static napi_value fs_budget_join(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t cap = 0;
  if (!get_args(env, info, 1, 1, argv, NULL, "fsBudgetJoin") || !get_u64(env, argv[0], "fsBudgetJoin", "maxHandles", &cap)) return NULL;
  fd_budget_join(&fs_env_of(env, info)->acct, cap > (1u << 30) ? (1L << 30) : (long)cap);
  return num(env, 0);
}

// fsBudgetLeave() -> 0: a share that joined closed.
static napi_value fs_budget_leave(napi_env env, napi_callback_info info) {
  fd_budget_leave(&fs_env_of(env, info)->acct);
  return num(env, 0);
}

// fsBudgetAccount() -> {room, reserve, held}: this thread's share of the budget now.
static napi_value fs_budget_account(napi_env env, napi_callback_info info) {
  long v[3];
  fd_budget_account_info(&fs_env_of(env, info)->acct, v);
  napi_value o;
  if (napi_create_object(env, &o) != napi_ok) return NULL;
  if (napi_set_named_property(env, o, "room", num(env, (double)v[0])) != napi_ok ||
      napi_set_named_property(env, o, "reserve", num(env, (double)v[1])) != napi_ok ||
      napi_set_named_property(env, o, "held", num(env, (double)v[2])) != napi_ok)
    return NULL;
  return o;
}

bool fs_set_fn(napi_env env, napi_value obj, const char *name, napi_callback cb, fs_env *fe) {
  napi_value f;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, fe, &f) != napi_ok) return false;
  return napi_set_named_property(env, obj, name, f) == napi_ok;
}

fs_env *init_fs(napi_env env, napi_value exports) {
  fs_env *fe = calloc(1, sizeof *fe);
  if (!fe) return NULL;
  fe->mount_fd = -1;
  if (napi_add_env_cleanup_hook(env, fs_env_teardown, fe) != napi_ok) {
    free(fe);
    return NULL;
  }
  // The calls that hand out (or take back) share fds carry this environment's record.
  bool ok = fs_set_fn(env, exports, "fsOpenRoot", fs_open_root, fe) && fs_set_fn(env, exports, "fsBudgetJoin", fs_budget_join, fe) &&
         fs_set_fn(env, exports, "fsBudgetLeave", fs_budget_leave, fe) && fs_set_fn(env, exports, "fsBudgetAccount", fs_budget_account, fe) && fs_set_fn(env, exports, "fsLookup", fs_lookup, fe) &&
         fs_set_fn(env, exports, "fsLookupEntry", fs_lookup_entry, fe) && set_fn(env, exports, "fsStatName", fs_stat_name) &&
         set_fn(env, exports, "fsStat", fs_stat) && fs_set_fn(env, exports, "fsReopen", fs_reopen, fe) &&
         fs_set_fn(env, exports, "fsDup", fs_dup, fe) &&
         fs_set_fn(env, exports, "fsPathOf", fs_path_of, fe) && fs_set_fn(env, exports, "fsCreate", fs_create, fe) && fs_set_fn(env, exports, "fsTmpfile", fs_tmpfile, fe) &&
         fs_set_fn(env, exports, "fsClose", fs_close, fe) &&
         set_fn(env, exports, "fsMake", fs_make) && set_fn(env, exports, "fsUmask", fs_umask) &&
         set_fn(env, exports, "fsLink", fs_link) &&
         set_fn(env, exports, "fsUnlink", fs_unlink) && set_fn(env, exports, "fsRename", fs_rename) &&
         set_fn(env, exports, "fsReadlink", fs_readlink) && set_fn(env, exports, "fsSetattr", fs_setattr) &&
         set_fn(env, exports, "fsPread", fs_pread) && set_fn(env, exports, "fsPwrite", fs_pwrite) &&
         set_fn(env, exports, "fsPreadv", fs_preadv) && set_fn(env, exports, "fsPwritev", fs_pwritev) &&
         set_fn(env, exports, "fsGetdents", fs_getdents) && set_fn(env, exports, "fsStatfs", fs_statfs) &&
         set_fn(env, exports, "fsFsync", fs_fsync) && set_fn(env, exports, "fsFallocate", fs_fallocate) &&
         set_fn(env, exports, "fsLseek", fs_lseek) && set_fn(env, exports, "fsGetxattr", fs_getxattr) &&
         set_fn(env, exports, "fsListxattr", fs_listxattr) && set_fn(env, exports, "fsSetxattr", fs_setxattr) &&
         set_fn(env, exports, "fsRemovexattr", fs_removexattr) && set_fn(env, exports, "fsLock", fs_lock) &&
         set_fn(env, exports, "fsFlock", fs_flock) && set_fn(env, exports, "fsCopyFileRange", fs_copy_file_range) &&
         set_fn(env, exports, "fsSyncfs", fs_syncfs);
  return ok ? fe : NULL;
}
