/*
 * virtio-blk (device id 2) over the host's `storage` grant.
 *
 * Every request is validated here before the storage is touched: the header, the data
 * length (whole sectors, at most MAX_IO), the sector range against the capacity, the
 * segments of discard/write-zeroes. The status byte goes in the last byte of the chain's
 * writable space, which is where the driver looks for it, so every response is exactly
 * `writable_len` bytes long.
 *
 * State: "VBLK", a format version byte, 3 reserved zero bytes, the acked features as a
 * little-endian u64. The disk's contents belong to the host's backing, not to us.
 */
#include "vhost_device.h"

#include <stdlib.h>
#include <string.h>

#include "blk.h"

static uint64_t acked;
static int read_only;
static uint64_t capacity; /* sectors */
static int logged_malformed;

const char *vd_name(void) { return "blk"; }
const char *vd_version(void) { return "0.1.0"; }

/* The grant is fixed for the life of the device, so asking once is enough; info() runs
 * first, at load, which also makes a missing grant a load error rather than a guest-time one. */
static void learn_storage(void) {
  read_only = vd_storage_read_only();
  capacity = vd_storage_size() / SECTOR;
}

static uint64_t offered(void) {
  uint64_t f = BIT(F_SIZE_MAX) | BIT(F_SEG_MAX) | BIT(F_BLK_SIZE) | BIT(F_FLUSH) | BIT(F_MQ);
  /* Discard and write-zeroes modify the disk: a read-only grant gets neither. */
  f |= read_only ? BIT(F_RO) : BIT(F_DISCARD) | BIT(F_WRITE_ZEROES);
  return f;
}

void vd_get_info(vd_info *out) {
  learn_storage();
  out->device_id = 2;
  out->num_queues = NUM_QUEUES;
  out->max_queue_size = MAX_QUEUE_SIZE;
  out->features = offered();
  out->config_size = CONFIG_SIZE;
}

void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size) {
  uint8_t cfg[CONFIG_SIZE] = {0};
  vd_put_u64(cfg + CFG_CAPACITY, capacity);
  vd_put_u32(cfg + CFG_SIZE_MAX, SIZE_MAX_BYTES);
  vd_put_u32(cfg + CFG_SEG_MAX, SEG_MAX);
  vd_put_u32(cfg + CFG_BLK_SIZE, SECTOR);
  vd_put_u16(cfg + CFG_NUM_QUEUES, NUM_QUEUES);
  if (!read_only) {
    vd_put_u32(cfg + CFG_MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS);
    vd_put_u32(cfg + CFG_MAX_DISCARD_SEG, MAX_DISCARD_SEG);
    vd_put_u32(cfg + CFG_DISCARD_ALIGNMENT, 1);
    vd_put_u32(cfg + CFG_MAX_WZ_SECTORS, MAX_DISCARD_SECTORS);
    vd_put_u32(cfg + CFG_MAX_WZ_SEG, MAX_DISCARD_SEG);
  }
  memcpy(out, cfg + offset, size);
}

/* Nothing in our config space is writable (that would need CONFIG_WCE). */
void vd_write_config(uint32_t offset, const uint8_t *data, size_t len) {
  (void)offset, (void)data, (void)len;
}

const char *vd_activate(uint64_t features) {
  acked = features;
  return NULL;
}

void vd_reset(void) {
  acked = 0;
  logged_malformed = 0;
}

static void malformed(const char *what) {
  /* Once per reset: a guest sending garbage in a loop must not flood the host's log. */
  if (logged_malformed) return;
  logged_malformed = 1;
  vd_log(VD_LOG_WARN, what);
}

/* Writable space with the status in its last byte; the caller fills the data before it. */
static uint8_t *response(const vd_request *r, vd_buf *out) {
  uint8_t *buf = calloc(r->writable_len, 1);
  if (!buf) return NULL;
  out->data = buf;
  out->len = r->writable_len;
  return buf;
}

static uint8_t status_of(vd_storage_status st) { return st == VD_STORAGE_OK ? S_OK : S_IOERR; }

/* Whole sectors only, inside the disk: [sector, sector + bytes / 512). */
static int range_ok(uint64_t sector, uint64_t bytes) {
  if (bytes % SECTOR) return 0;
  return sector <= capacity && bytes / SECTOR <= capacity - sector;
}

/* Reads answer with the buffer the host filled, grown by the status byte: no calloc, no
 * copy in wasm (memcpy here is a plain loop: 128 KiB costs tens of microseconds). Returns 0
 * when it did not answer, and the caller builds a zeroed error response instead. */
static int try_in(const vd_request *r, uint64_t sector, vd_buf *out) {
  uint32_t len = r->writable_len - 1;
  if (len == 0 || len > MAX_IO || !range_ok(sector, len)) return 0;
  vd_buf b = {0};
  if (vd_storage_read_buf(sector * SECTOR, len, &b) != VD_STORAGE_OK) return 0;
  uint8_t *grown = realloc(b.data, (size_t)len + 1);
  if (!grown) {
    free(b.data);
    return 0;
  }
  grown[len] = S_OK;
  out->data = grown;
  out->len = (size_t)len + 1;
  return 1;
}

static uint8_t do_in(const vd_request *r, uint64_t sector) {
  uint32_t len = r->writable_len - 1;
  /* try_in failed or did not apply: an empty read is fine, anything else an error. */
  return len == 0 && range_ok(sector, 0) ? S_OK : S_IOERR;
}

