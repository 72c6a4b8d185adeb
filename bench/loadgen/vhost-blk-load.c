// vhost-blk-load: a vhost-user-blk front-end load generator in C.
//
// It plays the part QEMU plays: connects to a back-end's Unix socket, negotiates features,
// shares a memfd it owns as "guest memory" (SCM_RIGHTS), sets up N split virtqueues in it with
// kick/call eventfds, and keeps `--depth` virtio-blk requests in flight per queue, one thread per
// queue. Completions are found by busy-polling the used ring (default) or by blocking on the call
// eventfd (--mode event). It exists because a TypeScript front-end tops out near 300k requests/s
// and so cannot show a back-end faster than itself; this one costs well under 1 us per request.
//
// Build: bench/loadgen/build.sh (or `node build.mjs --only loadgen`). Usage: --help.
// Output: a human summary on stderr, and one JSON object on stdout (last line) for scripts.
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LAT_BUCKETS (61u * 32u)

// ---- vhost-user wire protocol (docs: QEMU's vhost-user.rst) ----
enum {
  VU_GET_FEATURES = 1,
  VU_SET_FEATURES = 2,
  VU_SET_OWNER = 3,
  VU_SET_MEM_TABLE = 5,
  VU_SET_VRING_NUM = 8,
  VU_SET_VRING_ADDR = 9,
  VU_SET_VRING_BASE = 10,
  VU_SET_VRING_KICK = 12,
  VU_SET_VRING_CALL = 13,
  VU_GET_PROTOCOL_FEATURES = 15,
  VU_SET_PROTOCOL_FEATURES = 16,
  VU_GET_QUEUE_NUM = 17,
  VU_SET_VRING_ENABLE = 18,
  VU_GET_CONFIG = 24,
};
#define VU_VERSION 0x1u
#define VU_REPLY 0x4u
#define VU_NEED_REPLY 0x8u
#define VU_VRING_NOFD (1ull << 8)

#define F_INDIRECT_DESC 28
#define F_EVENT_IDX 29
#define F_PROTOCOL_FEATURES 30
#define F_VERSION_1 32
#define BLK_F_MQ 12

#define PF_MQ 0
#define PF_REPLY_ACK 3
#define PF_CONFIG 9

struct vu_hdr {
  uint32_t request, flags, size;
} __attribute__((packed));

struct vu_region {
  uint64_t guest_addr, size, user_addr, mmap_offset;
};

struct vu_vring_addr {
  uint32_t index, flags;
  uint64_t desc, used, avail, log;
};

// ---- split virtqueue layout (virtio 1.x, 2.6) ----
struct vring_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_used_elem {
  uint32_t id, len;
};

// ---- virtio-blk requests ----
struct blk_hdr {
  uint32_t type, reserved;
  uint64_t sector;
};
#define BLK_T_IN 0
#define BLK_T_OUT 1

// ---- options ----
struct opts {
  const char *socket;
  unsigned depth, bs, queues, ring;
  bool write, random, poll, event_idx, verify;
  double seconds, warmup;
  uint64_t size; // bytes of the device the requests range over (0: capacity from GET_CONFIG)
  uint64_t mem; // extra bytes of guest memory beyond what the queues need (to mimic a bigger guest)
};

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("vhost-blk-load: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---- the control connection ----
struct conn {
  int fd;
  bool reply_ack;
};

static void xwrite_msg(int sock, uint32_t req, uint32_t flags, const void *payload, uint32_t size, const int *fds,
                       int nfds) {
  struct vu_hdr h = {req, VU_VERSION | flags, size};
  struct iovec iov[2] = {{&h, sizeof h}, {(void *)payload, size}};
  char cbuf[CMSG_SPACE(8 * sizeof(int))];
  struct msghdr m = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};
  if (nfds > 0) {
    memset(cbuf, 0, sizeof cbuf);
    m.msg_control = cbuf;
    m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  ssize_t n;
  do n = sendmsg(sock, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t)(sizeof h + size)) die("sending request %u failed: %s", req, n < 0 ? strerror(errno) : "short write");
}

