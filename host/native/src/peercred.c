// Who is at the other end of a Unix socket: SO_PEERCRED gives the credentials the peer had
// when it connected (the kernel's record, which the peer cannot forge). The daemon's
// management socket admits only its own uid with it (host/daemon/control-server.ts).
#include "common.h"

#include <errno.h>
#include <sys/socket.h>

static bool set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value n;
  napi_status st = napi_create_double(env, v, &n);
  if (st == napi_ok) st = napi_set_named_property(env, obj, key, n);
  return st == napi_ok || throw_napi(env, st, key);
}

// peerCred(fd) -> {pid, uid, gid}
static napi_value peer_cred(napi_env env, napi_callback_info info) {
  int fd;
  if (!one_fd(env, info, "peerCred", &fd)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return errno_thrown(env, "getsockopt", errno);
  if (len != sizeof cred) return errno_thrown(env, "getsockopt", EPROTO);
  napi_value o;
  napi_status st = napi_create_object(env, &o);
  if (st != napi_ok) {
    throw_napi(env, st, "peerCred");
    return NULL;
  }
  if (!set_num(env, o, "pid", (double)cred.pid) || !set_num(env, o, "uid", (double)cred.uid) || !set_num(env, o, "gid", (double)cred.gid))
    return NULL;
  return o;
}

bool init_peercred(napi_env env, napi_value exports) { return set_fn(env, exports, "peerCred", peer_cred); }
