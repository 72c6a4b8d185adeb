/*
 * Canonical ABI glue for the vhost:device@0.1.0 world (wasm32, one linear memory).
 *
 * Ownership rules this file follows (Component Model canonical ABI):
 *  - Lists and strings the host passes in were allocated in our memory through
 *    cabi_realloc and now belong to us: free them once the callback returns.
 *  - Lists and strings we return stay alive until the host has copied them; the host
 *    then calls the matching cabi_post_* export, which frees them.
 *  - Results wider than one core value go through a static return area; the host reads
 *    it before the next call, so one area serves every export.
 */
#include "vhost_device.h"
#include "vhost_abi.h"

#include <stdlib.h>
#include <string.h>

/* Overridable only so tests can build a plugin for a version the host does not speak. */
#ifndef VD_WIT_VERSION
#define VD_WIT_VERSION "0.1.0"
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
#define RET_AREA_SIZE VD_ABI_SIZEOF_DEVICE_GET_STATE_RET
static _Alignas(8) uint8_t ret_area[RET_AREA_SIZE];
_Static_assert(VD_ABI_SIZEOF_DEVICE_INFO_RET <= RET_AREA_SIZE && VD_ABI_SIZEOF_DEVICE_IDENTITY_RET <= RET_AREA_SIZE &&
                   VD_ABI_SIZEOF_DEVICE_PROCESS_RET <= RET_AREA_SIZE && VD_ABI_SIZEOF_DEVICE_ACTIVATE_RET <= RET_AREA_SIZE &&
                   VD_ABI_SIZEOF_DEVICE_READ_CONFIG_RET <= RET_AREA_SIZE,
               "ret_area must hold every export's return area");
_Static_assert(VD_ABI_ALIGNOF_DEVICE_INFO <= 8 && VD_ABI_ALIGNOF_STATE_CHUNK <= 8, "ret_area alignment");

static void put_list(uint8_t *at, const void *ptr, size_t len) {
  vd_put_u32(at, (uint32_t)(uintptr_t)ptr);
  vd_put_u32(at + VD_ABI_LIST_LEN, (uint32_t)len);
}

/* result<_, string>: the layout activate, set-state, finish-load (and a failed process) share. */
#define UNIT_RESULT_SIZE VD_ABI_SIZEOF_DEVICE_ACTIVATE_RET
#define UNIT_RESULT_ERR VD_ABI_DEVICE_ACTIVATE_RET_ERR
_Static_assert(VD_ABI_SIZEOF_DEVICE_SET_STATE_RET == UNIT_RESULT_SIZE && VD_ABI_DEVICE_SET_STATE_RET_ERR == UNIT_RESULT_ERR &&
                   VD_ABI_SIZEOF_DEVICE_FINISH_LOAD_RET == UNIT_RESULT_SIZE &&
                   VD_ABI_DEVICE_FINISH_LOAD_RET_ERR == UNIT_RESULT_ERR && VD_ABI_DEVICE_PROCESS_RET_ERR == UNIT_RESULT_ERR,
               "activate, set-state, finish-load and process share the result<_, string> layout");

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

/* storage: results wider than one core value come back through `ret` (vhost_abi.h):
 * result<list<u8>, storage-error> and result<_, storage-error>, tag u8 at 0. */
#define VD_STORAGE_IMPORT(name) \
  __attribute__((import_module(VD_IFACE("storage")), import_name(name))) extern

VD_STORAGE_IMPORT("size") int64_t vd_import_storage_size(void);
VD_STORAGE_IMPORT("read-only") int32_t vd_import_storage_read_only(void);
VD_STORAGE_IMPORT("read") void vd_import_storage_read(int64_t offset, int32_t len, uint8_t *ret);
VD_STORAGE_IMPORT("write") void vd_import_storage_write(int64_t offset, const uint8_t *data,
                                                         size_t len, uint8_t *ret);
VD_STORAGE_IMPORT("flush") void vd_import_storage_flush(uint8_t *ret);
VD_STORAGE_IMPORT("discard") void vd_import_storage_discard(int64_t offset, int64_t len, uint8_t *ret);
VD_STORAGE_IMPORT("write-zeroes") void vd_import_storage_write_zeroes(int64_t offset, int64_t len,
                                                                      uint8_t *ret);

static vd_storage_status storage_status(const uint8_t *ret, size_t err_at) {
  if (ret[0] == 0) return VD_STORAGE_OK;
  switch (ret[err_at]) {
    case VD_ABI_STORAGE_ERROR_IO: return VD_STORAGE_IO;
    case VD_ABI_STORAGE_ERROR_OUT_OF_RANGE: return VD_STORAGE_OUT_OF_RANGE;
    case VD_ABI_STORAGE_ERROR_READ_ONLY: return VD_STORAGE_READ_ONLY;
  }
  /* The host only sends the three cases; anything else means the ABI is broken. */
  __builtin_trap();
}

uint64_t vd_storage_size(void) { return (uint64_t)vd_import_storage_size(); }
int vd_storage_read_only(void) { return vd_import_storage_read_only() != 0; }