static void xread_full(int sock, void *buf, size_t len, uint32_t req) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(sock, (char *)buf + got, len - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("reading the reply to request %u: %s", req, n < 0 ? strerror(errno) : "back-end closed the connection");
    got += (size_t)n;
  }
}

// Reads a reply to `req` whose payload is exactly `size` bytes (or at most `size` when `exact` is false).
static uint32_t read_reply(struct conn *c, uint32_t req, void *payload, uint32_t size, bool exact) {
  struct vu_hdr h;
  xread_full(c->fd, &h, sizeof h, req);
  if (h.request != req || !(h.flags & VU_REPLY))
    die("expected a reply to request %u, got request %u flags 0x%x", req, h.request, h.flags);
  if (h.size > size || (exact && h.size != size)) die("reply to request %u has %u bytes, expected %u", req, h.size, size);
  xread_full(c->fd, payload, h.size, req);
  return h.size;
}

// A request without a reply of its own; with REPLY_ACK negotiated, ask for an ack so a refusal is
// reported here, at the message the back-end refused, instead of as a hang later.
static void send_msg(struct conn *c, uint32_t req, const void *payload, uint32_t size, const int *fds, int nfds) {
  xwrite_msg(c->fd, req, c->reply_ack ? VU_NEED_REPLY : 0, payload, size, fds, nfds);
  if (c->reply_ack) {
    uint64_t status;
    read_reply(c, req, &status, sizeof status, true);
    if (status != 0) die("the back-end refused request %u (status %" PRIu64 ")", req, status);
  }
}

static uint64_t get_u64(struct conn *c, uint32_t req) {
  uint64_t v;
  xwrite_msg(c->fd, req, 0, NULL, 0, NULL, 0);
  read_reply(c, req, &v, sizeof v, true);
  return v;
}

static void set_u64(struct conn *c, uint32_t req, uint64_t v) { send_msg(c, req, &v, sizeof v, NULL, 0); }

// ---- one virtqueue and its load ----
struct slot {
  struct blk_hdr *hdr;
  volatile uint8_t *status;
  uint8_t *buf;
  uint64_t issued_ns;
};

struct queue {
  unsigned index, num, depth;
  struct vring_desc *desc;
  volatile uint16_t *avail_flags, *avail_idx, *avail_ring, *used_event;
  volatile uint16_t *used_flags, *used_idx, *avail_event;
  volatile struct vring_used_elem *used_ring;
  uint16_t avail_shadow, last_used, kicked_at;
  int kick_fd, call_fd;
  struct slot *slots;
  uint64_t rng;
  uint64_t seq_next; // next sequential byte offset
  struct run *run;
  // results
  uint64_t ios, bytes, errors, kicks, waits, lat_sum_ns, lat_max_ns, verify_failures;
  uint64_t lat_hist[LAT_BUCKETS];
  pthread_t thread;
};

struct run {
  const struct opts *o;
  uint64_t span;    // bytes the offsets range over
  double t_start, t_measure, t_end;
  atomic_bool stop;
  atomic_bool stalled; // a queue gave up waiting for its last requests
};

// Latency percentiles: a log-linear histogram, 32 sub-buckets per power of two (~3% wide), so
// p50/p99/p99.9 come out without keeping every sample.
static inline unsigned lat_bucket(uint64_t ns) {
  if (ns < 32) return (unsigned)ns;
  unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
  return (msb - 4u) * 32u + (unsigned)((ns >> (msb - 5u)) & 31u);
}

// The lowest latency a bucket holds (inverse of lat_bucket).
static uint64_t lat_bucket_floor(unsigned b) {
  if (b < 32) return b;
  unsigned msb = b / 32u + 4u;
  return (32ull + (b % 32u)) << (msb - 5u);
}

static double lat_percentile_us(const uint64_t *hist, uint64_t total, double p) {
  if (total == 0) return 0;
  uint64_t want = (uint64_t)(p * (double)total), seen = 0;
  if (want >= total) want = total - 1;
  for (unsigned b = 0; b < LAT_BUCKETS; b++) {
    seen += hist[b];
    if (seen > want) return (double)lat_bucket_floor(b) / 1e3;
  }
  return 0;
}

