/*
 * Canonical ABI glue for the vhost:device@0.2.2 world (wasm32, one linear memory).
 *
 * Ownership rules this file follows (Component Model canonical ABI):
 *  - Lists and strings the host passes in were allocated in our memory through
 *    cabi_realloc and now belong to us: free them once the callback returns.
 *  - Lists and strings we return stay alive until the host has copied them; the host
 *    then calls the matching cabi_post_* export, which frees them.
 *  - Results wider than one core value go through a static return area; the host reads
 *    it before the next call, so one area serves every export.
 *  - `handle`'s actions live in arrays this file keeps from call to call (grown to the
 *    largest batch, never shrunk): the host has lifted them before it calls again, so
 *    answering a batch allocates nothing once the arrays are big enough.
 */
#include "vhost_device.h"
#include "vhost_abi.h"

#include <stdlib.h>
#include <string.h>

/* Overridable only so tests can build a plugin for another version (an older one the host still
 * accepts, or one it refuses). */
#ifndef VD_WIT_VERSION
#define VD_WIT_VERSION "0.2.2"
#endif
#define VD_IFACE(name) "vhost:device/" name "@" VD_WIT_VERSION
#define VD_EXPORT(fn) __attribute__((export_name(VD_IFACE("device") "#" fn)))
#define VD_POST(fn) __attribute__((export_name("cabi_post_" VD_IFACE("device") "#" fn)))

/* ---- Memory ---- */

__attribute__((export_name("cabi_realloc"))) void *cabi_realloc(void *old, size_t old_size,
                                                                  size_t align, size_t new_size) {
  (void)old_size;
  (void)align; /* malloc aligns to 16, more than any type in this world needs */
  void *p = old ? realloc(old, new_size) : malloc(new_size ? new_size : 1);
  /* The ABI has no way to report failure: a null here would be written through. */
  if (!p) __builtin_trap();
  return p;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) __builtin_trap();
  return p;
}

/* One return area for every export: as large as the largest, aligned for any of them. */
#define RET_AREA_SIZE VD_ABI_SIZEOF_DEVICE_INFO_RET
static _Alignas(8) uint8_t ret_area[RET_AREA_SIZE];
_Static_assert(VD_ABI_SIZEOF_DEVICE_GET_STATE_RET <= RET_AREA_SIZE && VD_ABI_SIZEOF_DEVICE_IDENTITY_RET <= RET_AREA_SIZE &&
                   VD_ABI_SIZEOF_DEVICE_HANDLE_RET <= RET_AREA_SIZE && VD_ABI_SIZEOF_DEVICE_ACTIVATE_RET <= RET_AREA_SIZE &&
                   VD_ABI_SIZEOF_DEVICE_READ_CONFIG_RET <= RET_AREA_SIZE,
               "ret_area must hold every export's return area");
_Static_assert(VD_ABI_ALIGNOF_DEVICE_INFO <= 8 && VD_ABI_ALIGNOF_STATE_CHUNK <= 8, "ret_area alignment");

static void put_list(uint8_t *at, const void *ptr, size_t len) {
  vd_put_u32(at, (uint32_t)(uintptr_t)ptr);
  vd_put_u32(at + VD_ABI_LIST_LEN, (uint32_t)len);
}

/* result<_, string>: the layout activate, set-state, finish-load (and a failed handle) share. */
#define UNIT_RESULT_SIZE VD_ABI_SIZEOF_DEVICE_ACTIVATE_RET
#define UNIT_RESULT_ERR VD_ABI_DEVICE_ACTIVATE_RET_ERR
_Static_assert(VD_ABI_SIZEOF_DEVICE_SET_STATE_RET == UNIT_RESULT_SIZE && VD_ABI_DEVICE_SET_STATE_RET_ERR == UNIT_RESULT_ERR &&
                   VD_ABI_SIZEOF_DEVICE_FINISH_LOAD_RET == UNIT_RESULT_SIZE &&
                   VD_ABI_DEVICE_FINISH_LOAD_RET_ERR == UNIT_RESULT_ERR && VD_ABI_DEVICE_HANDLE_RET_ERR == UNIT_RESULT_ERR &&
                   VD_ABI_SIZEOF_DEVICE_HANDLE_RET == UNIT_RESULT_SIZE,
               "activate, set-state, finish-load and handle share the result<_, string> layout");

