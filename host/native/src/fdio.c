// Plain fd I/O plus the fd kinds Node cannot create: eventfd, memfd, pipe2 with flags.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static bool fd_and_buf(napi_env env, napi_callback_info info, size_t nargs, const char *fn, napi_value *argv, int *fd,
                       void **buf, size_t *len) {
  if (!get_args(env, info, nargs, nargs, argv, NULL, fn)) return false;
  if (!get_fd(env, argv[0], fn, "fd", fd)) return false;
  return get_bytes(env, argv[1], fn, "buf", buf, len);
}

static napi_value do_read(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  void *buf;
  size_t len;
  if (!fd_and_buf(env, info, 2, "read", argv, &fd, &buf, &len)) return NULL;
  if (len == 0) {
    throw_range(env, "read: buf is empty (length 0); a zero-byte read cannot be told apart from EOF");
    return NULL;
  }
  ssize_t n;
  do n = read(fd, buf, len);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_number(env, -1);
    throw_errno(env, "read", errno);
    return NULL;
  }
  return make_number(env, (double)n);
}

static napi_value do_write(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  void *buf;
  size_t len;
  if (!fd_and_buf(env, info, 2, "write", argv, &fd, &buf, &len)) return NULL;
  ssize_t n;
  do n = write(fd, buf, len);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_number(env, -1);
    throw_errno(env, "write", errno);
    return NULL;
  }
  return make_number(env, (double)n);
}

static napi_value do_pread(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  void *buf;
  size_t len;
  uint64_t off;
  if (!fd_and_buf(env, info, 3, "pread", argv, &fd, &buf, &len)) return NULL;
  if (!get_u64(env, argv[2], "pread", "offset", &off)) return NULL;
  ssize_t n;
  do n = pread(fd, buf, len, (off_t)off);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    throw_errno(env, "pread", errno);
    return NULL;
  }
  return make_number(env, (double)n);
}

static napi_value do_pwrite(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  void *buf;
  size_t len;
  uint64_t off;
  if (!fd_and_buf(env, info, 3, "pwrite", argv, &fd, &buf, &len)) return NULL;
  if (!get_u64(env, argv[2], "pwrite", "offset", &off)) return NULL;
  ssize_t n;
  do n = pwrite(fd, buf, len, (off_t)off);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    throw_errno(env, "pwrite", errno);
    return NULL;
  }
  return make_number(env, (double)n);
}

static bool one_fd(napi_env env, napi_callback_info info, const char *fn, int *fd) {
  napi_value argv[1];
  if (!get_args(env, info, 1, 1, argv, NULL, fn)) return false;
  return get_fd(env, argv[0], fn, "fd", fd);
}

static napi_value do_close(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "close", &fd)) return NULL;
  // Linux releases the fd even when close reports EINTR; retrying could close a reused number.
  if (close(fd) < 0 && errno != EINTR) {
    throw_errno(env, "close", errno);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value do_dup(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "dup", &fd)) return NULL;
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) {
    throw_errno(env, "dup", errno);
    return NULL;
  }
  return make_number(env, d);
}

static napi_value set_nonblocking(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  bool on;
  if (!get_args(env, info, 2, 2, argv, NULL, "setNonBlocking")) return NULL;
  if (!get_fd(env, argv[0], "setNonBlocking", "fd", &fd)) return NULL;
  if (!get_bool(env, argv[1], "setNonBlocking", "on", &on)) return NULL;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)) < 0) {
    throw_errno(env, "fcntl", errno);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value do_fstat(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "fstat", &fd)) return NULL;
  struct stat st;
  if (fstat(fd, &st) < 0) {
    throw_errno(env, "fstat", errno);
    return NULL;
  }
  napi_value o;
  if (napi_create_object(env, &o) != napi_ok) return NULL;
  napi_set_named_property(env, o, "size", make_number(env, (double)st.st_size));
  napi_set_named_property(env, o, "isFile", make_bool(env, S_ISREG(st.st_mode)));
  napi_set_named_property(env, o, "isFifo", make_bool(env, S_ISFIFO(st.st_mode)));
  napi_set_named_property(env, o, "isSocket", make_bool(env, S_ISSOCK(st.st_mode)));
  return o;
}

