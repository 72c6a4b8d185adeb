/*
 * vhost_device.h: write a vhost-wasm device plugin in plain C.
 *
 * vhost_device.c implements the canonical ABI of the `vhost:device@0.2.2` world
 * (wit/device.wit) by hand: it owns every allocation that crosses the boundary, so a
 * device author never sees pointers into lifted/lowered buffers, only the callbacks and
 * the answer builder below. Build with clang --target=wasm32-wasi -mexec-model=reactor and
 * link the SDK's .c files beside the device's own files; see plugins/build-plugins.mjs.
 *
 * The data path (docs/plugin-abi.md): the host calls vd_handle once per batch with every
 * event since the last call. A request shows only its first bytes (`prefix`, at most
 * vd_info.prefix_len) and its lengths. The device answers each one with what the host
 * should do: literal reply bytes, reads from a backing straight into the guest's buffers,
 * writes of the guest's bytes to a backing, backing ops. It never sees the payload.
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
  /* Readable bytes the device sees of each request (vd_request.prefix), at most 4096. */
  uint32_t prefix_len;
  /* 1 when each queue may run in its own instance on its own thread (every request stands
   * alone, as in blk); 0 when one instance must see every queue (fs: one inode table). */
  int queues_independent;
} vd_info;

/* One descriptor chain, without its payload. `prefix` is owned by the SDK and valid only
 * during the vd_handle call: copy what you keep. */
typedef struct vd_request {
  uint32_t id;
  uint16_t queue;
  const uint8_t *prefix;
  uint32_t prefix_len; /* min(readable_len, vd_info.prefix_len) */
  uint32_t readable_len;
  uint32_t writable_len;
} vd_request;

typedef enum vd_event_kind {
  VD_EVENT_REQUEST,
  /* A transfer, op or backing-read of an answer failed: nothing of it was written; answer
   * the id again (typically only bytes carrying the error status). */
  VD_EVENT_IO_FAILED,
  /* A frame on a granted network: only its prefix is here; read it into a held rx buffer
   * with vd_answer_frame_read in this same call, or it is dropped. */
  VD_EVENT_FRAME,
  VD_EVENT_TIMER, /* a wake-up asked for with vd_wake_after, or a host wait (vfs_setlk) that resolved */
} vd_event_kind;

typedef struct vd_event {
  vd_event_kind kind;
  union {
    vd_request request;
    struct {
      uint32_t id;
      uint32_t err; /* Linux errno: 5 EIO, 28 ENOSPC, ... */
      /* The request as it arrived (prefix NULL: it is gone) and the cookie the device set on
       * it (vd_set_cookie); `known` is 0 when the SDK does not remember the id (a host bug). */
      vd_request request;
      uint64_t cookie;
      int known;
    } io_failed;
    struct {
      uint32_t id;      /* names the frame in vd_answer_frame_read, this call only */
      uint32_t network; /* index of the network grant (0 = the first) */
      uint32_t from_port;
      uint32_t len; /* bytes of the whole frame, Ethernet header included */
      const uint8_t *prefix; /* its first min(len, vd_info.prefix_len) bytes (valid this call) */
      uint32_t prefix_len;
    } frame;
    uint64_t timer;
  } u;
} vd_event;

/* ---- Callbacks every device implements ---- */

const char *vd_name(void);
const char *vd_version(void);
void vd_get_info(vd_info *out);
/* `out` holds `size` zero bytes; fill what the device has. The host checked the range. */
void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size);
void vd_write_config(uint32_t offset, const uint8_t *data, size_t len);
const char *vd_activate(uint64_t acked_features);
void vd_reset(void);
/*
 * Every event since the last call. Answer (vd_answer_begin ...) or hold (vd_hold) each
 * request and each io-failed event exactly once, in any order; requests held earlier may be
 * answered here too. An error fails the device (NEEDS_RESET): keep it for device bugs, never
 * for what a guest sent (answer those with the device's error status).
 */
const char *vd_handle(const vd_event *events, size_t n);
/* At most `size` bytes of state from `offset` into `out`, and how many bytes follow them. */
typedef struct vd_buf {
  uint8_t *data; /* from malloc (or NULL when len is 0); the SDK frees it */
  size_t len;
} vd_buf;
const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining);
const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len);
const char *vd_finish_load(void);

/* ---- Answers (only inside vd_handle) ----
 * One answer is built at a time: vd_answer_begin(id) starts it (and ends the one before),
 * every other vd_answer_* call adds to it. Reply pieces fill the request's writable area in
 * order from its start; the used length is what they cover. The host checks everything
 * (ranges against the request, the backing's size, the grant) before it touches anything. */