static uint8_t *unit_result(const char *err) {
  memset(ret_area, 0, UNIT_RESULT_SIZE);
  if (err) {
    size_t n = strlen(err);
    char *copy = xmalloc(n);
    memcpy(copy, err, n);
    ret_area[0] = 1;
    put_list(ret_area + UNIT_RESULT_ERR, copy, n);
  }
  return ret_area;
}

static void free_unit_result(uint8_t *ret) {
  if (ret[0] == 1) free((void *)(uintptr_t)vd_get_u32(ret + UNIT_RESULT_ERR));
}

/* ---- Imports ---- */

__attribute__((import_module(VD_IFACE("log")), import_name("write"))) extern void
vd_import_log_write(int32_t level, const char *msg, size_t len);

__attribute__((import_module(VD_IFACE("entropy")), import_name("fill"))) extern void
vd_import_entropy_fill(uint32_t len, uint8_t *ret);

_Static_assert(VD_LOG_ERROR == VD_ABI_LEVEL_ERROR && VD_LOG_WARN == VD_ABI_LEVEL_WARN && VD_LOG_INFO == VD_ABI_LEVEL_INFO &&
                   VD_LOG_DEBUG == VD_ABI_LEVEL_DEBUG && VD_LOG_TRACE == VD_ABI_LEVEL_TRACE,
               "enum vd_log_level is the WIT log level, case for case");

void vd_log(enum vd_log_level level, const char *message) {
  vd_import_log_write((int32_t)level, message, strlen(message));
}

void vd_entropy_fill(uint8_t *dst, uint32_t len) {
  _Alignas(4) uint8_t ret[VD_ABI_SIZEOF_ENTROPY_FILL_RET];
  vd_import_entropy_fill(len, ret);
  uint8_t *got = (uint8_t *)(uintptr_t)vd_get_u32(ret);
  uint32_t got_len = vd_get_u32(ret + VD_ABI_LIST_LEN);
  /* A short answer would leave predictable bytes in dst: never pass that on. */
  if (got_len != len) __builtin_trap();
  memcpy(dst, got, len);
  free(got);
}

/* storage: sizes and flags only; the bytes move through answers (backing 0). */
#define VD_STORAGE_IMPORT(name) \
  __attribute__((import_module(VD_IFACE("storage")), import_name(name))) extern

VD_STORAGE_IMPORT("size") int64_t vd_import_storage_size(void);
VD_STORAGE_IMPORT("read-only") int32_t vd_import_storage_read_only(void);
VD_STORAGE_IMPORT("block-size") int32_t vd_import_storage_block_size(void);

uint64_t vd_storage_size(void) { return (uint64_t)vd_import_storage_size(); }
int vd_storage_read_only(void) { return vd_import_storage_read_only() != 0; }
uint32_t vd_storage_block_size(void) { return (uint32_t)vd_import_storage_block_size(); }

/* network: how many, and each one's MTU; frames move through events and actions. */
#define VD_NETWORK_IMPORT(name) \
  __attribute__((import_module(VD_IFACE("network")), import_name(name))) extern

VD_NETWORK_IMPORT("count") int32_t vd_import_network_count(void);
VD_NETWORK_IMPORT("mtu") int32_t vd_import_network_mtu(int32_t index);

uint32_t vd_network_count(void) { return (uint32_t)vd_import_network_count(); }
uint32_t vd_network_mtu(uint32_t index) { return (uint32_t)vd_import_network_mtu((int32_t)index); }

/* options: the operator's settings for this device (--plugin-option KEY=VALUE). */
__attribute__((import_module(VD_IFACE("options")), import_name("get"))) extern void
vd_import_options_get(const char *key, size_t len, uint8_t *ret);

char *vd_option(const char *key) {
  _Alignas(4) uint8_t ret[VD_ABI_SIZEOF_OPTIONS_GET_RET];
  vd_import_options_get(key, strlen(key), ret);
  if (ret[0] == 0) return NULL;
  /* The host allocated the string through cabi_realloc: ours now; add the terminator. */
  char *got = (char *)(uintptr_t)vd_get_u32(ret + VD_ABI_OPTIONS_GET_RET_SOME);
  uint32_t len = vd_get_u32(ret + VD_ABI_OPTIONS_GET_RET_SOME + VD_ABI_LIST_LEN);
  /* An empty value comes without an allocation (the glue passes a dangling, aligned pointer
   * for a zero-length list): never hand that to realloc. */
  char *s = len == 0 ? malloc(1) : realloc(got, (size_t)len + 1);
  if (!s) __builtin_trap();
  s[len] = '\0';
  return s;
}

