#include "flow.h"

#include <string.h>

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

void flow_parse(const uint8_t *p, uint32_t len, flow *f) {
  memset(f, 0, sizeof *f);
  f->ip_proto = -1;
  memcpy(f->dst, p, 6);
  memcpy(f->src, p + 6, 6);
  uint32_t at = 12;
  f->ethertype = be16(p + at);
  at += 2;
  if (f->ethertype == ETHERTYPE_VLAN) {
    if (len < at + VLAN_HLEN) {
      f->ethertype = 0;
      return;
    }
    f->vlan = 1;
    f->ethertype = be16(p + at + 2);
    at += VLAN_HLEN;
  }
  if (f->ethertype == ETHERTYPE_ARP) {
    /* Ethernet/IPv4 ARP: htype 1, ptype 0x0800, hlen 6, plen 4; spa at 14, tpa at 24. */
    if (len < at + 28 || be16(p + at) != 1 || be16(p + at + 2) != ETHERTYPE_IPV4 || p[at + 4] != 6 || p[at + 5] != 4) return;
    f->has_ip = 1;
    f->src_ip = be32(p + at + 14);
    f->dst_ip = be32(p + at + 24);
    return;
  }
  if (f->ethertype != ETHERTYPE_IPV4 || len < at + 20) return;
  const uint8_t *ip = p + at;
  uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
  if (ip[0] >> 4 != 4 || ihl < 20) return;
  f->has_ip = 1;
  f->src_ip = be32(ip + 12);
  f->dst_ip = be32(ip + 16);
  f->ip_proto = ip[9];
  /* Ports are in the first fragment only; a later fragment has no L4 header to read. */
  int later_fragment = (be16(ip + 6) & 0x1fff) != 0;
  if ((f->ip_proto == IPPROTO_TCP_ || f->ip_proto == IPPROTO_UDP_) && !later_fragment && len >= at + ihl + 4) {
    f->has_ports = 1;
    f->src_port = be16(ip + ihl);
    f->dst_port = be16(ip + ihl + 2);
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

const char *mac_parse(const char *s, uint8_t out[6]) {
  for (int i = 0; i < 6; i++) {
    int hi = hexval(s[0]), lo = hi < 0 ? -1 : hexval(s[1]);
    if (hi < 0 || lo < 0) return NULL;
    out[i] = (uint8_t)(hi << 4 | lo);
    s += 2;
    if (i < 5) {
      if (*s != ':') return NULL;
      s++;
    }
  }
  return s;
}

const char *ipv4_parse(const char *s, uint32_t *out) {
  uint32_t ip = 0;
  for (int i = 0; i < 4; i++) {
    if (*s < '0' || *s > '9') return NULL;
    uint32_t v = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9') {
      v = v * 10 + (uint32_t)(*s++ - '0');
      if (++digits > 3 || v > 255) return NULL;
    }
    ip = ip << 8 | v;
    if (i < 3) {
      if (*s != '.') return NULL;
      s++;
    }
  }
  *out = ip;
  return s;
}

void mac_format(const uint8_t mac[6], char out[18]) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 6; i++) {
    out[i * 3] = hex[mac[i] >> 4];
    out[i * 3 + 1] = hex[mac[i] & 15];
    out[i * 3 + 2] = i < 5 ? ':' : '\0';
  }
}

char *put_uint(char *o, uint32_t v) {
  char tmp[10];
  int n = 0;
  do tmp[n++] = (char)('0' + v % 10); while ((v /= 10) != 0);
  while (n) *o++ = tmp[--n];
  return o;
}

void ipv4_format(uint32_t ip, char out[16]) {
  char *o = out;
  for (int i = 3; i >= 0; i--) {
    o = put_uint(o, (ip >> (8 * i)) & 255);
    if (i) *o++ = '.';
  }
  *o = '\0';
}