static inline uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static inline uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// virtio 1.x 2.7.10: does moving the index from old to new pass the other side's event index?
static inline bool need_event(uint16_t event, uint16_t new_idx, uint16_t old) {
  return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

#define POISON 0xdeadbeefdeadbeefull
static inline uint64_t stamp(uint64_t off) { return off ^ 0x5eed5eed00000000ull; }

static inline void prepare(struct queue *q, const struct run *r, unsigned s) {
  const struct opts *o = r->o;
  uint64_t off;
  if (o->random) {
    off = (xorshift(&q->rng) % (r->span / o->bs)) * o->bs;
  } else {
    off = q->seq_next;
    q->seq_next += o->bs;
    if (q->seq_next + o->bs > r->span) q->seq_next = 0;
  }
  q->slots[s].hdr->sector = off >> 9;
  *q->slots[s].status = 0xff;
  if (o->verify) {
    // --verify: a write stamps its first and last 8 bytes with its own offset; a read poisons
    // them, so a read that returns neither the stamp nor zeros (never written) is caught.
    uint64_t v = o->write ? stamp(off) : POISON;
    memcpy(q->slots[s].buf, &v, 8);
    memcpy(q->slots[s].buf + o->bs - 8, &v, 8);
  }
}

static inline bool verified(const struct opts *o, const struct slot *sl) {
  uint64_t a, b, want = stamp(sl->hdr->sector << 9);
  memcpy(&a, sl->buf, 8);
  memcpy(&b, sl->buf + o->bs - 8, 8);
  return (a == want && b == want) || (a == 0 && b == 0);
}

static inline void publish(struct queue *q, bool event_idx, bool measuring) {
  atomic_thread_fence(memory_order_release);
  uint16_t old = q->kicked_at;
  *q->avail_idx = q->avail_shadow;
  // The back-end's suppression state must be read after the index is visible (a full barrier):
  // otherwise both sides may decide the other will look, and the queue stalls.
  atomic_thread_fence(memory_order_seq_cst);
  bool kick = event_idx ? need_event(*q->avail_event, q->avail_shadow, old) : !(*q->used_flags & VRING_USED_F_NO_NOTIFY);
  q->kicked_at = q->avail_shadow;
  if (kick) {
    uint64_t one = 1;
    if (write(q->kick_fd, &one, sizeof one) != sizeof one) die("kick on queue %u: %s", q->index, strerror(errno));
    if (measuring) q->kicks++;
  }
}

static void *queue_thread(void *arg) {
  struct queue *q = arg;
  struct run *r = q->run;
  const struct opts *o = r->o;
  const bool ev = o->event_idx;
  uint64_t t_measure_ns = (uint64_t)(r->t_measure * 1e9), t_end_ns = (uint64_t)(r->t_end * 1e9);

  // Poll mode asks for no interrupts; event mode asks for one per batch (below).
  if (o->poll) {
    if (ev) *q->used_event = (uint16_t)(q->last_used + 0x8000);
    else *q->avail_flags = VRING_AVAIL_F_NO_INTERRUPT;
  }
  uint64_t t0 = mono_ns();
  for (unsigned s = 0; s < q->depth; s++) {
    prepare(q, r, s);
    q->slots[s].issued_ns = t0;
    q->avail_ring[q->avail_shadow++ % q->num] = (uint16_t)(s * 3);
  }
  publish(q, ev, false);

  unsigned inflight = q->depth;
  bool stopping = false;
  uint64_t now = t0;
  unsigned idle = 0;
  while (inflight > 0) {
    uint16_t used = *q->used_idx;
    atomic_thread_fence(memory_order_acquire);
    if (used == q->last_used) {
      if ((++idle & 255) == 0 || !o->poll) {
        now = mono_ns();
        if (now >= t_end_ns || atomic_load_explicit(&r->stop, memory_order_relaxed)) stopping = true;
        if (now >= t_end_ns + 5000000000ull) {
          // The ring as both sides left it: which side was waiting for which notification.
          fprintf(stderr,
                  "vhost-blk-load: queue %u: %u requests did not complete within 5 s of the end (avail idx %u, "
                  "used idx %u, last used %u, last kick at avail %u, avail_event %u, used_event %u, avail flags 0x%x, "
                  "used flags 0x%x)\n",
                  q->index, inflight, *q->avail_idx, *q->used_idx, q->last_used, q->kicked_at, *q->avail_event,
                  *q->used_event, *q->avail_flags, *q->used_flags);
          atomic_store(&r->stalled, true);
          break;
        }
      }
      if (!o->poll) {
        // Ask for a call at the next completion, then look again before sleeping (the back-end
        // may have completed one between our look and the request).
        if (ev) *q->used_event = q->last_used;
        else *q->avail_flags = 0;
        atomic_thread_fence(memory_order_seq_cst);
        if (*q->used_idx == q->last_used) {
          struct pollfd pfd = {q->call_fd, POLLIN, 0};
          int n = poll(&pfd, 1, 100);
          if (n < 0 && errno != EINTR) die("waiting on the call eventfd of queue %u: %s", q->index, strerror(errno));
          uint64_t v;
          if (n > 0 && read(q->call_fd, &v, sizeof v) < 0 && errno != EAGAIN)
            die("reading the call eventfd of queue %u: %s", q->index, strerror(errno));
          q->waits++;
        }
        if (!ev) *q->avail_flags = VRING_AVAIL_F_NO_INTERRUPT;
      }
      continue;
    }
    idle = 0;
    now = mono_ns();
    if (!stopping && (now >= t_end_ns || atomic_load_explicit(&r->stop, memory_order_relaxed))) stopping = true;
    bool measuring = now >= t_measure_ns && now < t_end_ns;
    while (q->last_used != used) {
      volatile struct vring_used_elem *e = &q->used_ring[q->last_used % q->num];
      uint32_t id = e->id;
      q->last_used++;
      unsigned s = id / 3;
      if (id % 3 != 0 || s >= q->depth) die("queue %u: the back-end returned descriptor %u, which is not a request head", q->index, id);
      if (measuring) {
        if (*q->slots[s].status != 0) q->errors++;
        else if (o->verify && !o->write && !verified(o, &q->slots[s])) q->verify_failures++;
        q->ios++;
        q->bytes += o->bs;
        uint64_t lat = now - q->slots[s].issued_ns;
        q->lat_sum_ns += lat;
        if (lat > q->lat_max_ns) q->lat_max_ns = lat;
        q->lat_hist[lat_bucket(lat)]++;
      }
      if (stopping) {
        inflight--;
        continue;
      }
      prepare(q, r, s);
      q->slots[s].issued_ns = now;
      q->avail_ring[q->avail_shadow++ % q->num] = (uint16_t)id;
    }
    if (ev && o->poll) *q->used_event = (uint16_t)(q->last_used + 0x8000);
    if (!stopping) publish(q, ev, measuring);
  }
  return NULL;
}

static uint64_t parse_size(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s) die("%s: not a size: '%s'", what, s);
  switch (*end) {
  case 'k': case 'K': v <<= 10; end++; break;
  case 'm': case 'M': v <<= 20; end++; break;
  case 'g': case 'G': v <<= 30; end++; break;
  }
  if (*end) die("%s: not a size: '%s' (use a number with an optional K, M or G suffix)", what, s);
  return v;
}

