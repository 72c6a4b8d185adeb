// AF_UNIX stream sockets and fd passing. Every fd we create is CLOEXEC so a spawned QEMU
// or helper never inherits the back-end's sockets, memfds or eventfds by accident.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdio.h>
#include <unistd.h>

#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

static bool get_sun_path(napi_env env, napi_value v, const char *fn, struct sockaddr_un *addr, char **path) {
  if (!get_string(env, v, fn, "path", 4096, path)) return false;
  size_t n = strlen(*path);
  if (n == 0) {
    free(*path);
    return throw_range(env, "%s: path is empty; give a filesystem path for the socket", fn);
  }
  if (n > SUN_PATH_MAX) {
    throw_range(env, "%s: socket path '%s' is %zu bytes; AF_UNIX allows at most %zu (use a shorter path)", fn,
                *path, n, (size_t)SUN_PATH_MAX);
    free(*path);
    return false;
  }
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  memcpy(addr->sun_path, *path, n);
  return true;
}

static napi_value listen_unix(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, 2, argv, NULL, "listenUnix")) return NULL;
  struct sockaddr_un addr;
  char *path;
  uint64_t backlog;
  if (!get_u64(env, argv[1], "listenUnix", "backlog", &backlog)) return NULL;
  if (backlog > 65535) {
    throw_range(env, "listenUnix: backlog must be in [0, 65535], got %llu", (unsigned long long)backlog);
    return NULL;
  }
  if (!get_sun_path(env, argv[0], "listenUnix", &addr, &path)) return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    throw_errno(env, "socket", errno);
    free(path);
    return NULL;
  }
  const char *sys = NULL;
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) sys = "bind";
  else if (listen(fd, (int)backlog) < 0) sys = "listen";
  if (sys) {
    int err = errno;
    close(fd);
    throw_errno_path(env, sys, err, path);
    free(path);
    return NULL;
  }
  free(path);
  return make_number(env, fd);
}

// connect(2) interrupted by a signal keeps going in the background; retrying it would
// report EALREADY, so wait for writability and read the outcome from SO_ERROR instead.
static int finish_interrupted_connect(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int r;
  do r = poll(&p, 1, -1);
  while (r < 0 && errno == EINTR);
  if (r < 0) return errno;
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) return errno;
  return soerr;
}

// connectUnix(path, noWait?): with noWait a listener whose backlog is full is EAGAIN at once
// (a non-blocking AF_UNIX connect never answers EINPROGRESS), not a wait for it to accept.
static napi_value connect_unix(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, 1, argv, NULL, "connectUnix")) return NULL;
  bool no_wait = false;
  napi_valuetype t2;
  if (napi_typeof(env, argv[1], &t2) == napi_ok && t2 != napi_undefined && !get_bool(env, argv[1], "connectUnix", "noWait", &no_wait)) return NULL;
  struct sockaddr_un addr;
  char *path;
  if (!get_sun_path(env, argv[0], "connectUnix", &addr, &path)) return NULL;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (no_wait ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) {
    throw_errno(env, "socket", errno);
    free(path);
    return NULL;
  }
  int err = 0;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    err = errno;
    if (err == EINTR) err = finish_interrupted_connect(fd);
  }
  const char *sys = "connect";
  if (!err) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
      err = errno;
      sys = "fcntl";
    }
  }
  if (err) {
    close(fd);
    throw_errno_path(env, sys, err, path);
    free(path);
    return NULL;
  }
  free(path);
  return make_number(env, fd);
}

static napi_value accept_conn(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, 1, argv, NULL, "accept")) return NULL;
  if (!get_fd(env, argv[0], "accept", "fd", &fd)) return NULL;
  for (;;) {
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c >= 0) return make_number(env, c);
    // ECONNABORTED: a client gave up while queued; the next one may be waiting behind it.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_number(env, -1);
    return errno_thrown(env, "accept4", errno);
  }
}

static napi_value socket_pair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
    return errno_thrown(env, "socketpair", errno);
  return make_fd_pair(env, sv[0], sv[1]);
}

static napi_value is_listening_unix(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, 1, argv, NULL, "isListeningUnixSocket")) return NULL;
  if (!get_fd(env, argv[0], "isListeningUnixSocket", "fd", &fd)) return NULL;
  int domain = 0, type = 0, acc = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) {
    if (errno == ENOTSOCK) return make_bool(env, false);
    return errno_thrown(env, "getsockopt", errno);
  }
  len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return errno_thrown(env, "getsockopt", errno);
  len = sizeof acc;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0) return errno_thrown(env, "getsockopt", errno);
  return make_bool(env, domain == AF_UNIX && type == SOCK_STREAM && acc != 0);
}

static void close_all(const int *fds, size_t n) {
  for (size_t i = 0; i < n; i++) close(fds[i]);
}

