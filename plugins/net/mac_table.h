/*
 * mac_table.h: where each MAC address was last seen (network, port), learned from the
 * from-port of received frames. Bounded: a full table forgets its least recently learned
 * entry, so a guest sending from endless made-up addresses costs a constant amount of memory.
 * An entry loaded from a migrated state is `stale` (its port numbers were another host's)
 * until a frame from that address confirms it again; forwarding floods to stale entries.
 * Entries age: mac_table_age forgets those not seen for `max_age` ticks (the plugin ticks
 * with a timer), so frames to a guest that went away are flooded again, not sent to its port.
 */
#ifndef NET_MAC_TABLE_H
#define NET_MAC_TABLE_H

#include <stdint.h>

#define MAC_TABLE_SIZE 256

typedef struct mac_entry {
  uint8_t mac[6];
  uint8_t used, stale;
  uint32_t network, port;
  uint64_t learned; /* a counter value: larger = more recent */
  uint32_t seen_tick; /* the table's tick when a frame from it last came */
} mac_entry;

typedef struct mac_table {
  mac_entry e[MAC_TABLE_SIZE];
  uint64_t clock;
  uint32_t n;
  uint32_t tick;
} mac_table;

void mac_table_clear(mac_table *t);
/* Records that `mac` sent from (network, port); returns 1 when that changed the table. */
int mac_table_learn(mac_table *t, const uint8_t mac[6], uint32_t network, uint32_t port);
/* One tick passes: entries not seen for `max_age` ticks or more are forgotten; how many were. */
uint32_t mac_table_age(mac_table *t, uint32_t max_age);
/* The fresh entry for `mac`, or NULL (unknown or stale: flood). */
const mac_entry *mac_table_lookup(const mac_table *t, const uint8_t mac[6]);

#endif
