/* net.h: virtio-net's numbers (virtio 1.2, 5.1) and the plugin's own bounds. */
#ifndef NET_NET_H
#define NET_NET_H

#define BIT(n) (1ull << (n))

/* Feature bits offered: only what this device implements (no checksum or segmentation
 * offload: the host moves bytes as they are; no control queue). VERSION_1 is the host's. */
#define NET_F_MTU 3
#define NET_F_MAC 5
#define NET_F_MRG_RXBUF 15
#define NET_F_STATUS 16
#define OFFERED_FEATURES (BIT(NET_F_MTU) | BIT(NET_F_MAC) | BIT(NET_F_MRG_RXBUF) | BIT(NET_F_STATUS))

/* struct virtio_net_config up to mtu (speed/duplex need a feature we do not offer). */
#define CFG_MAC 0
#define CFG_STATUS 6
#define CFG_MAX_VQ_PAIRS 8
#define CFG_MTU 10
#define CONFIG_SIZE 12
#define NET_S_LINK_UP 1

/* struct virtio_net_hdr_mrg_rxbuf: with VERSION_1 the header always has num_buffers. */
#define NET_HDR_LEN 12
#define HDR_FLAGS 0
#define HDR_GSO_TYPE 1
#define HDR_NUM_BUFFERS 10

#define RX_QUEUE 0
#define TX_QUEUE 1
/* Largest ring; also how many rx buffers can be held at once. */
#define RX_MAX 1024
/* tx: the header and 116 bytes of frame (Ethernet + VLAN + a 60-byte IPv4 header + ports);
 * a received frame shows its first 128 bytes. */
#define PREFIX_LEN 128
#define MIN_MTU 68
#define MAX_MTU 65535
#define DENIALS_AT_INFO 32
/* MAC table aging, as a Linux bridge's default: an entry not seen for 300 s is forgotten. The
 * plugin has no clock: a timer (wake-after) ticks every AGE_TICK_NS while the device runs. */
#define AGE_TICK_NS 30000000000ull
#define AGE_TICKS 10
#define AGE_TIMER_TOKEN 1
#define STATE_VERSION 1

enum counter {
  RX_FRAMES,
  RX_BYTES,
  RX_BAD_LENGTH, /* shorter than an Ethernet header or longer than MTU + header */
  RX_NOT_OURS,   /* unicast to another MAC (flooded to us) */
  RX_DENIED,     /* the policy said no */
  RX_NO_BUFFER,  /* no rx buffer held */
  RX_TOO_SMALL,  /* the held buffers could not hold it (one buffer without MRG_RXBUF) */
  RX_BAD_BUFFER, /* an rx buffer shorter than the header, given back empty */
  TX_FRAMES,
  TX_BYTES,
  TX_BAD_HEADER, /* shorter than the header, or flags / GSO type set */
  TX_BAD_LENGTH,
  TX_BAD_SOURCE, /* a multicast source MAC */
  TX_DENIED,
  TX_UNICAST,
  TX_FLOODED,
  COUNTER_COUNT
};

#endif