/* ---- Exports ---- */

VD_EXPORT("identity") uint8_t *vd_export_identity(void) {
  const char *name = vd_name(), *version = vd_version();
  put_list(ret_area + VD_ABI_PLUGIN_IDENTITY_NAME, name, strlen(name));
  put_list(ret_area + VD_ABI_PLUGIN_IDENTITY_VERSION, version, strlen(version));
  return ret_area;
}

VD_EXPORT("info") uint8_t *vd_export_info(void) {
  vd_info info = {0};
  vd_get_info(&info);
  memset(ret_area, 0, VD_ABI_SIZEOF_DEVICE_INFO);
  vd_put_u32(ret_area + VD_ABI_DEVICE_INFO_DEVICE_ID, info.device_id);
  memcpy(ret_area + VD_ABI_DEVICE_INFO_NUM_QUEUES, &info.num_queues, 2);
  memcpy(ret_area + VD_ABI_DEVICE_INFO_MAX_QUEUE_SIZE, &info.max_queue_size, 2);
  vd_put_u64(ret_area + VD_ABI_DEVICE_INFO_FEATURES, info.features);
  vd_put_u32(ret_area + VD_ABI_DEVICE_INFO_CONFIG_SIZE, info.config_size);
  vd_put_u32(ret_area + VD_ABI_DEVICE_INFO_PREFIX_LEN, info.prefix_len);
  ret_area[VD_ABI_DEVICE_INFO_QUEUES_INDEPENDENT] = info.queues_independent ? 1 : 0;
  return ret_area;
}

VD_EXPORT("read-config") uint8_t *vd_export_read_config(uint32_t offset, uint32_t size) {
  uint8_t *out = xmalloc(size);
  memset(out, 0, size);
  vd_read_config(offset, out, size);
  put_list(ret_area, out, size);
  return ret_area;
}

VD_POST("read-config") void vd_post_read_config(uint8_t *ret) {
  free((void *)(uintptr_t)vd_get_u32(ret));
}

VD_EXPORT("write-config") void vd_export_write_config(uint32_t offset, uint8_t *data, size_t len) {
  vd_write_config(offset, data, len);
  free(data);
}

VD_EXPORT("activate") uint8_t *vd_export_activate(uint64_t acked) {
  return unit_result(vd_activate(acked));
}
VD_POST("activate") void vd_post_activate(uint8_t *ret) { free_unit_result(ret); }

static void memo_clear(void);

VD_EXPORT("reset") void vd_export_reset(void) {
  /* Requests held or in flight are forgotten with the rings. */
  memo_clear();
  vd_reset();
}

/* ---- handle: events in, actions out ---- */

/* A growable array of fixed-size elements, kept from batch to batch. */
typedef struct grow {
  uint8_t *data;
  size_t n, cap, elem;
} grow;

static void *grow_push(grow *g) {
  if (g->n == g->cap) {
    size_t nc = g->cap ? g->cap * 2 : 64;
    uint8_t *p = realloc(g->data, nc * g->elem);
    if (!p) __builtin_trap();
    g->data = p;
    g->cap = nc;
  }
  uint8_t *at = g->data + g->n++ * g->elem;
  memset(at, 0, g->elem);
  return at;
}

static grow actions = {.elem = VD_ABI_SIZEOF_ACTION};
static grow pieces = {.elem = VD_ABI_SIZEOF_PIECE};
static grow transfers = {.elem = VD_ABI_SIZEOF_TRANSFER};
static grow ops = {.elem = VD_ABI_SIZEOF_BACKING_OP};
/* Literal reply bytes of the batch; pieces hold offsets into it until the batch ends. */
static grow arena = {.elem = 1};
static grow events_in = {.elem = sizeof(vd_event)};

/* The answer being built: its action, where its lists start, whether it moves bytes. */
static long cur_action = -1;
static size_t cur_pieces, cur_transfers, cur_ops;
static int cur_io;
/* The first misuse of the builder in this batch (a device bug): handle returns it. */
static const char *misuse;

/* ---- What the SDK remembers per request id (for io-failed events) ----
 * Open addressing with linear probing keyed by id; deletion shifts back (no tombstones). */
