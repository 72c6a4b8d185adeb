#include "mac_table.h"

#include <string.h>

void mac_table_clear(mac_table *t) { memset(t, 0, sizeof *t); }

static mac_entry *find(mac_table *t, const uint8_t mac[6]) {
  for (uint32_t i = 0; i < MAC_TABLE_SIZE; i++) {
    if (t->e[i].used && memcmp(t->e[i].mac, mac, 6) == 0) return &t->e[i];
  }
  return NULL;
}

int mac_table_learn(mac_table *t, const uint8_t mac[6], uint32_t network, uint32_t port) {
  mac_entry *e = find(t, mac);
  int changed = 1;
  if (e) {
    changed = e->stale || e->network != network || e->port != port;
  } else {
    /* A free slot, or the least recently learned one. */
    mac_entry *victim = &t->e[0];
    for (uint32_t i = 0; i < MAC_TABLE_SIZE; i++) {
      if (!t->e[i].used) {
        victim = &t->e[i];
        break;
      }
      if (t->e[i].learned < victim->learned) victim = &t->e[i];
    }
    if (!victim->used) t->n++;
    e = victim;
    memcpy(e->mac, mac, 6);
    e->used = 1;
  }
  e->stale = 0;
  e->network = network;
  e->port = port;
  e->learned = ++t->clock;
  e->seen_tick = t->tick;
  return changed;
}

uint32_t mac_table_age(mac_table *t, uint32_t max_age) {
  t->tick++;
  uint32_t forgotten = 0;
  for (uint32_t i = 0; i < MAC_TABLE_SIZE; i++) {
    if (t->e[i].used && t->tick - t->e[i].seen_tick >= max_age) {
      memset(&t->e[i], 0, sizeof t->e[i]);
      t->n--;
      forgotten++;
    }
  }
  return forgotten;
}

const mac_entry *mac_table_lookup(const mac_table *t, const uint8_t mac[6]) {
  const mac_entry *e = find((mac_table *)t, mac);
  return e && !e->stale ? e : NULL;
}
