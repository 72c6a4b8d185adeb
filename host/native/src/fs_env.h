// The share-fd bookkeeping of host/native/src/fs.c, for the other files that hand out share
// fds (fhandle.c): every such fd is taken from the process-wide budget first and recorded as
// owned by the calling thread's environment, so fsClose and a dying worker give it back.
#ifndef VHOST_NATIVE_FS_ENV_H
#define VHOST_NATIVE_FS_ENV_H

#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

// A file-handle record's largest size (fhandle.c): 12 bytes of head and MAX_HANDLE_SZ (128).
#define FS_FH_RECORD_MAX 140

typedef struct fs_env fs_env;

// Registers the fs calls; returns this environment's record (NULL with nothing registered on failure).
fs_env *init_fs(napi_env env, napi_value exports);
// The record a call registered with fs_set_fn carries.
fs_env *fs_env_of(napi_env env, napi_callback_info info);
// Before a call that hands out a share fd: false (exception pending) if the budget was never
// set up; otherwise *r is 0, or -ENFILE when the budget is spent.
bool fs_take_budget(napi_env env, napi_callback_info info, int *r);
// Gives n fds taken by fs_take_budget back (a transient fd, closed again).
void fs_give_budget(fs_env *fe, long n);
// After it: r (an fd) is owned by fe; on failure (r < 0) the budget taken is given back.
int fs_keep(fs_env *fe, int r);
// A stat's slots in an out Float64Array: 16 numbers (dev ino mode nlink uid gid rdev size blksize
// blocks atime atimeNsec mtime mtimeNsec ctime ctimeNsec), then the exact 64 bits of the fields a
// double may round (FS_STAT_BITS on, as u64 or s64 in those 8 bytes): ino, size, blocks, atime,
// mtime, ctime. A reader takes a number as it is when it is a safe integer and these bits only
// when it is not (an overlayfs xino inode, a sparse file past 2^53 bytes). dev and rdev need no
// bits: the kernel's dev_t is 32 bits (12 major, 20 minor), so their doubles are exact.
#define FS_STAT_NUMBERS 16
#define FS_STAT_BITS 16
#define FS_STAT_N 22
// fsLookupEntry's and fsStatName's out: a stat, then two more (see each).
#define FS_ENTRY_N (FS_STAT_N + 2)
// fsStat's FS_STAT_N slots of st into o.
void fs_fill_stat(const struct stat *st, double *o);
// The exact-bits slots of a stat (o[FS_STAT_BITS..]).
void fs_fill_bits(double *o, uint64_t ino, uint64_t size, uint64_t blocks, int64_t atime, int64_t mtime, int64_t ctime);
// v as an aligned Float64Array of at least n slots (false, RangeError naming n pending, if it is not).
bool fs_stat_out(napi_env env, napi_value v, const char *fn, size_t n, double **out);
// The mount id of fd (mount_of(fd)), remembered for an fd fe owns until fsClose closes it.
int64_t fs_mount_id_of(fs_env *fe, int fd, int64_t (*mount_of)(int));
// The file-handle record of entry `name` of directory fd (name "": of fd itself) into out
// (FS_FH_RECORD_MAX bytes): its length | -errno (fhandle.c).
int fs_fh_record(int fd, const char *name, uint8_t *out);
// The flags an open for I/O of a regular file uses (fsReopen's, O_NONBLOCK for the open itself).
int fs_io_open_flags(int flags);
// fd (just opened with those flags) checked to be a regular file and made blocking again -> fd |
// -errno (fd closed).
int fs_io_regular(int fd);
// A function whose calls carry fe.
bool fs_set_fn(napi_env env, napi_value obj, const char *name, napi_callback cb, fs_env *fe);

#endif
