/*
 * virtio-blk (device id 2) over the host's `storage` grant (backing 0).
 *
 * The plugin sees each request's header (and the discard/write-zeroes segments after it:
 * PREFIX_LEN) and decides everything: the type, the data length (whole sectors, at most
 * MAX_IO), the sector range against the capacity, the segments. It answers with what the
 * host does: a read is a backing-read piece into the guest's buffers, a write a transfer of
 * the guest's bytes, flush a barrier and a flush op, discard and write-zeroes ops. The data
 * never enters this plugin. The status byte goes in the last byte of the chain's writable
 * space, which is where the driver looks for it, so every reply covers `writable_len`.
 *
 * A failed backing I/O comes back as an io-failed event: the answer is then IOERR.
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
static uint32_t block_size; /* the store's logical block size: blk_size */
static int logged_malformed;

const char *vd_name(void) { return "blk"; }
const char *vd_version(void) { return "0.2.0"; }

/* The grant is fixed for the life of the device, so asking once is enough; info() runs
 * first, at load, which also makes a missing grant a load error rather than a guest-time one. */
static void learn_storage(void) {
  read_only = vd_storage_read_only();
  capacity = vd_storage_size() / SECTOR;
  block_size = vd_storage_block_size();
  /* The host gives 512 or 4096; anything else would be a config we cannot state truthfully. */
  if (block_size < SECTOR || block_size > 4096 || (block_size & (block_size - 1))) block_size = SECTOR;
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
  out->prefix_len = PREFIX_LEN;
  /* Every request stands alone (ordering across queues is the host's barrier). */
  out->queues_independent = 1;
}