typedef struct memo {
  uint32_t used;
  vd_request req;
  uint64_t cookie;
} memo;
static memo *memos;
static size_t memo_cap, memo_n; /* cap is a power of two */

static size_t memo_slot(uint32_t id) { return (id * 2654435761u) & (memo_cap - 1); }

static memo *memo_find(uint32_t id) {
  if (!memo_cap) return NULL;
  for (size_t i = memo_slot(id);; i = (i + 1) & (memo_cap - 1)) {
    if (!memos[i].used) return NULL;
    if (memos[i].req.id == id) return &memos[i];
  }
}

static void memo_put(const vd_request *r);

static void memo_grow(void) {
  memo *old = memos;
  size_t old_cap = memo_cap;
  memo_cap = old_cap ? old_cap * 2 : 256;
  memos = calloc(memo_cap, sizeof *memos);
  if (!memos) __builtin_trap();
  memo_n = 0;
  for (size_t i = 0; i < old_cap; i++) {
    if (!old[i].used) continue;
    memo_put(&old[i].req);
    memo_find(old[i].req.id)->cookie = old[i].cookie;
  }
  free(old);
}

static void memo_put(const vd_request *r) {
  if ((memo_n + 1) * 2 > memo_cap) memo_grow();
  size_t i = memo_slot(r->id);
  while (memos[i].used && memos[i].req.id != r->id) i = (i + 1) & (memo_cap - 1);
  if (!memos[i].used) memo_n++;
  memos[i].used = 1;
  memos[i].req = *r;
  memos[i].req.prefix = NULL;
  memos[i].req.prefix_len = 0;
  memos[i].cookie = 0;
}

static void memo_del(uint32_t id) {
  memo *m = memo_find(id);
  if (!m) return;
  size_t i = (size_t)(m - memos);
  memos[i].used = 0;
  memo_n--;
  /* Shift back every entry of the run after i that may live at i (its home is not in (i, j]). */
  for (size_t j = (i + 1) & (memo_cap - 1); memos[j].used; j = (j + 1) & (memo_cap - 1)) {
    size_t home = memo_slot(memos[j].req.id);
    int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (between) continue;
    memos[i] = memos[j];
    memos[j].used = 0;
    i = j;
  }
}

static void memo_clear(void) {
  free(memos);
  memos = NULL;
  memo_cap = memo_n = 0;
}

void vd_set_cookie(uint32_t id, uint64_t cookie) {
  memo *m = memo_find(id);
  if (m) m->cookie = cookie;
}

/* ---- The answer builder ---- */

static uint8_t *cur(void) { return actions.data + (size_t)cur_action * VD_ABI_SIZEOF_ACTION; }

/* Closes the answer being built: its lists as (first index, count) until the batch ends. */
static void answer_end(void) {
  if (cur_action < 0) return;
  uint8_t *a = cur() + VD_ABI_ACTION_PAYLOAD;
  put_list(a + VD_ABI_ANSWER_TRANSFERS, (void *)(uintptr_t)cur_transfers, transfers.n - cur_transfers);
  put_list(a + VD_ABI_ANSWER_OPS, (void *)(uintptr_t)cur_ops, ops.n - cur_ops);
  put_list(a + VD_ABI_ANSWER_REPLY, (void *)(uintptr_t)cur_pieces, pieces.n - cur_pieces);
  /* Literal pieces only: the request completes whatever happens, so its id is done with. */
  if (!cur_io) memo_del(vd_get_u32(a + VD_ABI_ANSWER_ID));
  cur_action = -1;
}

void vd_answer_begin(uint32_t id) {
  answer_end();
  uint8_t *act = grow_push(&actions);
  act[0] = VD_ABI_ACTION_ANSWER;
  vd_put_u32(act + VD_ABI_ACTION_PAYLOAD + VD_ABI_ANSWER_ID, id);
  cur_action = (long)(actions.n - 1);
  cur_pieces = pieces.n;
  cur_transfers = transfers.n;
  cur_ops = ops.n;
  cur_io = 0;
}

static int building(const char *what) {
  if (cur_action >= 0) return 1;
  if (!misuse) misuse = what;
  return 0;
}

static uint8_t *piece(uint8_t kind) {
  uint8_t *p = grow_push(&pieces);
  p[0] = kind;
  return p + VD_ABI_PIECE_PAYLOAD;
}