static void usage(FILE *f) {
  fputs("usage: vhost-blk-load --socket PATH [options]\n"
        "  -s, --socket PATH    the back-end's vhost-user-blk Unix socket (required)\n"
        "  -d, --depth N        requests in flight per queue (default 64)\n"
        "  -b, --bs SIZE        bytes per request, a multiple of 512 (default 4K)\n"
        "  -w, --rw MODE        randread | randwrite | read | write (default randread)\n"
        "  -q, --queues N       virtqueues, one thread each (default 1)\n"
        "  -r, --ring N         descriptors per ring, a power of two >= 3*depth (default: smallest fit, >= 256)\n"
        "  -t, --seconds S      measured seconds (default 5)\n"
        "      --warmup S       seconds run before measuring (default 1)\n"
        "  -m, --mode MODE      poll (busy-poll the used ring; default) | event (block on the call eventfd)\n"
        "      --no-event-idx   do not negotiate VIRTIO_RING_F_EVENT_IDX even if offered\n"
        "      --size SIZE      bytes of the device to range over (default: its capacity, from GET_CONFIG)\n"
        "      --mem SIZE       extra guest memory to share beyond the rings and buffers (default 0)\n"
        "      --verify         writes stamp each request with its offset; reads check the stamp (or zeros);\n"
        "                       a mismatch counts as a verify failure (exit status 5). Use the same --bs.\n"
        "Prints a summary on stderr and one JSON line on stdout.\n",
        f);
}

