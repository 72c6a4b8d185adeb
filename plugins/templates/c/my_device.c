/*
 * A minimal vhost-wasm device plugin, to copy and edit. It builds as it is and runs: a
 * device with one queue that answers each request with the first bytes of its readable part
 * reversed, counts the requests it served, exposes that count in its config space and
 * carries it across a live migration as its state.
 *
 * The C SDK (plugins/sdk/c/vhost_device.h) does the canonical-ABI work (vhost:device@0.2.2):
 * you implement the vd_* callbacks below and never see a pointer the host owns. Rules that matter:
 *  - a request shows you its first PREFIX_LEN readable bytes and its lengths, never more:
 *    a device that moves data names backing ranges in its answer (vd_answer_backing_read,
 *    vd_answer_transfer) and the host moves the bytes;
 *  - answer (or vd_hold) every request exactly once; the reply pieces may cover at most the
 *    request's writable_len (the host refuses more and marks the device NEEDS_RESET);
 *  - return NULL for success or a message for failure (the host logs it, names your plugin
 *    and marks the device NEEDS_RESET);
 *  - a trap (abort, out-of-bounds access, malloc failure past --memory-limit, running past
 *    --call-deadline) costs this device a reset, never the host or another device.
 * See docs/writing-a-plugin.md and docs/plugin-abi.md.
 */
#include "vhost_device.h"

#include <stdlib.h>
#include <string.h>

/* TODO: your device's virtio id. 4 = entropy (what QEMU's vhost-user-rng-pci expects), 2 =
 * block, 26 = fs; the host itself serves any id to its own front-end driver. */
#define DEVICE_ID 42
#define CONFIG_SIZE 8
#define STATE_SIZE 12 /* "MYDV" + served as a little-endian u64 */
#define PREFIX_LEN 64 /* readable bytes of each request this device sees (at most 4096) */

static uint64_t served;
static uint8_t saving[STATE_SIZE], loading[STATE_SIZE];
/* Collects set-state chunks in order into `loading` (SDK helper). */
static vd_state_loader loader = {.data = loading, .max = STATE_SIZE};

/* The name tags saved state; keep it stable across versions (lower-case, digits, '-'). */
const char *vd_name(void) { return "my-device"; }
const char *vd_version(void) { return "0.2.0"; }

void vd_get_info(vd_info *out) {
  out->device_id = DEVICE_ID;
  out->num_queues = 1;
  out->max_queue_size = 256; /* a power of two */
  out->features = 0;         /* device feature bits (0-23) you offer */
  out->config_size = CONFIG_SIZE;
  out->prefix_len = PREFIX_LEN;
  out->queues_independent = 0; /* one counter for every queue: one instance sees them all */
}

static void put_u64(uint8_t *at, uint64_t v) {
  for (int i = 0; i < 8; i++) at[i] = (uint8_t)(v >> (8 * i));
}

void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size) {
  uint8_t config[CONFIG_SIZE];
  put_u64(config, served);
  memcpy(out, config + offset, size); /* the host already checked offset + size */
}
void vd_write_config(uint32_t offset, const uint8_t *data, size_t len) { (void)offset, (void)data, (void)len; }

const char *vd_activate(uint64_t acked_features) {
  (void)acked_features;
  vd_log(VD_LOG_INFO, "my-device activated");
  return NULL;
}

void vd_reset(void) {
  served = 0;
  vd_state_loader_reset(&loader);
}

const char *vd_handle(const vd_event *events, size_t n) {
  for (size_t i = 0; i < n; i++) {
    /* Requests only: this device moves no bytes through backings, so no io-failed comes. */
    if (events[i].kind != VD_EVENT_REQUEST) continue;
    const vd_request *r = &events[i].u.request;
    uint32_t len = r->prefix_len < r->writable_len ? r->prefix_len : r->writable_len;
    vd_answer_begin(r->id);
    uint8_t *out = vd_answer_bytes_buf(len); /* the reply, filled in place */
    for (uint32_t k = 0; k < len; k++) out[k] = r->prefix[r->prefix_len - 1 - k];
    served++;
  }
  return NULL;
}

/* State, in chunks: freeze it at offset 0 so every chunk of one save agrees. */
const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining) {
  if (offset == 0) {
    memcpy(saving, "MYDV", 4);
    put_u64(saving + 4, served);
  }
  return vd_state_serve(saving, STATE_SIZE, offset, size, out, remaining);
}

const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len) {
  return vd_state_accept(&loader, offset, chunk, len, "state chunk out of order or too long");
}

const char *vd_finish_load(void) {
  if (loader.len != STATE_SIZE || memcmp(loading, "MYDV", 4) != 0) return "not a my-device state";
  served = 0;
  for (int i = 0; i < 8; i++) served |= (uint64_t)loading[4 + i] << (8 * i);
  loader.len = 0;
  return NULL;
}