static uint8_t do_out(const vd_request *r, uint64_t sector) {
  size_t len = r->readable_len - HDR_SIZE;
  if (read_only) return S_IOERR;
  if (len > MAX_IO || !range_ok(sector, len)) return S_IOERR;
  if (len == 0) return S_OK;
  return status_of(vd_storage_write(sector * SECTOR, r->readable + HDR_SIZE, (uint32_t)len));
}

static uint8_t do_get_id(const vd_request *r, uint8_t *buf) {
  static const char id[ID_BYTES] = BLK_SERIAL;
  uint32_t room = r->writable_len - 1;
  memcpy(buf, id, room < ID_BYTES ? room : ID_BYTES);
  return S_OK;
}

/* Discard and write-zeroes: every segment is checked before any is applied, so a bad
 * segment changes nothing. */
static uint8_t do_ranges(const vd_request *r, uint32_t type) {
  uint64_t feature = type == T_DISCARD ? F_DISCARD : F_WRITE_ZEROES;
  if (!(acked & BIT(feature))) return S_UNSUPP;
  if (read_only) return S_IOERR;
  const uint8_t *seg = r->readable + HDR_SIZE;
  size_t len = r->readable_len - HDR_SIZE;
  if (len == 0 || len % SEG_SIZE) return S_IOERR;
  size_t n = len / SEG_SIZE;
  if (n > MAX_DISCARD_SEG) return S_UNSUPP;
  for (size_t i = 0; i < n; i++) {
    uint32_t num = vd_get_u32(seg + i * SEG_SIZE + 8), flags = vd_get_u32(seg + i * SEG_SIZE + 12);
    uint32_t allowed = type == T_WRITE_ZEROES ? WZ_FLAG_UNMAP : 0;
    if (flags & ~allowed) return S_UNSUPP;
    if (num > MAX_DISCARD_SECTORS) return S_IOERR;
    if (!range_ok(vd_get_u64(seg + i * SEG_SIZE), (uint64_t)num * SECTOR)) return S_IOERR;
  }
  for (size_t i = 0; i < n; i++) {
    uint64_t off = vd_get_u64(seg + i * SEG_SIZE) * SECTOR;
    uint64_t bytes = (uint64_t)vd_get_u32(seg + i * SEG_SIZE + 8) * SECTOR;
    vd_storage_status st =
        type == T_DISCARD ? vd_storage_discard(off, bytes) : vd_storage_write_zeroes(off, bytes);
    if (st != VD_STORAGE_OK) return S_IOERR;
  }
  return S_OK;
}

static const char *one(const vd_request *r, vd_buf *out) {
  if (r->writable_len == 0) {
    /* Nowhere to put a status: the driver gets a used length of 0 and nothing else. */
    malformed("blk: request without writable space for the status byte (answered with nothing)");
    return NULL;
  }
  /* Only the status and at most MAX_IO bytes of data: anything larger cannot be a request
   * we offered to serve, and answering it would mean allocating all of it. */
  if (r->writable_len > MAX_IO + 1) return "blk: a request's writable space exceeds 4 MiB + 1 status byte";
  uint32_t type = r->readable_len >= HDR_SIZE ? vd_get_u32(r->readable) : UINT32_MAX;
  uint64_t sector = r->readable_len >= HDR_SIZE ? vd_get_u64(r->readable + 8) : 0;
  if (type == T_IN && try_in(r, sector, out)) return NULL;
  uint8_t *buf = response(r, out);
  if (!buf) return "out of memory";
  uint8_t *status = buf + r->writable_len - 1;
  if (r->readable_len < HDR_SIZE) {
    malformed("blk: request shorter than the 16-byte header (IOERR)");
    *status = S_IOERR;
    return NULL;
  }
  switch (type) {
    case T_IN: *status = do_in(r, sector); break;
    case T_OUT: *status = do_out(r, sector); break;
    case T_FLUSH: *status = status_of(vd_storage_flush()); break;
    case T_GET_ID: *status = do_get_id(r, buf); break;
    case T_DISCARD:
    case T_WRITE_ZEROES: *status = do_ranges(r, type); break;
    default: *status = S_UNSUPP; break;
  }
  return NULL;
}

const char *vd_process(uint16_t queue, const vd_request *requests, size_t n, vd_buf *responses) {
  (void)queue; /* the host checked it; every queue serves the same disk */
  for (size_t i = 0; i < n; i++) {
    const char *err = one(&requests[i], &responses[i]);
    if (err) return err;
  }
  return NULL;
}

/* ---- State: the acked features only ---- */

static uint8_t saving[STATE_SIZE];
static uint8_t loading[STATE_SIZE];
static vd_state_loader loader = {.data = loading, .max = STATE_SIZE};

const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining) {
  if (offset == 0) {
    memset(saving, 0, STATE_SIZE);
    vd_state_put_header(saving, "VBLK", STATE_VERSION);
    vd_put_u64(saving + 8, acked);
  }
  return vd_state_serve(saving, STATE_SIZE, offset, size, out, remaining);
}

const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len) {
  return vd_state_accept(&loader, offset, chunk, len, "state longer than the blk state format");
}

const char *vd_finish_load(void) {
  if (loader.overflow) return "state longer than the blk state format";
  if (loader.len != STATE_SIZE) return "state truncated";
  const char *err = vd_state_check_header(loading, "VBLK", STATE_VERSION, "not a blk state (bad magic)",
                                          "unsupported blk state version");
  if (err) return err;
  uint64_t f = vd_get_u64(loading + 8);
  if (f & ~offered()) return "state acks features this device does not offer";
  acked = f;
  loader.len = 0;
  return NULL;
}