uint8_t *vd_answer_bytes_buf(uint32_t len) {
  /* The room is reserved even when the call is a misuse (reported by handle), so the caller
   * may always write `len` bytes into what it gets. */
  int ok = building("vd_answer_bytes outside an answer (call vd_answer_begin first)");
  size_t at = arena.n;
  if (arena.cap - arena.n < len) {
    size_t nc = arena.cap ? arena.cap * 2 : 4096;
    while (nc - arena.n < len) nc *= 2;
    uint8_t *p = realloc(arena.data, nc);
    if (!p) __builtin_trap();
    arena.data = p;
    arena.cap = nc;
  }
  arena.n += len;
  if (len) memset(arena.data + at, 0, len);
  if (ok) put_list(piece(VD_ABI_PIECE_BYTES), (void *)(uintptr_t)at, len);
  return arena.data + at;
}

void vd_answer_bytes(const void *data, uint32_t len) {
  uint8_t *p = vd_answer_bytes_buf(len);
  if (len) memcpy(p, data, len);
}

static void put_extent(uint8_t *at, vd_backing backing, uint64_t offset, uint32_t len) {
  vd_put_u32(at + VD_ABI_EXTENT_BACKING, backing);
  vd_put_u64(at + VD_ABI_EXTENT_OFFSET, offset);
  vd_put_u32(at + VD_ABI_EXTENT_LEN, len);
}

void vd_answer_backing_read(vd_backing backing, uint64_t offset, uint32_t len) {
  if (!building("vd_answer_backing_read outside an answer")) return;
  put_extent(piece(VD_ABI_PIECE_BACKING_READ), backing, offset, len);
  cur_io = 1;
}

void vd_answer_zeroes(uint32_t len) {
  if (building("vd_answer_zeroes outside an answer")) vd_put_u32(piece(VD_ABI_PIECE_ZEROES), len);
}

void vd_answer_skip(uint32_t len) {
  if (building("vd_answer_skip outside an answer")) vd_put_u32(piece(VD_ABI_PIECE_SKIP), len);
}

void vd_answer_transfer(uint32_t source, vd_backing backing, uint64_t offset, uint32_t len) {
  if (!building("vd_answer_transfer outside an answer")) return;
  uint8_t *t = grow_push(&transfers);
  vd_put_u32(t + VD_ABI_TRANSFER_SOURCE, source);
  put_extent(t + VD_ABI_TRANSFER_TO, backing, offset, len);
  cur_io = 1;
}

_Static_assert(VD_OP_FLUSH == VD_ABI_BACKING_OP_KIND_FLUSH && VD_OP_DISCARD == VD_ABI_BACKING_OP_KIND_DISCARD &&
                   VD_OP_WRITE_ZEROES == VD_ABI_BACKING_OP_KIND_WRITE_ZEROES,
               "enum vd_op_kind is the WIT backing-op-kind, case for case");

void vd_answer_op(vd_op_kind kind, vd_backing backing, uint64_t offset, uint64_t len) {
  if (!building("vd_answer_op outside an answer")) return;
  uint8_t *o = grow_push(&ops);
  o[VD_ABI_BACKING_OP_KIND] = (uint8_t)kind;
  vd_put_u32(o + VD_ABI_BACKING_OP_BACKING, backing);
  vd_put_u64(o + VD_ABI_BACKING_OP_OFFSET, offset);
  vd_put_u64(o + VD_ABI_BACKING_OP_LEN, len);
  cur_io = 1;
}

void vd_answer_length_at(uint32_t at) {
  if (!building("vd_answer_length_at outside an answer")) return;
  uint8_t *opt = cur() + VD_ABI_ACTION_PAYLOAD + VD_ABI_ANSWER_LENGTH_AT;
  opt[0] = 1;
  vd_put_u32(opt + VD_ABI_ANSWER_LENGTH_AT_SOME, at);
}

void vd_answer_barrier(void) {
  if (building("vd_answer_barrier outside an answer")) cur()[VD_ABI_ACTION_PAYLOAD + VD_ABI_ANSWER_BARRIER] = 1;
}

void vd_answer_frame_read(uint32_t frame, uint32_t offset, uint32_t len) {
  if (!building("vd_answer_frame_read outside an answer")) return;
  /* A memory copy by the host: it cannot fail, so the request needs no cookie (cur_io stays). */
  uint8_t *p = piece(VD_ABI_PIECE_FRAME_READ);
  vd_put_u32(p + VD_ABI_FRAME_SLICE_FRAME, frame);
  vd_put_u32(p + VD_ABI_FRAME_SLICE_OFFSET, offset);
  vd_put_u32(p + VD_ABI_FRAME_SLICE_LEN, len);
}