void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size) {
  uint8_t cfg[CONFIG_SIZE] = {0};
  vd_put_u64(cfg + CFG_CAPACITY, capacity);
  vd_put_u32(cfg + CFG_SIZE_MAX, SIZE_MAX_BYTES);
  vd_put_u32(cfg + CFG_SEG_MAX, SEG_MAX);
  vd_put_u32(cfg + CFG_BLK_SIZE, block_size);
  vd_put_u16(cfg + CFG_NUM_QUEUES, NUM_QUEUES);
  if (!read_only) {
    vd_put_u32(cfg + CFG_MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS);
    vd_put_u32(cfg + CFG_MAX_DISCARD_SEG, MAX_DISCARD_SEG);
    /* In sectors: a hole is punched in whole logical blocks. */
    vd_put_u32(cfg + CFG_DISCARD_ALIGNMENT, block_size / SECTOR);
    vd_put_u32(cfg + CFG_MAX_WZ_SECTORS, MAX_DISCARD_SECTORS);
    vd_put_u32(cfg + CFG_MAX_WZ_SEG, MAX_DISCARD_SEG);
    /* write_zeroes_may_unmap stays 0: write-zeroes is ZERO_RANGE, which need not unmap. */
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

/* Whole sectors only, inside the disk: [sector, sector + bytes / 512). */
static int range_ok(uint64_t sector, uint64_t bytes) {
  if (bytes % SECTOR) return 0;
  return sector <= capacity && bytes / SECTOR <= capacity - sector;
}

/* The rest of the writable area as it is, then the status in its last byte. */
static void finish(const vd_request *r, uint32_t covered, uint8_t status) {
  uint32_t gap = r->writable_len - 1 - covered;
  if (gap) vd_answer_skip(gap);
  vd_answer_bytes(&status, 1);
}

/* An answer of the status alone (nothing moves). */
static void status_only(const vd_request *r, uint8_t status) {
  vd_answer_begin(r->id);
  finish(r, 0, status);
}

static void do_in(const vd_request *r, uint64_t sector) {
  uint32_t len = r->writable_len - 1;
  if (len > MAX_IO || !range_ok(sector, len)) return status_only(r, S_IOERR);
  vd_answer_begin(r->id);
  if (len) vd_answer_backing_read(0, sector * SECTOR, len);
  vd_answer_bytes(&(uint8_t){S_OK}, 1);
}

static void do_out(const vd_request *r, uint64_t sector) {
  uint32_t len = r->readable_len - HDR_SIZE;
  if (read_only || len > MAX_IO || !range_ok(sector, len)) return status_only(r, S_IOERR);
  vd_answer_begin(r->id);
  if (len) vd_answer_transfer(HDR_SIZE, 0, sector * SECTOR, len);
  finish(r, 0, S_OK);
}

static void do_flush(const vd_request *r) {
  vd_answer_begin(r->id);
  /* Complete only after every write answered before it; a read-only grant has nothing of
   * ours to make durable, so the barrier alone is the whole flush. */
  vd_answer_barrier();
  if (!read_only) vd_answer_op(VD_OP_FLUSH, 0, 0, 0);
  finish(r, 0, S_OK);
}

static void do_get_id(const vd_request *r) {
  static const char id[ID_BYTES] = BLK_SERIAL;
  uint32_t room = r->writable_len - 1;
  uint32_t n = room < ID_BYTES ? room : ID_BYTES;
  vd_answer_begin(r->id);
  vd_answer_bytes(id, n);
  if (room > n) vd_answer_zeroes(room - n);
  vd_answer_bytes(&(uint8_t){S_OK}, 1);
}

/* Discard and write-zeroes: every segment is checked before any op is named, so a bad
 * segment changes nothing. The segments follow the header inside the prefix. */
static void do_ranges(const vd_request *r, uint32_t type) {
  uint64_t feature = type == T_DISCARD ? F_DISCARD : F_WRITE_ZEROES;
  if (!(acked & BIT(feature))) return status_only(r, S_UNSUPP);
  if (read_only) return status_only(r, S_IOERR);
  uint32_t len = r->readable_len - HDR_SIZE;
  if (len == 0 || len % SEG_SIZE) return status_only(r, S_IOERR);
  uint32_t n = len / SEG_SIZE;
  if (n > MAX_DISCARD_SEG) return status_only(r, S_UNSUPP);
  const uint8_t *seg = r->prefix + HDR_SIZE; /* n <= MAX_DISCARD_SEG: all inside the prefix */
  for (uint32_t i = 0; i < n; i++) {
    uint32_t num = vd_get_u32(seg + i * SEG_SIZE + 8), flags = vd_get_u32(seg + i * SEG_SIZE + 12);
    uint32_t allowed = type == T_WRITE_ZEROES ? WZ_FLAG_UNMAP : 0;
    if (flags & ~allowed) return status_only(r, S_UNSUPP);
    if (num > MAX_DISCARD_SECTORS) return status_only(r, S_IOERR);
    if (!range_ok(vd_get_u64(seg + i * SEG_SIZE), (uint64_t)num * SECTOR)) return status_only(r, S_IOERR);
  }
  vd_answer_begin(r->id);
  vd_op_kind kind = type == T_DISCARD ? VD_OP_DISCARD : VD_OP_WRITE_ZEROES;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t off = vd_get_u64(seg + i * SEG_SIZE) * SECTOR;
    uint64_t bytes = (uint64_t)vd_get_u32(seg + i * SEG_SIZE + 8) * SECTOR;
    if (bytes) vd_answer_op(kind, 0, off, bytes);
  }
  finish(r, 0, S_OK);
}

static void one(const vd_request *r) {
  if (r->writable_len == 0) {
    /* Nowhere to put a status: the driver gets a used length of 0 and nothing else. */
    malformed("blk: request without writable space for the status byte (answered with nothing)");
    vd_answer_begin(r->id);
    return;
  }
  if (r->readable_len < HDR_SIZE || r->prefix_len < HDR_SIZE) {
    malformed("blk: request shorter than the 16-byte header (IOERR)");
    return status_only(r, S_IOERR);
  }
  uint32_t type = vd_get_u32(r->prefix);
  uint64_t sector = vd_get_u64(r->prefix + 8);
  /* More data than a request we offered to serve (SEG_MAX x SIZE_MAX): refused, not served. */
  if (r->writable_len > MAX_IO + 1) {
    malformed("blk: a request's writable space exceeds 4 MiB + 1 status byte (IOERR)");
    return status_only(r, S_IOERR);
  }
  switch (type) {
    case T_IN: return do_in(r, sector);
    case T_OUT: return do_out(r, sector);
    case T_FLUSH: return do_flush(r);
    case T_GET_ID: return do_get_id(r);
    case T_DISCARD:
    case T_WRITE_ZEROES: return do_ranges(r, type);
    default: return status_only(r, S_UNSUPP);
  }
}

const char *vd_handle(const vd_event *events, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const vd_event *e = &events[i];
    if (e->kind == VD_EVENT_REQUEST) {
      one(&e->u.request);
    } else if (e->kind == VD_EVENT_IO_FAILED) {
      /* The backing failed (EIO, ENOSPC): the driver gets IOERR; the device keeps serving. */
      if (!e->u.io_failed.known) return "blk: io-failed for a request id this device never saw";
      const vd_request *r = &e->u.io_failed.request;
      if (r->writable_len == 0) {
        vd_answer_begin(r->id);
        continue;
      }
      status_only(r, S_IOERR);
    }
    /* No frames or timers were asked for. */
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
