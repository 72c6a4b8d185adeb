/*
 * vhost_device.h: write a vhost-wasm device plugin in plain C.
 *
 * vhost_device.c implements the canonical ABI of the `vhost:device@0.1.0` world
 * (wit/device.wit) by hand: it owns every allocation that crosses the boundary, so a
 * device author never sees pointers into lifted/lowered buffers, only the callbacks
 * below. Build with clang --target=wasm32-wasi -mexec-model=reactor and link
 * vhost_device.c beside the device's own file; see plugins/build-plugins.mjs.
 *
 * Error convention: a callback returning `const char *` returns NULL on success or a
 * message describing the failure (any lifetime: the SDK copies it before returning).
 */
#ifndef VHOST_DEVICE_H
#define VHOST_DEVICE_H

#include <stddef.h>
#include <stdint.h>

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

#ifdef __cplusplus
}
#endif

#endif