static napi_value recv_msg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  void *buf;
  size_t len;
  uint64_t max_fds;
  if (!get_args(env, info, 3, 3, argv, NULL, "recvMsg")) return NULL;
  if (!get_fd(env, argv[0], "recvMsg", "fd", &fd)) return NULL;
  if (!get_bytes(env, argv[1], "recvMsg", "buf", &buf, &len)) return NULL;
  if (!get_u64(env, argv[2], "recvMsg", "maxFds", &max_fds)) return NULL;
  if (len == 0) {
    // A zero-byte receive returns 0, which would be indistinguishable from EOF.
    throw_range(env, "recvMsg: buf is empty (length 0); pass a buffer of at least 1 byte");
    return NULL;
  }
  if (max_fds > MAX_FDS_PER_MSG) {
    throw_range(env, "recvMsg: maxFds must be in [0, %d], got %llu", MAX_FDS_PER_MSG, (unsigned long long)max_fds);
    return NULL;
  }
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)];
  } ctl;
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = max_fds ? ctl.buf : NULL,
      .msg_controllen = max_fds ? CMSG_SPACE(sizeof(int) * max_fds) : 0,
  };
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      napi_value nul;
      napi_get_null(env, &nul);
      return nul;
    }
    return errno_thrown(env, "recvmsg", errno);
  }

  int fds[MAX_FDS_PER_MSG];
  size_t nfds = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int got;
      memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
      if (nfds < MAX_FDS_PER_MSG) fds[nfds++] = got;
      else close(got);
    }
  }

  // From here a failure must not leak the fds we now own.
  napi_value res, arr;
  if (napi_create_object(env, &res) != napi_ok || napi_create_array_with_length(env, nfds, &arr) != napi_ok) {
    close_all(fds, nfds);
    throw_napi(env, napi_generic_failure, "recvMsg result");
    return NULL;
  }
  for (size_t i = 0; i < nfds; i++) {
    if (napi_set_element(env, arr, (uint32_t)i, make_number(env, fds[i])) != napi_ok) {
      close_all(fds, nfds);
      throw_napi(env, napi_generic_failure, "recvMsg result");
      return NULL;
    }
  }
  if (napi_set_named_property(env, res, "bytes", make_number(env, (double)n)) != napi_ok ||
      napi_set_named_property(env, res, "fds", arr) != napi_ok ||
      napi_set_named_property(env, res, "fdsTruncated", make_bool(env, (msg.msg_flags & MSG_CTRUNC) != 0)) !=
          napi_ok) {
    close_all(fds, nfds);
    throw_napi(env, napi_generic_failure, "recvMsg result");
    return NULL;
  }
  return res;
}

static napi_value send_msg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  void *buf;
  size_t len;
  if (!get_args(env, info, 3, 3, argv, NULL, "sendMsg")) return NULL;
  if (!get_fd(env, argv[0], "sendMsg", "fd", &fd)) return NULL;
  if (!get_bytes(env, argv[1], "sendMsg", "buf", &buf, &len)) return NULL;
  bool is_arr = false;
  uint32_t nfds = 0;
  if (napi_is_array(env, argv[2], &is_arr) != napi_ok || !is_arr) {
    throw_type(env, "sendMsg: fds must be an array of fd numbers");
    return NULL;
  }
  napi_get_array_length(env, argv[2], &nfds);
  if (nfds > MAX_FDS_PER_MSG) {
    throw_range(env, "sendMsg: %u fds in one message; the kernel allows at most %d", nfds, MAX_FDS_PER_MSG);
    return NULL;
  }
  if (nfds > 0 && len == 0) {
    // A stream socket drops ancillary data that has no byte to ride on.
    throw_range(env, "sendMsg: fds need at least one byte of data to travel with; buf is empty");
    return NULL;
  }
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)];
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value e;
      int f;
      char name[24];
      snprintf(name, sizeof name, "fds[%u]", i);
      if (napi_get_element(env, argv[2], i, &e) != napi_ok) return NULL;
      if (!get_fd(env, e, "sendMsg", name, &f)) return NULL;
      memcpy(CMSG_DATA(c) + i * sizeof(int), &f, sizeof f);
    }
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_number(env, -1);
    return errno_thrown(env, "sendmsg", errno);
  }
  return make_number(env, (double)n);
}

bool init_sock(napi_env env, napi_value exports) {
  return set_fn(env, exports, "listenUnix", listen_unix) && set_fn(env, exports, "connectUnix", connect_unix) &&
         set_fn(env, exports, "accept", accept_conn) && set_fn(env, exports, "socketpair", socket_pair) &&
         set_fn(env, exports, "isListeningUnixSocket", is_listening_unix) &&
         set_fn(env, exports, "recvMsg", recv_msg) && set_fn(env, exports, "sendMsg", send_msg);
}

