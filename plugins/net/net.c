/*
 * virtio-net (device id 1) on the host's `network` grant: a port of a switch inside the host
 * process. The host moves the frames; this plugin decides where each goes.
 *
 * Queues: 0 rx, 1 tx (one pair, no control queue). rx buffers are held until a frame for this
 * port arrives; the frame's bytes go from the host straight into them (a `frame-read` piece
 * after the 12-byte virtio-net header), so only its prefix (Ethernet/IP/L4 headers) is ever in
 * this plugin's memory. With MRG_RXBUF a frame longer than one buffer spans several (the
 * header's num_buffers says how many); without it, or without enough buffers, the frame is
 * dropped and counted. tx requests are checked (header flags and GSO type must be 0: no
 * checksum or segmentation offload is offered; 14 <= length <= MTU + 14, + 4 with a VLAN
 * tag; a unicast source), run through the policy, and sent: to the port the destination MAC
 * was learned on, or flooded (unknown, broadcast, multicast). Every tx request is answered in
 * the call that brings it, whatever happens to its frame, so the guest never waits on a
 * dropped one.
 *
 * Networks: frames go out on the first granted network (index 0), whose MTU is the config
 * space's mtu; frames from any granted network are delivered and learned.
 *
 * Options (plugin options, all optional): mac=aa:bb:cc:dd:ee:ff (config space; default
 * 52:54:00:12:34:56, QEMU's own default), policy=RULES (policy.h). Note that QEMU's vhost-user virtio-net builds the guest's config space itself
 * (its -device mac=, host_mtu=): ours is what other front-ends read.
 *
 * MAC table entries not seen for 300 s are forgotten (a 30 s wake-after timer ticks while the
 * device handles anything; mac_table.h).
 *
 * State: "VNET", version 1, 3 zero bytes; u32 counter count, the counters (u64 each, in
 * enum counter order); u8 has-own-mac, 1 zero byte, own mac (6); u32 entries, each mac (6),
 * 2 zero bytes, network u32, port u32. Loaded entries are stale until seen again (mac_table.h).
 */
#include "vhost_device.h"

#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "mac_table.h"
#include "net.h"
#include "policy.h"

/* ---- Configuration (options, read once at load) ---- */

static uint8_t cfg_mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
static int cfg_mac_given;
static uint32_t cfg_mtu = 1500;
static policy cfg_policy;
static int configured;

/* ---- Per-connection state ---- */

static uint64_t acked;
static uint64_t counters[COUNTER_COUNT];
static mac_table table;
/* The guest's own MAC: the configured one, else the source of its last sent frame. Frames
 * to another unicast address are not delivered (the switch floods unknown destinations). */
static uint8_t own_mac[6];
static int own_mac_known;
static uint32_t denials_logged;
/* A wake-after is outstanding (the host forgets timers at reset, as we do this flag). */
static int aging_armed;

/* Held rx buffers, in the order the guest made them available. */
typedef struct rx_buf {
  uint32_t id, len;
  /* Came in this call: held (vd_hold) at its end only if no frame of the call filled it, since
   * a request gets exactly one answer or hold per call. */
  int fresh;
} rx_buf;
static rx_buf rx[RX_MAX];
static uint32_t rx_head, rx_n;

const char *vd_name(void) { return "net"; }
const char *vd_version(void) { return "0.1.0"; }

static char *dup_str(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  char *s = malloc(la + lb + 1);
  if (!s) __builtin_trap();
  memcpy(s, a, la);
  memcpy(s + la, b, lb + 1);
  return s;
}

/* A bad option fails the load with the reason in the log: nothing sensible can run on it. */
static void refuse(const char *msg) {
  vd_log(VD_LOG_ERROR, msg);
  __builtin_trap();
}

static void forget_connection(void);