int main(int argc, char **argv) {
  struct opts o = {.depth = 64, .bs = 4096, .queues = 1, .random = true, .poll = true, .event_idx = true,
                   .seconds = 5, .warmup = 1};
  const char *rw = "randread";
  static const struct option lo[] = {
      {"socket", 1, 0, 's'}, {"depth", 1, 0, 'd'}, {"bs", 1, 0, 'b'}, {"rw", 1, 0, 'w'},
      {"queues", 1, 0, 'q'}, {"ring", 1, 0, 'r'}, {"seconds", 1, 0, 't'}, {"warmup", 1, 0, 'W'},
      {"mode", 1, 0, 'm'}, {"no-event-idx", 0, 0, 'E'}, {"size", 1, 0, 'S'}, {"mem", 1, 0, 'M'},
      {"verify", 0, 0, 'V'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "s:d:b:w:q:r:t:m:h", lo, NULL)) != -1) {
    switch (c) {
    case 's': o.socket = optarg; break;
    case 'd': o.depth = (unsigned)parse_size(optarg, "--depth"); break;
    case 'b': o.bs = (unsigned)parse_size(optarg, "--bs"); break;
    case 'w': rw = optarg; break;
    case 'q': o.queues = (unsigned)parse_size(optarg, "--queues"); break;
    case 'r': o.ring = (unsigned)parse_size(optarg, "--ring"); break;
    case 't': o.seconds = atof(optarg); break;
    case 'W': o.warmup = atof(optarg); break;
    case 'm':
      if (!strcmp(optarg, "poll")) o.poll = true;
      else if (!strcmp(optarg, "event")) o.poll = false;
      else die("--mode: '%s' is not poll or event", optarg);
      break;
    case 'E': o.event_idx = false; break;
    case 'S': o.size = parse_size(optarg, "--size"); break;
    case 'M': o.mem = parse_size(optarg, "--mem"); break;
    case 'V': o.verify = true; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc) die("unexpected argument '%s' (see --help)", argv[optind]);
  if (!o.socket) die("--socket PATH is required (see --help)");
  if (!strcmp(rw, "randread")) o.write = false, o.random = true;
  else if (!strcmp(rw, "randwrite")) o.write = true, o.random = true;
  else if (!strcmp(rw, "read")) o.write = false, o.random = false;
  else if (!strcmp(rw, "write")) o.write = true, o.random = false;
  else die("--rw: '%s' is not randread, randwrite, read or write", rw);
  if (o.depth < 1 || o.depth > 1024) die("--depth must be 1..1024, not %u", o.depth);
  if (o.bs < 512 || o.bs % 512 || o.bs > (64u << 20)) die("--bs must be a multiple of 512 up to 64M, not %u", o.bs);
  if (o.queues < 1 || o.queues > 64) die("--queues must be 1..64, not %u", o.queues);
  if (!(o.seconds > 0) || !(o.warmup >= 0)) die("--seconds must be > 0 and --warmup >= 0");
  if (o.ring == 0) {
    o.ring = 256;
    while (o.ring < 3 * o.depth) o.ring <<= 1;
  }
  if (o.ring & (o.ring - 1) || o.ring > 32768) die("--ring must be a power of two up to 32768, not %u", o.ring);
  if (o.ring < 3 * o.depth) die("--ring %u is too small for --depth %u (3 descriptors per request)", o.ring, o.depth);

  // ---- connect ----
  struct conn cn = {0};
  cn.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (cn.fd < 0) die("socket: %s", strerror(errno));
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(o.socket) >= sizeof sa.sun_path) die("--socket path is too long");
  strcpy(sa.sun_path, o.socket);
  if (connect(cn.fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect %s: %s", o.socket, strerror(errno));

  // ---- negotiate ----
  uint64_t offered = get_u64(&cn, VU_GET_FEATURES);
  if (!(offered & (1ull << F_VERSION_1))) die("the back-end does not offer VIRTIO_F_VERSION_1 (features 0x%" PRIx64 ")", offered);
  uint64_t features = 1ull << F_VERSION_1;
  bool event_idx = o.event_idx && (offered & (1ull << F_EVENT_IDX));
  if (event_idx) features |= 1ull << F_EVENT_IDX;
  o.event_idx = event_idx;
  if (o.queues > 1 && (offered & (1ull << BLK_F_MQ))) features |= 1ull << BLK_F_MQ;
  bool proto = offered & (1ull << F_PROTOCOL_FEATURES);
  uint64_t pf = 0;
  if (proto) {
    features |= 1ull << F_PROTOCOL_FEATURES;
    uint64_t poff = get_u64(&cn, VU_GET_PROTOCOL_FEATURES);
    pf = poff & ((1ull << PF_MQ) | (1ull << PF_REPLY_ACK) | (1ull << PF_CONFIG));
    set_u64(&cn, VU_SET_PROTOCOL_FEATURES, pf);
    cn.reply_ack = pf & (1ull << PF_REPLY_ACK);
  }
  if (o.queues > 1) {
    if (!(pf & (1ull << PF_MQ))) die("--queues %u: the back-end does not offer multiple queues (PROTOCOL_F_MQ)", o.queues);
    uint64_t max = get_u64(&cn, VU_GET_QUEUE_NUM);
    if (o.queues > max) die("--queues %u: the back-end supports at most %" PRIu64, o.queues, max);
  }
  send_msg(&cn, VU_SET_OWNER, NULL, 0, NULL, 0);
  set_u64(&cn, VU_SET_FEATURES, features);

  uint64_t capacity = 0;
  if (pf & (1ull << PF_CONFIG)) {
    struct {
      uint32_t offset, size, flags;
      uint8_t data[8];
    } __attribute__((packed)) cfg = {0, 8, 0, {0}};
    xwrite_msg(cn.fd, VU_GET_CONFIG, 0, &cfg, sizeof cfg, NULL, 0);
    read_reply(&cn, VU_GET_CONFIG, &cfg, sizeof cfg, true);
    uint64_t sectors;
    memcpy(&sectors, cfg.data, 8);
    capacity = sectors * 512;
  }
  uint64_t span = o.size ? o.size : capacity;
  if (!span) die("the device's capacity is unknown (no PROTOCOL_F_CONFIG): pass --size");
  if (capacity && span > capacity) die("--size %" PRIu64 " exceeds the device's capacity %" PRIu64, span, capacity);
  if (span < o.bs) die("the device (%" PRIu64 " bytes) is smaller than one request (%u)", span, o.bs);

  // ---- guest memory: rings, then per-request header+status, then data buffers ----
  size_t ring_bytes = ((16ull * o.ring + 4095) & ~4095ull) + ((6 + 2ull * o.ring + 4095) & ~4095ull) +
                      ((6 + 8ull * o.ring + 4095) & ~4095ull);
  size_t meta_bytes = ((size_t)o.depth * 32 + 4095) & ~(size_t)4095;
  size_t data_bytes = (((size_t)o.depth * o.bs) + 4095) & ~(size_t)4095;
  size_t per_queue = ring_bytes + meta_bytes + data_bytes;
  size_t mem_size = per_queue * o.queues + ((o.mem + 4095) & ~4095ull);
  int memfd = memfd_create("vhost-blk-load", MFD_CLOEXEC);
  if (memfd < 0) die("memfd_create: %s", strerror(errno));
  if (ftruncate(memfd, (off_t)mem_size) < 0) die("ftruncate memfd to %zu: %s", mem_size, strerror(errno));
  uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, memfd, 0);
  if (mem == MAP_FAILED) die("mmap %zu bytes: %s", mem_size, strerror(errno));
  struct {
    uint32_t n, pad;
    struct vu_region r;
  } mt = {1, 0, {0, mem_size, (uint64_t)(uintptr_t)mem, 0}};
  send_msg(&cn, VU_SET_MEM_TABLE, &mt, sizeof mt, &memfd, 1);

  struct run run = {.o = &o, .span = span};
  struct queue *qs = calloc(o.queues, sizeof *qs);
  if (!qs) die("out of memory");
  for (unsigned i = 0; i < o.queues; i++) {
    struct queue *q = &qs[i];
    uint8_t *base = mem + per_queue * i;
    q->index = i;
    q->num = o.ring;
    q->depth = o.depth;
    q->desc = (struct vring_desc *)base;
    uint8_t *avail = base + ((16ull * o.ring + 4095) & ~4095ull);
    uint8_t *used = avail + ((6 + 2ull * o.ring + 4095) & ~4095ull);
    q->avail_flags = (uint16_t *)avail;
    q->avail_idx = (uint16_t *)(avail + 2);
    q->avail_ring = (uint16_t *)(avail + 4);
    q->used_event = (uint16_t *)(avail + 4 + 2 * o.ring);
    q->used_flags = (uint16_t *)used;
    q->used_idx = (uint16_t *)(used + 2);
    q->used_ring = (struct vring_used_elem *)(used + 4);
    q->avail_event = (uint16_t *)(used + 4 + 8 * o.ring);
    uint8_t *meta = base + ring_bytes, *data = meta + meta_bytes;
    q->slots = calloc(o.depth, sizeof *q->slots);
    if (!q->slots) die("out of memory");
    q->run = &run;
    q->rng = 0x9e3779b97f4a7c15ull * (i + 1);
    q->seq_next = (span / o.queues / o.bs) * o.bs * i;
    for (unsigned s = 0; s < o.depth; s++) {
      struct blk_hdr *h = (struct blk_hdr *)(meta + 32 * s);
      uint8_t *st = meta + 32 * s + 16;
      uint8_t *buf = data + (size_t)o.bs * s;
      h->type = o.write ? BLK_T_OUT : BLK_T_IN;
      if (o.write) memset(buf, 0x5a ^ (int)s, o.bs);
      q->slots[s].hdr = h;
      q->slots[s].status = st;
      q->slots[s].buf = buf;
      struct vring_desc *d = &q->desc[3 * s];
      d[0] = (struct vring_desc){(uint64_t)((uint8_t *)h - mem), 16, VRING_DESC_F_NEXT, (uint16_t)(3 * s + 1)};
      d[1] = (struct vring_desc){(uint64_t)(buf - mem), o.bs,
                                 (uint16_t)(VRING_DESC_F_NEXT | (o.write ? 0 : VRING_DESC_F_WRITE)), (uint16_t)(3 * s + 2)};
      d[2] = (struct vring_desc){(uint64_t)(st - mem), 1, VRING_DESC_F_WRITE, 0};
    }
    q->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    q->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->kick_fd < 0 || q->call_fd < 0) die("eventfd: %s", strerror(errno));

    struct {
      uint32_t index, num;
    } st = {i, o.ring};
    send_msg(&cn, VU_SET_VRING_NUM, &st, sizeof st, NULL, 0);
    st.num = 0;
    send_msg(&cn, VU_SET_VRING_BASE, &st, sizeof st, NULL, 0);
    struct vu_vring_addr va = {i, 0, (uint64_t)(uintptr_t)q->desc, (uint64_t)(uintptr_t)used,
                               (uint64_t)(uintptr_t)avail, 0};
    send_msg(&cn, VU_SET_VRING_ADDR, &va, sizeof va, NULL, 0);
    uint64_t idx = i;
    send_msg(&cn, VU_SET_VRING_CALL, &idx, sizeof idx, &q->call_fd, 1);
    send_msg(&cn, VU_SET_VRING_KICK, &idx, sizeof idx, &q->kick_fd, 1);
    if (proto) {
      st.num = 1;
      send_msg(&cn, VU_SET_VRING_ENABLE, &st, sizeof st, NULL, 0);
    }
  }
  // A request with a reply: everything above has been handled once it arrives.
  (void)get_u64(&cn, VU_GET_FEATURES);

  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  run.t_start = now_s();
  run.t_measure = run.t_start + o.warmup;
  run.t_end = run.t_measure + o.seconds;
  for (unsigned i = 0; i < o.queues; i++)
    if (pthread_create(&qs[i].thread, NULL, queue_thread, &qs[i])) die("pthread_create failed");
  for (unsigned i = 0; i < o.queues; i++) pthread_join(qs[i].thread, NULL);
  getrusage(RUSAGE_SELF, &ru1);

  uint64_t verify_failures = 0;
  for (unsigned i = 0; i < o.queues; i++) verify_failures += qs[i].verify_failures;
  uint64_t ios = 0, bytes = 0, errors = 0, kicks = 0, waits = 0, lat_sum = 0, lat_max = 0;
  for (unsigned i = 0; i < o.queues; i++) {
    ios += qs[i].ios, bytes += qs[i].bytes, errors += qs[i].errors, kicks += qs[i].kicks, waits += qs[i].waits;
    lat_sum += qs[i].lat_sum_ns;
    if (qs[i].lat_max_ns > lat_max) lat_max = qs[i].lat_max_ns;
  }
  static uint64_t hist[LAT_BUCKETS];
  for (unsigned i = 0; i < o.queues; i++)
    for (unsigned b = 0; b < LAT_BUCKETS; b++) hist[b] += qs[i].lat_hist[b];
  double p50 = lat_percentile_us(hist, ios, 0.50), p99 = lat_percentile_us(hist, ios, 0.99), p999 = lat_percentile_us(hist, ios, 0.999);
  double cpu = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1e-6 +
               (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1e-6;
  double elapsed = o.seconds + o.warmup;
  double iops = ios / o.seconds, mbps = bytes / o.seconds / 1e6;
  double lat_avg_us = ios ? lat_sum / (double)ios / 1e3 : 0;
  fprintf(stderr,
          "%s bs=%u depth=%u queues=%u mode=%s event_idx=%s: %.0f IOPS, %.1f MB/s, avg latency %.1f us (p50 %.1f, p99 %.1f, p99.9 %.1f, max %.1f), "
          "%" PRIu64 " errors, %" PRIu64 " verify failures, %.3f kicks/io, client CPU %.2f s (%.2f us/io incl. warm-up)\n",
          rw, o.bs, o.depth, o.queues, o.poll ? "poll" : "event", o.event_idx ? "on" : "off", iops, mbps, lat_avg_us,
          p50, p99, p999, lat_max / 1e3, errors, verify_failures, ios ? (double)kicks / ios : 0, cpu, ios ? cpu / (ios * elapsed / o.seconds) * 1e6 : 0);
  printf("{\"tool\":\"vhost-blk-load\",\"rw\":\"%s\",\"bs\":%u,\"depth\":%u,\"queues\":%u,\"ring\":%u,\"mode\":\"%s\","
         "\"event_idx\":%s,\"seconds\":%g,\"ios\":%" PRIu64 ",\"iops\":%.0f,\"mbps\":%.2f,\"lat_avg_us\":%.2f,"
         "\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,\"lat_p999_us\":%.1f,\"lat_max_us\":%.1f,\"errors\":%" PRIu64 ",\"kicks\":%" PRIu64 ",\"waits\":%" PRIu64 ",\"client_cpu_s\":%.3f,"
         "\"verify\":%s,\"verify_failures\":%" PRIu64 ",\"stalled\":%s}\n",
         rw, o.bs, o.depth, o.queues, o.ring, o.poll ? "poll" : "event", o.event_idx ? "true" : "false", o.seconds, ios,
         iops, mbps, lat_avg_us, p50, p99, p999, lat_max / 1e3, errors, kicks, waits, cpu, o.verify ? "true" : "false", verify_failures,
         atomic_load(&run.stalled) ? "true" : "false");
  close(cn.fd);
  if (atomic_load(&run.stalled)) return 4;
  if (verify_failures) return 5;
  return errors ? 3 : 0;
}
