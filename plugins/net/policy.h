/*
 * policy.h: the net plugin's allow-list, given as the `policy` plugin option.
 *
 *   policy  := rule (';' rule)*
 *   rule    := ('allow' | 'deny') ENDPOINT ENDPOINT [PROTO]
 *   ENDPOINT:= 'any' | MAC | (IPV4['/'BITS] | '*')[':'PORT]
 *   PROTO   := 'any' | 'arp' | 'ip' | 'icmp' | 'tcp' | 'udp'      (default: any)
 *
 * A rule matches a frame going either way between its two endpoints (a flow and its replies).
 * The first matching rule decides; a frame no rule matches is denied when any rule was given
 * (an allow-list), allowed when the policy is empty. An IP endpoint also matches ARP by the
 * sender/target protocol addresses, so `allow 10.0.0.1 10.0.0.2` lets the two resolve each
 * other. A PORT needs PROTO tcp or udp.
 */
#ifndef NET_POLICY_H
#define NET_POLICY_H

#include <stdint.h>

#include "flow.h"

#define POLICY_MAX_RULES 64

typedef struct endpoint {
  int has_mac;
  uint8_t mac[6];
  int has_ip;
  uint32_t ip, mask;
  int has_port;
  uint16_t port;
} endpoint;

enum policy_proto { PROTO_ANY, PROTO_ARP, PROTO_IP, PROTO_ICMP, PROTO_TCP, PROTO_UDP };

typedef struct rule {
  int allow;
  endpoint a, b;
  enum policy_proto proto;
} rule;

typedef struct policy {
  rule rules[POLICY_MAX_RULES];
  int n;
} policy;

/* Parses `text` into `out`. NULL on success, else a message naming the rule and what is wrong
 * (written into `err`, `err_len` bytes). */
const char *policy_parse(const char *text, policy *out, char *err, uint32_t err_len);

/* 1 when the frame may pass. `rule_index` gets the deciding rule (-1: the default). */
int policy_allows(const policy *p, const flow *f, int *rule_index);

#endif