static void configure(void) {
  if (configured) return;
  configured = 1;
  char *mac = vd_option("mac");
  if (mac) {
    const char *end = mac_parse(mac, cfg_mac);
    if (!end || *end) refuse(dup_str("option mac: not a MAC address (aa:bb:cc:dd:ee:ff): ", mac));
    if (mac_is_multicast(cfg_mac)) refuse(dup_str("option mac: a multicast address cannot be a device's: ", mac));
    cfg_mac_given = 1;
    free(mac);
  }
  /* Frames go out on the first network; its MTU is what the guest is told and held to. */
  if (vd_network_count() == 0) refuse("virtio-net needs a network to be a port of: grant one (--network NAME)");
  cfg_mtu = vd_network_mtu(0);
  if (cfg_mtu < MIN_MTU || cfg_mtu > MAX_MTU) refuse("the network's MTU is outside 68..65535, which virtio-net cannot state");
  char *pol = vd_option("policy");
  if (pol) {
    char err[200];
    if (policy_parse(pol, &cfg_policy, err, sizeof err)) refuse(dup_str("option policy: ", err));
    free(pol);
  }
  forget_connection();
}

void vd_get_info(vd_info *out) {
  configure();
  out->device_id = 1;
  out->num_queues = 2;
  out->max_queue_size = RX_MAX;
  out->features = OFFERED_FEATURES;
  out->config_size = CONFIG_SIZE;
  out->prefix_len = PREFIX_LEN;
  /* rx and tx share the MAC table. */
  out->queues_independent = 0;
}

void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size) {
  uint8_t cfg[CONFIG_SIZE];
  memcpy(cfg + CFG_MAC, cfg_mac, 6);
  vd_put_u16(cfg + CFG_STATUS, NET_S_LINK_UP);
  vd_put_u16(cfg + CFG_MAX_VQ_PAIRS, 1);
  vd_put_u16(cfg + CFG_MTU, (uint16_t)cfg_mtu);
  /* The host checked offset + size <= CONFIG_SIZE. */
  memcpy(out, cfg + offset, size);
}

/* The mac field is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR-less legacy drivers; we
 * offer no such thing, so writes are ignored (the spec: the driver MUST NOT write it). */
void vd_write_config(uint32_t offset, const uint8_t *data, size_t len) { (void)offset, (void)data, (void)len; }

static void forget_connection(void) {
  acked = 0;
  memset(counters, 0, sizeof counters);
  mac_table_clear(&table);
  own_mac_known = cfg_mac_given;
  memcpy(own_mac, cfg_mac, 6);
  denials_logged = 0;
  aging_armed = 0;
  rx_head = rx_n = 0;
}

const char *vd_activate(uint64_t features) {
  configure();
  if (features & ~OFFERED_FEATURES) return "acked features that were never offered";
  acked = features;
  char msg[96] = "virtio-net activated, mac ";
  mac_format(cfg_mac, msg + strlen(msg));
  strcat(msg, (acked & BIT(NET_F_MRG_RXBUF)) ? ", mergeable rx buffers" : ", one rx buffer per frame");
  vd_log(VD_LOG_INFO, msg);
  return NULL;
}

static vd_state_loader loader;
static uint8_t *saving;
static size_t saving_len;

void vd_reset(void) {
  forget_connection();
  vd_state_loader_reset(&loader);
}

/* ---- Logging a denied frame (the first DENIALS_AT_INFO at info, the rest at debug) ---- */

static char *put(char *o, const char *s) {
  while (*s) *o++ = *s++;
  return o;
}

static char *put_end(char *o, const flow *f, int src) {
  if (!f->has_ip) {
    char m[18];
    mac_format(src ? f->src : f->dst, m);
    return put(o, m);
  }
  char ip[16];
  ipv4_format(src ? f->src_ip : f->dst_ip, ip);
  o = put(o, ip);
  if (f->has_ports) {
    *o++ = ':';
    o = put_uint(o, src ? f->src_port : f->dst_port);
  }
  return o;
}

