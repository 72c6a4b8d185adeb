#include "policy.h"

#include <string.h>

static const char *skip_spaces(const char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
  return s;
}

/* The next word (up to a space, ';' or the end) into `out`; its length, or -1 if too long. */
static int word(const char **s, char *out, int max) {
  const char *p = skip_spaces(*s);
  int n = 0;
  while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != ';') {
    if (n == max - 1) return -1;
    out[n++] = *p++;
  }
  out[n] = '\0';
  *s = p;
  return n;
}

static const char *parse_port(const char *s, uint16_t *out) {
  uint32_t v = 0;
  int digits = 0;
  while (*s >= '0' && *s <= '9') {
    v = v * 10 + (uint32_t)(*s++ - '0');
    if (++digits > 5 || v > 65535) return NULL;
  }
  if (!digits) return NULL;
  *out = (uint16_t)v;
  return s;
}

static const char *parse_endpoint(const char *w, endpoint *e) {
  memset(e, 0, sizeof *e);
  if (strcmp(w, "any") == 0) return "";
  const char *s = w;
  /* A MAC has a ':' at index 2; an IPv4 address never does. */
  if (strlen(w) == 17 && w[2] == ':') {
    if (!mac_parse(w, e->mac)) return NULL;
    e->has_mac = 1;
    return "";
  }
  if (*s == '*') {
    s++;
  } else {
    s = ipv4_parse(s, &e->ip);
    if (!s) return NULL;
    e->has_ip = 1;
    e->mask = 0xffffffffu;
    if (*s == '/') {
      uint16_t bits;
      s = parse_port(s + 1, &bits);
      if (!s || bits > 32) return NULL;
      e->mask = bits == 0 ? 0 : 0xffffffffu << (32 - bits);
    }
    e->ip &= e->mask;
  }
  if (*s == ':') {
    s = parse_port(s + 1, &e->port);
    if (!s) return NULL;
    e->has_port = 1;
  }
  return *s ? NULL : "";
}

static void say(char *err, uint32_t err_len, int index, const char *what, const char *w) {
  /* "policy rule N: WHAT 'W'" without stdio (no WASI): assembled by hand. */
  char num[12];
  int n = 0;
  uint32_t v = (uint32_t)index + 1;
  char tmp[12];
  int t = 0;
  do tmp[t++] = (char)('0' + v % 10); while ((v /= 10) != 0);
  while (t) num[n++] = tmp[--t];
  num[n] = '\0';
  const char *parts[] = {"policy rule ", num, ": ", what, w ? " '" : "", w ? w : "", w ? "'" : ""};
  uint32_t at = 0;
  for (unsigned i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    for (const char *c = parts[i]; *c && at + 1 < err_len; c++) err[at++] = *c;
  }
  err[at] = '\0';
}

const char *policy_parse(const char *text, policy *out, char *err, uint32_t err_len) {
  memset(out, 0, sizeof *out);
  const char *s = text;
  for (int index = 0;; index++) {
    s = skip_spaces(s);
    if (!*s) break;
    if (*s == ';') {
      s++;
      index--;
      continue;
    }
    if (out->n == POLICY_MAX_RULES) {
      say(err, err_len, index, "too many rules (at most 64)", NULL);
      return err;
    }
    rule *r = &out->rules[out->n];
    char w[64];
    if (word(&s, w, sizeof w) < 0) {
      say(err, err_len, index, "word too long", NULL);
      return err;
    }
    if (strcmp(w, "allow") == 0) r->allow = 1;
    else if (strcmp(w, "deny") == 0) r->allow = 0;
    else {
      say(err, err_len, index, "must start with allow or deny, not", w);
      return err;
    }
    endpoint *eps[2] = {&r->a, &r->b};
    for (int i = 0; i < 2; i++) {
      int n = word(&s, w, sizeof w);
      if (n <= 0) {
        say(err, err_len, index, "needs two endpoints (any, a MAC, IPV4[/BITS][:PORT] or *:PORT)", NULL);
        return err;
      }
      if (!parse_endpoint(w, eps[i])) {
        say(err, err_len, index, "bad endpoint (any, aa:bb:cc:dd:ee:ff, IPV4[/BITS][:PORT] or *:PORT)", w);
        return err;
      }
    }
    int n = word(&s, w, sizeof w);
    if (n < 0) {
      say(err, err_len, index, "word too long", NULL);
      return err;
    }
    static const char *protos[] = {"any", "arp", "ip", "icmp", "tcp", "udp"};
    r->proto = PROTO_ANY;
    if (n > 0) {
      int found = -1;
      for (int i = 0; i < 6; i++) if (strcmp(w, protos[i]) == 0) found = i;
      if (found < 0) {
        say(err, err_len, index, "unknown protocol (any, arp, ip, icmp, tcp, udp)", w);
        return err;
      }
      r->proto = (enum policy_proto)found;
    }
    if ((r->a.has_port || r->b.has_port) && r->proto != PROTO_TCP && r->proto != PROTO_UDP) {
      say(err, err_len, index, "a port needs protocol tcp or udp", NULL);
      return err;
    }
    s = skip_spaces(s);
    if (*s && *s != ';') {
      word(&s, w, sizeof w);
      say(err, err_len, index, "unexpected word after the protocol", w);
      return err;
    }
    out->n++;
  }
  return NULL;
}

static int side_matches(const endpoint *e, const flow *f, int src) {
  if (e->has_mac && memcmp(e->mac, src ? f->src : f->dst, 6) != 0) return 0;
  if (e->has_ip && (!f->has_ip || ((src ? f->src_ip : f->dst_ip) & e->mask) != e->ip)) return 0;
  if (e->has_port && (!f->has_ports || (src ? f->src_port : f->dst_port) != e->port)) return 0;
  return 1;
}

static int proto_matches(enum policy_proto p, const flow *f) {
  switch (p) {
    case PROTO_ANY: return 1;
    case PROTO_ARP: return f->ethertype == ETHERTYPE_ARP;
    case PROTO_IP: return f->ethertype == ETHERTYPE_IPV4;
    case PROTO_ICMP: return f->ethertype == ETHERTYPE_IPV4 && f->ip_proto == IPPROTO_ICMP_;
    case PROTO_TCP: return f->ethertype == ETHERTYPE_IPV4 && f->ip_proto == IPPROTO_TCP_;
    case PROTO_UDP: return f->ethertype == ETHERTYPE_IPV4 && f->ip_proto == IPPROTO_UDP_;
  }
  return 0;
}

int policy_allows(const policy *p, const flow *f, int *rule_index) {
  for (int i = 0; i < p->n; i++) {
    const rule *r = &p->rules[i];
    if (!proto_matches(r->proto, f)) continue;
    int fwd = side_matches(&r->a, f, 1) && side_matches(&r->b, f, 0);
    int back = side_matches(&r->a, f, 0) && side_matches(&r->b, f, 1);
    if (fwd || back) {
      *rule_index = i;
      return r->allow;
    }
  }
  *rule_index = -1;
  return p->n == 0;
}
