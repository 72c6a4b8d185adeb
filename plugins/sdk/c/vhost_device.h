/*
 * vhost_device.h: write a vhost-wasm device plugin in plain C.
 *
 * vhost_device.c implements the canonical ABI of the `vhost:device@0.1.0` world
 * (wit/device.wit) by hand: it owns every allocation that crosses the boundary, so a
 * device author never sees pointers into lifted/lowered buffers, only the callbacks
 * below. Build with clang --target=wasm32-wasi -mexec-model=reactor and link
 * the SDK's .c files beside the device's own files; see plugins/build-plugins.mjs.
 *
 * Error convention: a callback returning `const char *` returns NULL on success or a
 * message describing the failure (any lifetime: the SDK copies it before returning).
 */
#ifndef VHOST_DEVICE_H
#define VHOST_DEVICE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vd_info {
  uint32_t device_id;
  uint16_t num_queues;
  uint16_t max_queue_size;
  uint64_t features;
  uint32_t config_size;
} vd_info;

/* One descriptor chain. `readable` is owned by the SDK and valid only during the call. */
typedef struct vd_request {
  const uint8_t *readable;
  size_t readable_len;
  uint32_t writable_len;
} vd_request;

/* A buffer handed to the SDK: `data` must come from malloc (or be NULL when len is 0);
 * the SDK frees it once the host has copied it out. */
typedef struct vd_buf {
  uint8_t *data;
  size_t len;
} vd_buf;

/* ---- Callbacks every device implements ---- */

const char *vd_name(void);
const char *vd_version(void);
void vd_get_info(vd_info *out);
/* `out` holds `size` zero bytes; fill what the device has. The host checked the range. */
void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size);
void vd_write_config(uint32_t offset, const uint8_t *data, size_t len);
const char *vd_activate(uint64_t acked_features);
void vd_reset(void);
/* `responses` has `n` zeroed entries; set each to at most requests[i].writable_len bytes. */
const char *vd_process(uint16_t queue, const vd_request *requests, size_t n, vd_buf *responses);
/* At most `size` bytes of state from `offset` into `out`, and how many bytes follow them. */
const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining);
const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len);
const char *vd_finish_load(void);

/* ---- Host services ---- */

enum vd_log_level { VD_LOG_ERROR, VD_LOG_WARN, VD_LOG_INFO, VD_LOG_DEBUG, VD_LOG_TRACE };
void vd_log(enum vd_log_level level, const char *message);

/* Fill `dst` with `len` random bytes from the host. Traps if entropy was not granted. */
void vd_entropy_fill(uint8_t *dst, uint32_t len);

/* Block storage (wit `storage`). Every call traps if the operator granted no storage;
 * the host checks every range against vd_storage_size(). */
typedef enum vd_storage_status {
  VD_STORAGE_OK = 0,
  VD_STORAGE_IO = 1,           /* the backing failed; the host logged why */
  VD_STORAGE_OUT_OF_RANGE = 2, /* past the end, or more than one call may move */
  VD_STORAGE_READ_ONLY = 3,    /* a modifying call through a read-only grant */
} vd_storage_status;

uint64_t vd_storage_size(void);
int vd_storage_read_only(void);
/* Exactly `len` bytes from `offset` into `dst` (untouched unless VD_STORAGE_OK). */
vd_storage_status vd_storage_read(uint64_t offset, uint8_t *dst, uint32_t len);
/* The same without the copy: on VD_STORAGE_OK `out` holds a malloc'd buffer of exactly
 * `len` bytes (the one the host wrote into), which the caller now owns. Hand it on as a
 * response, or realloc it a little larger (dlmalloc usually grows it in place). */
vd_storage_status vd_storage_read_buf(uint64_t offset, uint32_t len, vd_buf *out);
vd_storage_status vd_storage_write(uint64_t offset, const uint8_t *src, uint32_t len);
/* Makes every write that returned VD_STORAGE_OK before it durable. */
vd_storage_status vd_storage_flush(void);
vd_storage_status vd_storage_discard(uint64_t offset, uint64_t len);
vd_storage_status vd_storage_write_zeroes(uint64_t offset, uint64_t len);

/* ---- Little-endian fields (wasm32 is little-endian; memcpy keeps unaligned access defined) ---- */

static inline void vd_put_u16(uint8_t *at, uint16_t v) { memcpy(at, &v, 2); }
static inline void vd_put_u32(uint8_t *at, uint32_t v) { memcpy(at, &v, 4); }
static inline void vd_put_u64(uint8_t *at, uint64_t v) { memcpy(at, &v, 8); }
static inline uint32_t vd_get_u32(const uint8_t *at) {
  uint32_t v;
  memcpy(&v, at, 4);
  return v;
}
static inline uint64_t vd_get_u64(const uint8_t *at) {
  uint64_t v;
  memcpy(&v, at, 8);
  return v;
}

/* ---- State helpers (plain C; no host call, nothing in the WIT) ----
 * vd_get_state/vd_set_state move a device's state in chunks, in order. A device that
 * serializes its state into one blob at offset 0 can hand both ends to these. */

/* vd_get_state for a serialized blob of `len` bytes: the chunk at `offset` (at most `size`
 * bytes, malloc'd into `out`) and how many bytes follow it. NULL on success. */
const char *vd_state_serve(const uint8_t *blob, uint64_t len, uint64_t offset, uint32_t size, vd_buf *out,
                           uint64_t *remaining);

/* Collects vd_set_state chunks. Either a fixed buffer (`data` of `max` bytes, `grow` 0) or,
 * with `grow` 1, a malloc'd one grown as chunks arrive, up to `max` bytes (vd_state_loader_reset
 * releases it). `len` counts the bytes accepted since the last offset 0; `overflow` is set
 * when a chunk would have passed `max`, so finish-load can refuse the state too. */
typedef struct vd_state_loader {
  uint8_t *data;
  size_t len;
  size_t cap;
  size_t max;
  int overflow;
  int grow;
} vd_state_loader;

/* Accepts the chunk at `offset`: offset 0 starts over; any other offset must continue the
 * previous chunk ("state chunk out of order"); a chunk past `max` returns `too_long`. */
const char *vd_state_accept(vd_state_loader *l, uint64_t offset, const uint8_t *chunk, size_t len,
                            const char *too_long);
/* Empties the loader (len and overflow back to 0); a growing one also frees its buffer. */
void vd_state_loader_reset(vd_state_loader *l);

/* The 8-byte header several formats share: 4-byte magic, u8 version, 3 zero bytes. */
#define VD_STATE_HEADER 8
void vd_state_put_header(uint8_t *out, const char magic[4], uint8_t version);
/* NULL when `in` starts with that header, else `bad_magic`, `bad_version` or the message for
 * non-zero reserved bytes. */
const char *vd_state_check_header(const uint8_t *in, const char magic[4], uint8_t version, const char *bad_magic,
                                  const char *bad_version);

#ifdef __cplusplus
}
#endif

#endif