static void log_denial(const char *dir, const flow *f, int rule_index) {
  char line[160];
  char *o = put(line, "policy denied ");
  o = put(o, dir);
  o = put(o, " ");
  o = put(o, f->ethertype == ETHERTYPE_ARP ? "arp"
             : f->ip_proto == IPPROTO_TCP_ ? "tcp"
             : f->ip_proto == IPPROTO_UDP_ ? "udp"
             : f->ip_proto == IPPROTO_ICMP_ ? "icmp"
             : f->ethertype == ETHERTYPE_IPV4 ? "ip"
             : "ethertype");
  if (f->ethertype != ETHERTYPE_IPV4 && f->ethertype != ETHERTYPE_ARP) {
    o = put(o, " 0x");
    static const char hex[] = "0123456789abcdef";
    for (int s = 12; s >= 0; s -= 4) *o++ = hex[(f->ethertype >> s) & 15];
  }
  o = put(o, " ");
  o = put_end(o, f, 1);
  o = put(o, " -> ");
  o = put_end(o, f, 0);
  if (rule_index >= 0) {
    o = put(o, " (rule ");
    o = put_uint(o, (uint32_t)rule_index + 1);
    o = put(o, ")");
  } else {
    o = put(o, " (no rule allows it)");
  }
  *o = '\0';
  vd_log(denials_logged++ < DENIALS_AT_INFO ? VD_LOG_INFO : VD_LOG_DEBUG, line);
}

/* ---- tx ---- */

static uint32_t max_frame(const flow *f) { return cfg_mtu + ETH_HLEN + (f->vlan ? VLAN_HLEN : 0); }

static void transmit(const vd_request *r) {
  /* Answered first and always: a dropped frame must not leave the guest waiting on its buffer. */
  vd_answer_begin(r->id);
  if (r->readable_len < NET_HDR_LEN || r->prefix_len < NET_HDR_LEN) {
    counters[TX_BAD_HEADER]++;
    return;
  }
  const uint8_t *hdr = r->prefix;
  /* No CSUM and no HOST_TSO*/
  if (hdr[HDR_FLAGS] != 0 || hdr[HDR_GSO_TYPE] != 0) {
    counters[TX_BAD_HEADER]++;
    return;
  }
  uint32_t len = r->readable_len - NET_HDR_LEN;
  if (len < ETH_HLEN || r->prefix_len < NET_HDR_LEN + ETH_HLEN) {
    counters[TX_BAD_LENGTH]++;
    return;
  }
  flow f;
  flow_parse(hdr + NET_HDR_LEN, r->prefix_len - NET_HDR_LEN, &f);
  if (len > max_frame(&f)) {
    counters[TX_BAD_LENGTH]++;
    return;
  }
  if (mac_is_multicast(f.src)) {
    counters[TX_BAD_SOURCE]++;
    return;
  }
  int rule_index;
  if (!policy_allows(&cfg_policy, &f, &rule_index)) {
    counters[TX_DENIED]++;
    log_denial("tx", &f, rule_index);
    return;
  }
  if (!cfg_mac_given) {
    memcpy(own_mac, f.src, 6);
    own_mac_known = 1;
  }
  const mac_entry *to = mac_is_multicast(f.dst) ? NULL : mac_table_lookup(&table, f.dst);
  if (to) {
    vd_send_to(to->network, r->id, NET_HDR_LEN, len, to->port);
    counters[TX_UNICAST]++;
  } else {
    vd_send(0, r->id, NET_HDR_LEN, len);
    counters[TX_FLOODED]++;
  }
  counters[TX_FRAMES]++;
  counters[TX_BYTES] += len;
}

/* ---- rx ---- */

static const char *hold_rx(const vd_request *r) {
  if (r->writable_len < NET_HDR_LEN) {
    /* Cannot carry even a header: give it back empty (the driver counts a length error). */
    vd_answer_begin(r->id);
    counters[RX_BAD_BUFFER]++;
    return NULL;
  }
  if (rx_n == RX_MAX) return "more rx buffers held than the ring can have (a host bug)";
  rx[(rx_head + rx_n) % RX_MAX] = (rx_buf){r->id, r->writable_len, 1};
  rx_n++;
  return NULL;
}

