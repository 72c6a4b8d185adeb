/*
 * flow.h: what the net plugin reads of an Ethernet frame's first bytes (the prefix the host
 * shows it, never the whole frame): both MAC addresses, the EtherType after at most one VLAN
 * tag, and for IPv4 (and ARP) the addresses, the protocol and, for TCP and UDP, the ports.
 * A field the prefix does not reach is marked unknown, never guessed.
 */
#ifndef NET_FLOW_H
#define NET_FLOW_H

#include <stdint.h>

#define ETH_HLEN 14
#define VLAN_HLEN 4
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ETHERTYPE_VLAN 0x8100
#define ETHERTYPE_IPV6 0x86dd
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

typedef struct flow {
  uint8_t dst[6], src[6];
  uint16_t ethertype; /* after one VLAN tag, if any */
  int vlan;           /* 1 when the frame carries an 802.1Q tag */
  /* IPv4 (or ARP's sender/target protocol addresses); has_ip 0 when unknown or not IPv4/ARP. */
  int has_ip;
  uint32_t src_ip, dst_ip; /* host order */
  int ip_proto;            /* -1 unless IPv4 with its header in the prefix */
  int has_ports;
  uint16_t src_port, dst_port;
} flow;

/* Reads `prefix` (the first `len` bytes of a frame, len >= ETH_HLEN). */
void flow_parse(const uint8_t *prefix, uint32_t len, flow *out);

static inline int mac_is_multicast(const uint8_t *mac) { return mac[0] & 1; }

/* "aa:bb:cc:dd:ee:ff" (17 chars) or NULL on a malformed one. */
const char *mac_parse(const char *s, uint8_t out[6]);
/* A dotted IPv4 address; returns the end of what was read, NULL on a malformed one. */
const char *ipv4_parse(const char *s, uint32_t *out);

/* Writes "aa:bb:cc:dd:ee:ff\0" (18 bytes) and "255.255.255.255\0" (at most 16). */
void mac_format(const uint8_t mac[6], char out[18]);
void ipv4_format(uint32_t ip, char out[16]);
/* Writes `v` in decimal at `o` (at most 10 chars, no NUL); returns the end. */
char *put_uint(char *o, uint32_t v);

#endif
