// TAP interfaces for the switch's TAP ports (host/net/tap.ts): /dev/net/tun opened with
// IFF_TAP | IFF_NO_PI, so each read(2) is one Ethernet frame and each write(2) sends one.
// The interface is created in the network namespace of the calling thread (or an existing
// persistent one is attached); it needs CAP_NET_ADMIN unless the interface was made
// persistent for this user.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

// tapOpen(name) -> fd (O_NONBLOCK, O_CLOEXEC)
static napi_value tap_open(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, 1, argv, NULL, "tapOpen")) return NULL;
  char *name;
  if (!get_string(env, argv[0], "tapOpen", "name", IFNAMSIZ - 1, &name)) return NULL;
  if (name[0] == '\0') {
    free(name);
    throw_range(env, "tapOpen: name is empty");
    return NULL;
  }
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    free(name);
    return errno_thrown(env, "open", e);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  free(name);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    return errno_thrown(env, "ioctl(TUNSETIFF)", e);
  }
  return make_number(env, fd);
}

bool init_tap(napi_env env, napi_value exports) { return set_fn(env, exports, "tapOpen", tap_open); }