vd_storage_status vd_storage_read_buf(uint64_t offset, uint32_t len, vd_buf *out) {
  _Alignas(4) uint8_t ret[VD_ABI_SIZEOF_STORAGE_READ_RET];
  vd_import_storage_read((int64_t)offset, (int32_t)len, ret);
  vd_storage_status st = storage_status(ret, VD_ABI_STORAGE_READ_RET_ERR);
  if (st != VD_STORAGE_OK) return st;
  uint8_t *got = (uint8_t *)(uintptr_t)vd_get_u32(ret + VD_ABI_STORAGE_READ_RET_OK);
  uint32_t got_len = vd_get_u32(ret + VD_ABI_STORAGE_READ_RET_OK + VD_ABI_LIST_LEN);
  /* A short answer would hand the guest stale bytes from our heap: never. */
  if (got_len != len) __builtin_trap();
  out->data = got;
  out->len = len;
  return VD_STORAGE_OK;
}

vd_storage_status vd_storage_read(uint64_t offset, uint8_t *dst, uint32_t len) {
  vd_buf b = {0};
  vd_storage_status st = vd_storage_read_buf(offset, len, &b);
  if (st != VD_STORAGE_OK) return st;
  memcpy(dst, b.data, len);
  free(b.data);
  return VD_STORAGE_OK;
}

vd_storage_status vd_storage_write(uint64_t offset, const uint8_t *src, uint32_t len) {
  _Alignas(4) uint8_t ret[VD_ABI_SIZEOF_STORAGE_WRITE_RET];
  vd_import_storage_write((int64_t)offset, src, len, ret);
  return storage_status(ret, VD_ABI_STORAGE_WRITE_RET_ERR);
}

vd_storage_status vd_storage_flush(void) {
  _Alignas(4) uint8_t ret[VD_ABI_SIZEOF_STORAGE_FLUSH_RET];
  vd_import_storage_flush(ret);
  return storage_status(ret, VD_ABI_STORAGE_FLUSH_RET_ERR);
}

vd_storage_status vd_storage_discard(uint64_t offset, uint64_t len) {
  _Alignas(4) uint8_t ret[VD_ABI_SIZEOF_STORAGE_DISCARD_RET];
  vd_import_storage_discard((int64_t)offset, (int64_t)len, ret);
  return storage_status(ret, VD_ABI_STORAGE_DISCARD_RET_ERR);
}

vd_storage_status vd_storage_write_zeroes(uint64_t offset, uint64_t len) {
  _Alignas(4) uint8_t ret[VD_ABI_SIZEOF_STORAGE_WRITE_ZEROES_RET];
  vd_import_storage_write_zeroes((int64_t)offset, (int64_t)len, ret);
  return storage_status(ret, VD_ABI_STORAGE_WRITE_ZEROES_RET_ERR);
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

VD_EXPORT("reset") void vd_export_reset(void) { vd_reset(); }

VD_EXPORT("process") uint8_t *vd_export_process(uint32_t queue, uint8_t *reqs, size_t n) {
  vd_request *requests = xmalloc(n * sizeof *requests);
  vd_buf *responses = xmalloc(n * sizeof *responses);
  memset(responses, 0, n * sizeof *responses);
  for (size_t i = 0; i < n; i++) {
    const uint8_t *r = reqs + i * VD_ABI_SIZEOF_REQUEST;
    requests[i].readable = (const uint8_t *)(uintptr_t)vd_get_u32(r + VD_ABI_REQUEST_READABLE);
    requests[i].readable_len = vd_get_u32(r + VD_ABI_REQUEST_READABLE + VD_ABI_LIST_LEN);
    requests[i].writable_len = vd_get_u32(r + VD_ABI_REQUEST_WRITABLE_LEN);
  }
  const char *err = vd_process((uint16_t)queue, requests, n, responses);
  for (size_t i = 0; i < n; i++) free((void *)requests[i].readable);
  free(requests);
  free(reqs);
  if (err) {
    for (size_t i = 0; i < n; i++) free(responses[i].data);
    free(responses);
    return unit_result(err);
  }
  /* list<list<u8>>: each element is (ptr, len); reuse the vd_buf array in place since
   * both are 8 bytes on wasm32 with the pointer first. */
  _Static_assert(sizeof(vd_buf) == VD_ABI_SIZEOF_LIST && offsetof(vd_buf, len) == VD_ABI_LIST_LEN,
                 "vd_buf must match the lowered list<u8> layout");
  for (size_t i = 0; i < n; i++) {
    uint8_t *slot = (uint8_t *)&responses[i];
    vd_buf b = responses[i];
    put_list(slot, b.data, b.len);
  }
  memset(ret_area, 0, VD_ABI_SIZEOF_DEVICE_PROCESS_RET);
  put_list(ret_area + VD_ABI_DEVICE_PROCESS_RET_OK, responses, n);
  return ret_area;
}

VD_POST("process") void vd_post_process(uint8_t *ret) {
  if (ret[0] != 0) {
    free_unit_result(ret);
    return;
  }
  uint8_t *list = (uint8_t *)(uintptr_t)vd_get_u32(ret + VD_ABI_DEVICE_PROCESS_RET_OK);
  uint32_t n = vd_get_u32(ret + VD_ABI_DEVICE_PROCESS_RET_OK + VD_ABI_LIST_LEN);
  for (uint32_t i = 0; i < n; i++) free((void *)(uintptr_t)vd_get_u32(list + i * VD_ABI_SIZEOF_LIST));
  free(list);
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