static void receive(const vd_event *ev) {
  const uint32_t id = ev->u.frame.id, len = ev->u.frame.len;
  const uint8_t *prefix = ev->u.frame.prefix;
  if (len < ETH_HLEN || ev->u.frame.prefix_len < ETH_HLEN) {
    counters[RX_BAD_LENGTH]++;
    return;
  }
  flow f;
  flow_parse(prefix, ev->u.frame.prefix_len, &f);
  if (len > max_frame(&f)) {
    counters[RX_BAD_LENGTH]++;
    return;
  }
  if (!mac_is_multicast(f.src)) mac_table_learn(&table, f.src, ev->u.frame.network, ev->u.frame.from_port);
  if (own_mac_known && !mac_is_multicast(f.dst) && memcmp(f.dst, own_mac, 6) != 0) {
    counters[RX_NOT_OURS]++;
    return;
  }
  int rule_index;
  if (!policy_allows(&cfg_policy, &f, &rule_index)) {
    counters[RX_DENIED]++;
    log_denial("rx", &f, rule_index);
    return;
  }
  const uint32_t need = NET_HDR_LEN + len;
  const int mergeable = (acked & BIT(NET_F_MRG_RXBUF)) != 0;
  uint32_t take = 0, room = 0;
  while (take < rx_n && room < need && (mergeable || take == 0)) room += rx[(rx_head + take++) % RX_MAX].len;
  if (room < need) {
    counters[rx_n == 0 ? RX_NO_BUFFER : RX_TOO_SMALL]++;
    return;
  }
  uint32_t offset = 0;
  for (uint32_t i = 0; i < take; i++) {
    rx_buf b = rx[rx_head];
    rx_head = (rx_head + 1) % RX_MAX;
    rx_n--;
    vd_answer_begin(b.id);
    uint32_t space = b.len;
    if (i == 0) {
      uint8_t *h = vd_answer_bytes_buf(NET_HDR_LEN);
      /* flags 0, gso none, no checksum fields: the bytes arrive as they were sent. */
      vd_put_u16(h + HDR_NUM_BUFFERS, (uint16_t)take);
      space -= NET_HDR_LEN;
    }
    uint32_t n = len - offset < space ? len - offset : space;
    vd_answer_frame_read(id, offset, n);
    offset += n;
  }
  counters[RX_FRAMES]++;
  counters[RX_BYTES] += len;
}

const char *vd_handle(const vd_event *events, size_t n) {
  /* Requests first: rx buffers that arrive with frames in one call can carry them. */
  for (size_t i = 0; i < n; i++) {
    if (events[i].kind == VD_EVENT_TIMER && events[i].u.timer == AGE_TIMER_TOKEN) {
      aging_armed = 0;
      mac_table_age(&table, AGE_TICKS);
    }
  }
  if (!aging_armed) {
    vd_wake_after(AGE_TICK_NS, AGE_TIMER_TOKEN);
    aging_armed = 1;
  }
  for (size_t i = 0; i < n; i++) {
    const vd_event *e = &events[i];
    if (e->kind == VD_EVENT_REQUEST) {
      if (e->u.request.queue == RX_QUEUE) {
        const char *err = hold_rx(&e->u.request);
        if (err) return err;
      } else if (e->u.request.queue == TX_QUEUE) {
        transmit(&e->u.request);
      } else {
        return "virtio-net has queues 0 (rx) and 1 (tx) only";
      }
    } else if (e->kind == VD_EVENT_IO_FAILED) {
      /* Nothing answered here does backing I/O; give the buffer back empty rather than fail. */
      vd_answer_begin(e->u.io_failed.id);
    }
  }
  for (size_t i = 0; i < n; i++) {
    if (events[i].kind == VD_EVENT_FRAME) receive(&events[i]);
  }
  /* The buffers of this call no frame filled wait for later frames. */
  for (uint32_t i = 0; i < rx_n; i++) {
    rx_buf *b = &rx[(rx_head + i) % RX_MAX];
    if (!b->fresh) continue;
    b->fresh = 0;
    vd_hold(b->id);
  }
  return NULL;
}

