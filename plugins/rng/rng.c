/*
 * virtio-rng (device id 4): one request queue; each request is answered with random
 * bytes from the host's entropy grant, as many as the request can hold (capped so one
 * greedy driver buffer cannot make us allocate without bound). It reads nothing of a
 * request (prefix-len 0) and moves no bytes through backings: a `bytes` piece each.
 *
 * State: "VRNG", a format version byte, 3 reserved zero bytes, then the number of
 * requests served as a little-endian u64. The counter exists so that migration has
 * something observable to carry over.
 */
#include "vhost_device.h"

#include <stdlib.h>
#include <string.h>

#define STATE_VERSION 1
#define STATE_SIZE 16
#define MAX_RESPONSE (64 * 1024)

static uint64_t served;

/* Save: the state is frozen at offset 0 so every chunk of one save agrees. */
static uint8_t saving[STATE_SIZE];
/* Load: chunks accumulate here until finish-load validates them. */
static uint8_t loading[STATE_SIZE];
static vd_state_loader loader = {.data = loading, .max = STATE_SIZE};

const char *vd_name(void) { return "rng"; }
const char *vd_version(void) { return "0.2.0"; }

void vd_get_info(vd_info *out) {
  out->device_id = 4;
  out->num_queues = 1;
  out->max_queue_size = 1024;
  out->features = 0;
  out->config_size = 0;
  out->prefix_len = 0;
  /* Each request stands alone; the served counter is per instance (see get-state). */
  out->queues_independent = 1;
}

void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size) {
  (void)offset, (void)out, (void)size;
}
void vd_write_config(uint32_t offset, const uint8_t *data, size_t len) {
  (void)offset, (void)data, (void)len;
}

const char *vd_activate(uint64_t acked) {
  if (acked) return "virtio-rng has no device features to ack";
  vd_log(VD_LOG_INFO, "virtio-rng activated");
  return NULL;
}

void vd_reset(void) {
  served = 0;
  vd_state_loader_reset(&loader);
}

/* One entropy import per batch rather than per request: crossing into the host costs
 * microseconds, copying a few KiB costs nanoseconds. Blocks stay under the host's
 * per-call limit. */
#define ENTROPY_BLOCK (256 * 1024)

static uint32_t response_len(const vd_request *r) {
  return r->writable_len > MAX_RESPONSE ? MAX_RESPONSE : r->writable_len;
}

const char *vd_handle(const vd_event *events, size_t n) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (events[i].kind == VD_EVENT_IO_FAILED) return "virtio-rng got io-failed, but it answers with bytes only";
    if (events[i].kind != VD_EVENT_REQUEST) continue; /* no frames or timers were asked for */
    if (events[i].u.request.queue != 0) return "virtio-rng has only queue 0";
    total += response_len(&events[i].u.request);
  }
  uint32_t block_size = total > ENTROPY_BLOCK ? ENTROPY_BLOCK : (uint32_t)total;
  uint8_t *block = NULL;
  uint32_t have = 0, used = 0;
  uint64_t left = total; /* bytes the rest of the batch still needs */
  for (size_t i = 0; i < n; i++) {
    if (events[i].kind != VD_EVENT_REQUEST) continue;
    const vd_request *r = &events[i].u.request;
    uint32_t len = response_len(r);
    vd_answer_begin(r->id);
    uint8_t *buf = vd_answer_bytes_buf(len);
    for (uint32_t done = 0; done < len;) {
      if (used == have) {
        /* Ask for what the rest of the batch needs, up to one block. */
        have = left > block_size ? block_size : (uint32_t)left;
        if (!block) block = malloc(block_size);
        if (!block) return "out of memory";
        vd_entropy_fill(block, have);
        used = 0;
      }
      uint32_t take = len - done < have - used ? len - done : have - used;
      memcpy(buf + done, block + used, take);
      done += take;
      used += take;
      left -= take;
    }
    served++;
  }
  free(block);
  return NULL;
}

static void encode(uint8_t out[STATE_SIZE]) {
  memset(out, 0, STATE_SIZE);
  vd_state_put_header(out, "VRNG", STATE_VERSION);
  for (int i = 0; i < 8; i++) out[8 + i] = (uint8_t)(served >> (8 * i));
}

const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining) {
  if (offset == 0) encode(saving);
  return vd_state_serve(saving, STATE_SIZE, offset, size, out, remaining);
}

const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len) {
  return vd_state_accept(&loader, offset, chunk, len, "state longer than the rng state format");
}

const char *vd_finish_load(void) {
  if (loader.overflow) return "state longer than the rng state format";
  if (loader.len != STATE_SIZE) return "state truncated";
  const char *err = vd_state_check_header(loading, "VRNG", STATE_VERSION, "not an rng state (bad magic)",
                                          "unsupported rng state version");
  if (err) return err;
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)loading[8 + i] << (8 * i);
  served = v;
  loader.len = 0;
  return NULL;
}