static uint8_t *send_action(uint32_t network, uint32_t request, uint32_t source, uint32_t len) {
  answer_end();
  uint8_t *act = grow_push(&actions);
  act[0] = VD_ABI_ACTION_SEND;
  uint8_t *s = act + VD_ABI_ACTION_PAYLOAD;
  vd_put_u32(s + VD_ABI_SEND_NETWORK, network);
  vd_put_u32(s + VD_ABI_SEND_REQUEST, request);
  vd_put_u32(s + VD_ABI_SEND_SOURCE, source);
  vd_put_u32(s + VD_ABI_SEND_LEN, len);
  s[VD_ABI_SEND_TO] = 0;
  return s;
}

void vd_send(uint32_t network, uint32_t request, uint32_t source, uint32_t len) {
  send_action(network, request, source, len);
}

void vd_send_to(uint32_t network, uint32_t request, uint32_t source, uint32_t len, uint32_t port) {
  uint8_t *s = send_action(network, request, source, len);
  s[VD_ABI_SEND_TO] = 1;
  vd_put_u32(s + VD_ABI_SEND_TO + VD_ABI_SEND_TO_SOME, port);
}

void vd_hold(uint32_t id) {
  answer_end();
  uint8_t *act = grow_push(&actions);
  act[0] = VD_ABI_ACTION_HOLD;
  vd_put_u32(act + VD_ABI_ACTION_PAYLOAD, id);
}

void vd_wake_after(uint64_t nanoseconds, uint64_t token) {
  answer_end();
  uint8_t *act = grow_push(&actions);
  act[0] = VD_ABI_ACTION_WAKE_AFTER;
  vd_put_u64(act + VD_ABI_ACTION_PAYLOAD + VD_ABI_ACTION_WAKE_AFTER_0, nanoseconds);
  vd_put_u64(act + VD_ABI_ACTION_PAYLOAD + VD_ABI_ACTION_WAKE_AFTER_1, token);
}

/* The batch is complete: every list index becomes a pointer (nothing grows any more). */
static void batch_end(void) {
  answer_end();
  for (size_t i = 0; i < pieces.n; i++) {
    uint8_t *p = pieces.data + i * VD_ABI_SIZEOF_PIECE;
    if (p[0] != VD_ABI_PIECE_BYTES) continue;
    uint8_t *l = p + VD_ABI_PIECE_PAYLOAD;
    put_list(l, arena.data + vd_get_u32(l), vd_get_u32(l + VD_ABI_LIST_LEN));
  }
  for (size_t i = 0; i < actions.n; i++) {
    uint8_t *act = actions.data + i * VD_ABI_SIZEOF_ACTION;
    if (act[0] != VD_ABI_ACTION_ANSWER) continue;
    uint8_t *a = act + VD_ABI_ACTION_PAYLOAD;
    put_list(a + VD_ABI_ANSWER_TRANSFERS, transfers.data + vd_get_u32(a + VD_ABI_ANSWER_TRANSFERS) * VD_ABI_SIZEOF_TRANSFER,
             vd_get_u32(a + VD_ABI_ANSWER_TRANSFERS + VD_ABI_LIST_LEN));
    put_list(a + VD_ABI_ANSWER_OPS, ops.data + vd_get_u32(a + VD_ABI_ANSWER_OPS) * VD_ABI_SIZEOF_BACKING_OP,
             vd_get_u32(a + VD_ABI_ANSWER_OPS + VD_ABI_LIST_LEN));
    put_list(a + VD_ABI_ANSWER_REPLY, pieces.data + vd_get_u32(a + VD_ABI_ANSWER_REPLY) * VD_ABI_SIZEOF_PIECE,
             vd_get_u32(a + VD_ABI_ANSWER_REPLY + VD_ABI_LIST_LEN));
  }
}

static void batch_start(void) {
  actions.n = pieces.n = transfers.n = ops.n = arena.n = 0;
  cur_action = -1;
  misuse = NULL;
}