/* ---- State ---- */

static size_t state_size(uint32_t entries) { return VD_STATE_HEADER + 4 + COUNTER_COUNT * 8 + 8 + 4 + (size_t)entries * 16; }
#define STATE_MAX (VD_STATE_HEADER + 4 + COUNTER_COUNT * 8 + 8 + 4 + MAC_TABLE_SIZE * 16)

static void encode(void) {
  saving_len = state_size(table.n);
  free(saving);
  saving = calloc(1, saving_len);
  if (!saving) __builtin_trap();
  uint8_t *o = saving;
  vd_state_put_header(o, "VNET", STATE_VERSION);
  o += VD_STATE_HEADER;
  vd_put_u32(o, COUNTER_COUNT);
  o += 4;
  for (int i = 0; i < COUNTER_COUNT; i++, o += 8) vd_put_u64(o, counters[i]);
  o[0] = (uint8_t)own_mac_known;
  memcpy(o + 2, own_mac, 6);
  o += 8;
  vd_put_u32(o, table.n);
  o += 4;
  /* Oldest first, so a load relearns them in the same recency order. */
  uint64_t after = 0;
  for (uint32_t k = 0; k < table.n; k++) {
    const mac_entry *next = NULL;
    for (uint32_t i = 0; i < MAC_TABLE_SIZE; i++) {
      const mac_entry *e = &table.e[i];
      if (e->used && e->learned > after && (!next || e->learned < next->learned)) next = e;
    }
    memcpy(o, next->mac, 6);
    vd_put_u32(o + 8, next->network);
    vd_put_u32(o + 12, next->port);
    o += 16;
    after = next->learned;
  }
}

const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining) {
  if (offset == 0) encode();
  return vd_state_serve(saving, saving_len, offset, size, out, remaining);
}

static uint8_t loading[STATE_MAX];
static vd_state_loader loader = {.data = loading, .max = STATE_MAX};

const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len) {
  return vd_state_accept(&loader, offset, chunk, len, "state longer than the net state format allows");
}

const char *vd_finish_load(void) {
  if (loader.overflow) return "state longer than the net state format allows";
  if (loader.len < state_size(0)) return "net state truncated";
  const uint8_t *p = loading;
  const char *err = vd_state_check_header(p, "VNET", STATE_VERSION, "not a net state (bad magic)", "unsupported net state version");
  if (err) return err;
  p += VD_STATE_HEADER;
  if (vd_get_u32(p) != COUNTER_COUNT) return "net state has another number of counters than this version";
  p += 4;
  const uint8_t *ctr = p;
  p += COUNTER_COUNT * 8;
  if (p[0] > 1 || p[1] != 0) return "net state: bad own-mac flag";
  const uint8_t *mac = p;
  p += 8;
  uint32_t entries = vd_get_u32(p);
  p += 4;
  if (entries > MAC_TABLE_SIZE) return "net state: more MAC table entries than the table holds";
  if (loader.len != state_size(entries)) return "net state: its length does not match its MAC table";
  for (uint32_t i = 0; i < entries; i++) {
    const uint8_t *e = p + i * 16;
    if (mac_is_multicast(e) || e[6] || e[7]) return "net state: a MAC table entry is malformed";
  }
  /* Valid: apply. */
  for (int i = 0; i < COUNTER_COUNT; i++) counters[i] = vd_get_u64(ctr + i * 8);
  own_mac_known = mac[0] || cfg_mac_given;
  if (!cfg_mac_given) memcpy(own_mac, mac + 2, 6);
  mac_table_clear(&table);
  for (uint32_t i = 0; i < entries; i++) {
    const uint8_t *e = p + i * 16;
    mac_table_learn(&table, e, vd_get_u32(e + 8), vd_get_u32(e + 12));
  }
  /* Port numbers belong to the host that saved them: trust none until seen again. */
  for (uint32_t i = 0; i < MAC_TABLE_SIZE; i++) table.e[i].stale = table.e[i].used;
  loader.len = 0;
  return NULL;
}