static napi_value do_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t init;
  if (!get_args(env, info, 1, 1, argv, NULL, "eventfd")) return NULL;
  if (!get_u64(env, argv[0], "eventfd", "initval", &init)) return NULL;
  if (init > UINT32_MAX) {
    throw_range(env, "eventfd: initval must be in [0, 4294967295], got %llu", (unsigned long long)init);
    return NULL;
  }
  int fd = eventfd((unsigned)init, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    throw_errno(env, "eventfd", errno);
    return NULL;
  }
  return make_number(env, fd);
}

static napi_value eventfd_rd(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "eventfdRead", &fd)) return NULL;
  uint64_t v;
  ssize_t n;
  do n = read(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_number(env, -1);
    throw_errno(env, "eventfdRead", errno);
    return NULL;
  }
  if (n != sizeof v) {
    throw_plain(env, "ERR_NOT_EVENTFD", "eventfdRead: fd %d returned %zd bytes instead of 8; is it an eventfd?", fd, n);
    return NULL;
  }
  // A counter beyond 2^53 loses precision; only a runaway writer gets there.
  return make_number(env, (double)v);
}

static napi_value eventfd_wr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint64_t v = 1;
  if (!get_args(env, info, 2, 1, argv, NULL, "eventfdWrite")) return NULL;
  if (!get_fd(env, argv[0], "eventfdWrite", "fd", &fd)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_undefined && !get_u64(env, argv[1], "eventfdWrite", "n", &v)) return NULL;
  ssize_t n;
  do n = write(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    throw_errno(env, "eventfdWrite", errno);
    return NULL;
  }
  if (n != sizeof v) {
    throw_plain(env, "ERR_NOT_EVENTFD", "eventfdWrite: fd %d took %zd bytes instead of 8; is it an eventfd?", fd, n);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value memfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char *name;
  bool sealing;
  if (!get_args(env, info, 2, 2, argv, NULL, "memfdCreate")) return NULL;
  if (!get_bool(env, argv[1], "memfdCreate", "allowSealing", &sealing)) return NULL;
  // The kernel limit: NAME_MAX minus the "memfd:" prefix it adds.
  if (!get_string(env, argv[0], "memfdCreate", "name", 249, &name)) return NULL;
  int fd = memfd_create(name, MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0));
  int err = errno;
  if (fd < 0) {
    throw_errno_path(env, "memfd_create", err, name);
    free(name);
    return NULL;
  }
  free(name);
  return make_number(env, fd);
}

static napi_value do_ftruncate(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  uint64_t size;
  if (!get_args(env, info, 2, 2, argv, NULL, "ftruncate")) return NULL;
  if (!get_fd(env, argv[0], "ftruncate", "fd", &fd)) return NULL;
  if (!get_u64(env, argv[1], "ftruncate", "size", &size)) return NULL;
  int r;
  do r = ftruncate(fd, (off_t)size);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    throw_errno(env, "ftruncate", errno);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value do_pipe2(napi_env env, napi_callback_info info) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
    throw_errno(env, "pipe2", errno);
    return NULL;
  }
  return make_fd_pair(env, p[0], p[1]);
}

bool init_fdio(napi_env env, napi_value exports) {
  return set_fn(env, exports, "read", do_read) && set_fn(env, exports, "write", do_write) &&
         set_fn(env, exports, "pread", do_pread) && set_fn(env, exports, "pwrite", do_pwrite) &&
         set_fn(env, exports, "close", do_close) && set_fn(env, exports, "dup", do_dup) &&
         set_fn(env, exports, "setNonBlocking", set_nonblocking) && set_fn(env, exports, "fstat", do_fstat) &&
         set_fn(env, exports, "eventfd", do_eventfd) && set_fn(env, exports, "eventfdRead", eventfd_rd) &&
         set_fn(env, exports, "eventfdWrite", eventfd_wr) && set_fn(env, exports, "memfdCreate", memfd) &&
         set_fn(env, exports, "ftruncate", do_ftruncate) && set_fn(env, exports, "pipe2", do_pipe2);
}