/* The events as the host lowered them: each request's and frame's prefix a list of its own (ours to free). */
static const char *read_events(const uint8_t *in, size_t n) {
  events_in.n = 0;
  for (size_t i = 0; i < n; i++) {
    const uint8_t *e = in + i * VD_ABI_SIZEOF_EVENT;
    const uint8_t *p = e + VD_ABI_EVENT_PAYLOAD;
    vd_event *ev = grow_push(&events_in);
    switch (e[0]) {
      case VD_ABI_EVENT_REQUEST: {
        vd_request *r = &ev->u.request;
        ev->kind = VD_EVENT_REQUEST;
        r->id = vd_get_u32(p + VD_ABI_REQUEST_ID);
        memcpy(&r->queue, p + VD_ABI_REQUEST_QUEUE, 2);
        r->prefix = (const uint8_t *)(uintptr_t)vd_get_u32(p + VD_ABI_REQUEST_PREFIX);
        r->prefix_len = vd_get_u32(p + VD_ABI_REQUEST_PREFIX + VD_ABI_LIST_LEN);
        r->readable_len = vd_get_u32(p + VD_ABI_REQUEST_READABLE_LEN);
        r->writable_len = vd_get_u32(p + VD_ABI_REQUEST_WRITABLE_LEN);
        memo_put(r);
        break;
      }
      case VD_ABI_EVENT_IO_FAILED: {
        ev->kind = VD_EVENT_IO_FAILED;
        ev->u.io_failed.id = vd_get_u32(p + VD_ABI_IO_FAILURE_ID);
        ev->u.io_failed.err = vd_get_u32(p + VD_ABI_IO_FAILURE_ERRNO);
        break;
      }
      case VD_ABI_EVENT_FRAME:
        ev->kind = VD_EVENT_FRAME;
        ev->u.frame.id = vd_get_u32(p + VD_ABI_FRAME_ID);
        ev->u.frame.network = vd_get_u32(p + VD_ABI_FRAME_NETWORK);
        ev->u.frame.from_port = vd_get_u32(p + VD_ABI_FRAME_FROM_PORT);
        ev->u.frame.len = vd_get_u32(p + VD_ABI_FRAME_LEN);
        ev->u.frame.prefix = (const uint8_t *)(uintptr_t)vd_get_u32(p + VD_ABI_FRAME_PREFIX);
        ev->u.frame.prefix_len = vd_get_u32(p + VD_ABI_FRAME_PREFIX + VD_ABI_LIST_LEN);
        break;
      case VD_ABI_EVENT_TIMER:
        ev->kind = VD_EVENT_TIMER;
        ev->u.timer = vd_get_u64(p);
        break;
      default:
        return "the host sent an event of a kind this SDK does not know (a newer WIT?)";
    }
  }
  /* After every request of the batch is remembered, so the table no longer moves. */
  vd_event *evs = (vd_event *)events_in.data;
  for (size_t i = 0; i < events_in.n; i++) {
    if (evs[i].kind != VD_EVENT_IO_FAILED) continue;
    memo *m = memo_find(evs[i].u.io_failed.id);
    evs[i].u.io_failed.known = m != NULL;
    if (m) {
      evs[i].u.io_failed.request = m->req;
      evs[i].u.io_failed.cookie = m->cookie;
    }
  }
  return NULL;
}

static void free_events(uint8_t *in, size_t n) {
  vd_event *evs = (vd_event *)events_in.data;
  for (size_t i = 0; i < events_in.n; i++) {
    if (evs[i].kind == VD_EVENT_REQUEST) free((void *)evs[i].u.request.prefix);
    if (evs[i].kind == VD_EVENT_FRAME) free((void *)evs[i].u.frame.prefix);
  }
  (void)n;
  free(in);
}

VD_EXPORT("handle") uint8_t *vd_export_handle(uint8_t *in, size_t n) {
  batch_start();
  const char *err = read_events(in, n);
  if (!err) err = vd_handle((const vd_event *)events_in.data, events_in.n);
  if (!err) err = misuse;
  free_events(in, n);
  if (err) {
    answer_end();
    return unit_result(err);
  }
  batch_end();
  memset(ret_area, 0, VD_ABI_SIZEOF_DEVICE_HANDLE_RET);
  put_list(ret_area + VD_ABI_DEVICE_HANDLE_RET_OK, actions.data, actions.n);
  return ret_area;
}

/* The actions stay ours (reused next batch); only an error string is freed here. */
VD_POST("handle") void vd_post_handle(uint8_t *ret) {
  if (ret[0] != 0) free_unit_result(ret);
}