/* Backing 0 is the --storage grant; an fs open file gets its index from vfs_backing. */
typedef uint32_t vd_backing;

void vd_answer_begin(uint32_t id);
/* Literal reply bytes (copied). */
void vd_answer_bytes(const void *data, uint32_t len);
/* `len` literal reply bytes to fill in place, zeroed; valid until the next vd_* call. */
uint8_t *vd_answer_bytes_buf(uint32_t len);
/* `len` bytes of `backing` from `offset`, read by the host straight into the guest's buffers. */
void vd_answer_backing_read(vd_backing backing, uint64_t offset, uint32_t len);
void vd_answer_zeroes(uint32_t len);
/* Leave `len` bytes of the guest's buffer as they are (they count in the used length). */
void vd_answer_skip(uint32_t len);
/* Readable bytes [source, source + len) of the request (prefix included) go to `backing` at
 * `offset`. Transfers run before ops, in the order given. */
void vd_answer_transfer(uint32_t source, vd_backing backing, uint64_t offset, uint32_t len);
typedef enum vd_op_kind { VD_OP_FLUSH, VD_OP_DISCARD, VD_OP_WRITE_ZEROES } vd_op_kind;
void vd_answer_op(vd_op_kind kind, vd_backing backing, uint64_t offset, uint64_t len);
/* After a short last backing-read (end of file), the host stores the final used length as a
 * little-endian u32 at byte `at` of the writable area (FUSE's out-header len). */
void vd_answer_length_at(uint32_t at);
/* Start only after every request answered before this one has completed (virtio-blk FLUSH). */
void vd_answer_barrier(void);
/* Bytes [offset, offset + len) of frame `frame` (a VD_EVENT_FRAME of this call), copied by the
 * host straight into the guest's buffers. */
void vd_answer_frame_read(uint32_t frame, uint32_t offset, uint32_t len);

/* Send readable bytes [source, source + len) of request `request` (answered or held in this
 * call) as one frame on network `network`: vd_send floods it to every other port, vd_send_to
 * sends it to `port` only. `len` must be 14 to vd_network_mtu(network) + 18: the host fails
 * the device otherwise, so check what the guest sent first. */
void vd_send(uint32_t network, uint32_t request, uint32_t source, uint32_t len);
void vd_send_to(uint32_t network, uint32_t request, uint32_t source, uint32_t len, uint32_t port);

/* Keep request `id`: it is answered in a later vd_handle call (the host still owns its buffers). */
void vd_hold(uint32_t id);
/* Deliver a VD_EVENT_TIMER with `token` after at least `nanoseconds`. */
void vd_wake_after(uint64_t nanoseconds, uint64_t token);

/* A value the device keeps with request `id` until the SDK forgets the id, handed back with
 * an io-failed event for it (FUSE: the request's `unique`). The SDK remembers each request
 * from its event until it is answered with nothing but literal pieces (it then completes
 * whatever happens) or its id comes again in a new request. */
void vd_set_cookie(uint32_t id, uint64_t cookie);

/* ---- Host services ---- */

enum vd_log_level { VD_LOG_ERROR, VD_LOG_WARN, VD_LOG_INFO, VD_LOG_DEBUG, VD_LOG_TRACE };
void vd_log(enum vd_log_level level, const char *message);

/* Fill `dst` with `len` random bytes from the host. Traps if entropy was not granted. */
void vd_entropy_fill(uint8_t *dst, uint32_t len);

/* Block storage (wit `storage`), backing 0 in answers. Every call traps if the operator
 * granted no storage. The bytes never pass through the plugin: name ranges in answers. */
uint64_t vd_storage_size(void);
int vd_storage_read_only(void);
/* The store's logical block size (512 or 4096). */
uint32_t vd_storage_block_size(void);

/* Networks (wit `network`), numbered in grant order from 0; count is 0 without a grant. The MTU
 * excludes the 14-byte Ethernet header; vd_network_mtu traps for an index >= count. */
uint32_t vd_network_count(void);
uint32_t vd_network_mtu(uint32_t index);

/* The operator's setting `key` for this device (--plugin-option KEY=VALUE; the daemon config's
 * "options"), NUL-terminated, from malloc (free it), or NULL when none was given. A value may
 * contain any byte but NUL as text; a device refuses (fails its load on) values it cannot use. */
char *vd_option(const char *key);

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