/* result<state-chunk, string>: tag at 0; ok = state-chunk, err = string (vhost_abi.h). */
VD_EXPORT("get-state") uint8_t *vd_export_get_state(uint64_t offset, uint32_t size) {
  vd_buf out = {0};
  uint64_t remaining = 0;
  const char *err = vd_get_state(offset, size, &out, &remaining);
  memset(ret_area, 0, VD_ABI_SIZEOF_DEVICE_GET_STATE_RET);
  if (err) {
    free(out.data);
    size_t n = strlen(err);
    char *copy = xmalloc(n);
    memcpy(copy, err, n);
    ret_area[0] = 1;
    put_list(ret_area + VD_ABI_DEVICE_GET_STATE_RET_ERR, copy, n);
  } else {
    uint8_t *chunk = ret_area + VD_ABI_DEVICE_GET_STATE_RET_OK;
    put_list(chunk + VD_ABI_STATE_CHUNK_BYTES, out.data, out.len);
    vd_put_u64(chunk + VD_ABI_STATE_CHUNK_REMAINING, remaining);
  }
  return ret_area;
}

VD_POST("get-state") void vd_post_get_state(uint8_t *ret) {
  /* The ok chunk's bytes and the err string are both a list at the payload: free either. */
  _Static_assert(VD_ABI_DEVICE_GET_STATE_RET_OK + VD_ABI_STATE_CHUNK_BYTES == VD_ABI_DEVICE_GET_STATE_RET_ERR,
                 "get-state's chunk bytes and error string share an offset");
  free((void *)(uintptr_t)vd_get_u32(ret + VD_ABI_DEVICE_GET_STATE_RET_ERR));
}

VD_EXPORT("set-state") uint8_t *vd_export_set_state(uint64_t offset, uint8_t *chunk, size_t len) {
  const char *err = vd_set_state(offset, chunk, len);
  free(chunk);
  return unit_result(err);
}
VD_POST("set-state") void vd_post_set_state(uint8_t *ret) { free_unit_result(ret); }

VD_EXPORT("finish-load") uint8_t *vd_export_finish_load(void) {
  return unit_result(vd_finish_load());
}
VD_POST("finish-load") void vd_post_finish_load(uint8_t *ret) { free_unit_result(ret); }

/* ---- State helpers (see vhost_device.h) ---- */

const char *vd_state_serve(const uint8_t *blob, uint64_t len, uint64_t offset, uint32_t size, vd_buf *out,
                           uint64_t *remaining) {
  if (!blob || offset > len) return "state offset past the end";
  uint64_t left = len - offset;
  uint32_t n = left < size ? (uint32_t)left : size;
  if (n) {
    out->data = malloc(n);
    if (!out->data) return "out of memory";
    memcpy(out->data, blob + offset, n);
  }
  out->len = n;
  *remaining = left - n;
  return NULL;
}

const char *vd_state_accept(vd_state_loader *l, uint64_t offset, const uint8_t *chunk, size_t len,
                            const char *too_long) {
  if (offset == 0) {
    l->len = 0;
    l->overflow = 0;
  }
  if (offset != l->len) return "state chunk out of order";
  if (len > l->max - l->len) {
    l->overflow = 1;
    return too_long;
  }
  if (l->grow && l->len + len > l->cap) {
    /* Doubling from one page: a few reallocs for any state, never one per chunk. */
    size_t nc = l->cap ? l->cap : 4096;
    while (nc < l->len + len) nc *= 2;
    uint8_t *p = realloc(l->data, nc);
    if (!p) return "out of memory";
    l->data = p;
    l->cap = nc;
  }
  memcpy(l->data + l->len, chunk, len);
  l->len += len;
  return NULL;
}

void vd_state_loader_reset(vd_state_loader *l) {
  if (l->grow) {
    free(l->data);
    l->data = NULL;
    l->cap = 0;
  }
  l->len = 0;
  l->overflow = 0;
}

void vd_state_put_header(uint8_t *out, const char magic[4], uint8_t version) {
  memcpy(out, magic, 4);
  out[4] = version;
  out[5] = out[6] = out[7] = 0;
}

const char *vd_state_check_header(const uint8_t *in, const char magic[4], uint8_t version, const char *bad_magic,
                                  const char *bad_version) {
  if (memcmp(in, magic, 4) != 0) return bad_magic;
  if (in[4] != version) return bad_version;
  if (in[5] | in[6] | in[7]) return "reserved state bytes are not zero";
  return NULL;
}
