/*
 * Migratable state of the fs plugin: what a destination needs to keep serving a guest that
 * holds node ids and file handles from the source. Host handles cannot travel (they are
 * fds or file handles, valid on this host only), so inodes are saved as (parent node id,
 * name) and file handles as (node id, open flags); the destination keeps the inodes pending
 * and resolves them on first use, and reopens the files during the load (never with
 * O_TRUNC) (fs.c, "Migration").
 *
 * Format, little-endian (version 2; version 1 is the same with bytes 6-7 zero, and still loads;
 * version 3 is version 2 written for a session that negotiated POSIX ACLs, see below):
 *   0  "VFSS"                        magic
 *   4  u8 version = 2, u8 oldest version that can read it, u8 session lock flags, u8 zero
 *      lock flags bit 0: the guest has asked for record locks (session.record_locks), so a
 *      FLUSH must drop the closing process's locks on the host. The locks themselves are the
 *      host's (host/fs/lock-handoff.ts moves them in a live plugin upgrade). With the bit set
 *      the oldest reader is 2: a version-1 reader would ignore it and leave a closed process's
 *      locks held; without it 1. A session with FUSE_POSIX_ACL in its flags is saved as
 *      version 3, oldest reader 3, the layout unchanged: its guest sends creates unmasked
 *      (FUSE_DONT_MASK), and a reader from before --posix-acl would make them without any
 *      umask, so it must refuse the state.
 *   8  u32 session initialized (0/1), u32 FUSE minor, u32 FUSE flags, u32 max_readahead
 *  24  u32 inode count, u32 file count
 *  32  inodes: u32 id, u32 parent id, u64 nlookup, u32 mode, u32 name length
 *      (0xffffffff = no name: unlinked or never named), name bytes
 *      files:  u64 fh, u32 node id, u32 open flags
 * The root (node id 1) is not listed: it is always the share root.
 *
 * Both directions stream, so no single call grows with the table (the host gives each call
 * a deadline, 100 ms by default, and a guest may know a million inodes): a save writes the
 * records that fit the chunk asked for, from where the previous chunk stopped (the device is
 * stopped, so the tables hold still); a load parses each chunk's records into the tables as
 * it arrives (a record may straddle chunks), and finish-load only reopens the open files.
 * A pending inode saves exactly as it was loaded, so a guest can migrate on before touching
 * it. Chunks must come in order from offset 0 (a save or load restarts at offset 0).
 */
#include <stdlib.h>
#include <string.h>

#include "fuse.h"
#include "state.h"
#include "vhost_device.h"

#define STATE_VERSION 3
#define HEADER 32
#define INODE_HEAD 24
#define FILE_REC 16
#define NO_NAME 0xffffffffu
#define MAX_NAME 255
#define MAX_STATE (256ull * 1024 * 1024)
#define MAX_SAVED_INODES (1u << 20)
#define MAX_SAVED_FILES (1u << 16)

/* ---- Save ---- */

static struct {
  uint64_t total, produced;
  uint32_t next_inode, next_file; /* table positions still to write */
  uint32_t inodes_left, files_left;
  uint8_t rec[INODE_HEAD + MAX_NAME]; /* a record that straddles two chunks */
  uint32_t rec_len, rec_at;
} sv;

static size_t inode_record_len(const fs_inode *in) { return INODE_HEAD + (in->name ? in->name_len : 0); }

static void put_header(uint8_t *h, uint32_t ni, uint32_t nf) {
  memset(h, 0, HEADER);
  memcpy(h, "VFSS", 4);
  int acl = (session.flags & FUSE_POSIX_ACL) != 0;
  h[4] = acl ? 3 : 2;
  h[5] = acl ? 3 : session.record_locks ? 2 : 1;
  h[6] = session.record_locks ? 1 : 0;
  vd_put_u32(h + 8, session.initialized);
  vd_put_u32(h + 12, session.minor);
  vd_put_u32(h + 16, session.flags);
  vd_put_u32(h + 20, session.max_readahead);
  vd_put_u32(h + 24, ni);
  vd_put_u32(h + 28, nf);
}

/* Offset 0: count what will be written (one pass, no copy) and queue the header. */
static void save_begin(void) {
  uint32_t ni = 0, nf = 0;
  uint64_t size = HEADER;
  if (session.initialized) {
    for (uint32_t i = 2; i < n_inodes; i++)
      if (INODE_AT(i).used) ni++, size += inode_record_len(&INODE_AT(i));
    for (uint32_t i = 0; i < n_files; i++)
      if (files[i].used) nf++, size += FILE_REC;
  }
  memset(&sv, 0, sizeof sv);
  sv.total = size;
  sv.next_inode = 2;
  sv.inodes_left = ni;
  sv.files_left = nf;
  put_header(sv.rec, ni, nf);
  sv.rec_len = HEADER;
}

/* The next record into `to` (room for the largest record); its length, 0 when there is none left. */
static uint32_t save_record(uint8_t *to);

/* The next record into sv.rec; 0 when there is none left. */
static int save_next(void) {
  sv.rec_len = save_record(sv.rec);
  sv.rec_at = 0;
  return sv.rec_len != 0;
}

static uint32_t save_record(uint8_t *to) {
  if (sv.inodes_left) {
    while (sv.next_inode < n_inodes && !INODE_AT(sv.next_inode).used) sv.next_inode++;
    if (sv.next_inode >= n_inodes) return 0;
    uint32_t i = sv.next_inode++;
    fs_inode *in = &INODE_AT(i);
    vd_put_u32(to, i);
    vd_put_u32(to + 4, in->parent);
    vd_put_u64(to + 8, in->nlookup);
    vd_put_u32(to + 16, in->mode);
    vd_put_u32(to + 20, in->name ? (uint32_t)in->name_len : NO_NAME);
    if (in->name) memcpy(to + INODE_HEAD, in->name, in->name_len);
    sv.inodes_left--;
    return (uint32_t)inode_record_len(in);
  }
  if (sv.files_left) {
    while (sv.next_file < n_files && !files[sv.next_file].used) sv.next_file++;
    if (sv.next_file >= n_files) return 0;
    uint32_t i = sv.next_file++;
    vd_put_u64(to, (uint64_t)i + 1);
    vd_put_u32(to + 8, (uint32_t)files[i].nodeid);
    vd_put_u32(to + 12, files[i].flags);
    sv.files_left--;
    return FILE_REC;
  }
  return 0;
}

const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining) {
  if (offset == 0) save_begin();
  else if (offset != sv.produced) return "fs state read out of order (chunks must follow each other from offset 0)";
  uint64_t left = sv.total - sv.produced;
  uint32_t n = left < size ? (uint32_t)left : size;
  uint8_t *o = n ? malloc(n) : NULL;
  if (n && !o) return "out of memory";
  uint32_t at = 0;
  while (at < n) {
    /* Whole records straight into the chunk while the largest one still fits. */
    if (sv.rec_at == sv.rec_len && n - at >= sizeof sv.rec) {
      uint32_t k = save_record(o + at);
      if (!k) {
        free(o);
        return "fs tables changed during the save";
      }
      at += k;
      continue;
    }
    if (sv.rec_at == sv.rec_len && !save_next()) {
      free(o);
      return "fs tables changed during the save";
    }
    uint32_t k = sv.rec_len - sv.rec_at;
    if (k > n - at) k = n - at;
    memcpy(o + at, sv.rec + sv.rec_at, k);
    sv.rec_at += k;
    at += k;
  }
  sv.produced += n;
  out->data = o;
  out->len = n;
  *remaining = sv.total - sv.produced;
  return NULL;
}

/* ---- Load ---- */

enum { LD_IDLE, LD_HEADER, LD_INODES, LD_FILES, LD_DONE, LD_FAILED };

static struct {
  int phase;
  uint64_t got; /* bytes accepted */
  uint8_t unit[INODE_HEAD + MAX_NAME];
  uint32_t unit_len;
  uint32_t initialized, minor, flags, readahead;
  uint8_t record_locks; /* header lock flags bit 0 (version 2) */
  uint32_t ni, nf, inodes_done, files_done;
  uint8_t *files; /* the file records, reopened at finish-load */
} ld;

static void load_reset(void) {
  free(ld.files);
  memset(&ld, 0, sizeof ld);
}

/* Bytes the unit being assembled needs in all. */
static uint32_t unit_need(void) {
  switch (ld.phase) {
    case LD_HEADER: return HEADER;
    case LD_INODES: {
      if (ld.unit_len < INODE_HEAD) return INODE_HEAD;
      uint32_t nl = vd_get_u32(ld.unit + 20);
      return INODE_HEAD + (nl == NO_NAME ? 0 : nl);
    }
    default: return FILE_REC;
  }
}

static const char *take_header(const uint8_t *s) {
  if (memcmp(s, "VFSS", 4) != 0) return "not an fs state (bad magic)";
  if (s[5] > STATE_VERSION) return "fs state from a newer plugin this version cannot read";
  if (s[4] < 1) return "unsupported fs state version";
  /* Version 1 had zero here; a later version may set flags it knows an older reader can skip. */
  ld.record_locks = s[4] >= 2 && (s[6] & 1);
  ld.initialized = vd_get_u32(s + 8);
  ld.minor = vd_get_u32(s + 12);
  ld.flags = vd_get_u32(s + 16);
  ld.readahead = vd_get_u32(s + 20);
  ld.ni = vd_get_u32(s + 24);
  ld.nf = vd_get_u32(s + 28);
  if (ld.initialized > 1) return "fs state: bad session flag";
  if (ld.ni > MAX_SAVED_INODES) return "fs state: inode count larger than a plugin can hold";
  if (ld.nf > MAX_SAVED_FILES) return "fs state: more open files than a plugin can hold";
  if (!ld.initialized && (ld.ni || ld.nf)) return "fs state: tables without a session";
  fs_load_begin(ld.ni);
  if (ld.nf) {
    ld.files = malloc((size_t)ld.nf * FILE_REC);
    if (!ld.files) return "out of memory";
  }
  ld.phase = ld.ni ? LD_INODES : ld.nf ? LD_FILES : LD_DONE;
  return NULL;
}

/* One complete unit in ld.unit. */
static const char *take_unit(void) {
  const uint8_t *u = ld.unit;
  if (ld.phase == LD_HEADER) return take_header(u);
  if (ld.phase == LD_INODES) {
    uint32_t nl = vd_get_u32(u + 20);
    const char *err = fs_load_inode(vd_get_u32(u), vd_get_u32(u + 4), nl == NO_NAME ? NULL : u + INODE_HEAD,
                                    nl == NO_NAME ? 0 : nl, vd_get_u64(u + 8), vd_get_u32(u + 16));
    if (err) return err;
    if (++ld.inodes_done == ld.ni) ld.phase = ld.nf ? LD_FILES : LD_DONE;
    return NULL;
  }
  memcpy(ld.files + (size_t)ld.files_done * FILE_REC, u, FILE_REC);
  if (++ld.files_done == ld.nf) ld.phase = LD_DONE;
  return NULL;
}

static const char *feed(const uint8_t *p, size_t n) {
  while (n) {
    if (ld.phase == LD_DONE) return "fs state: bytes after the file table";
    uint32_t need = unit_need();
    if (ld.phase == LD_INODES && ld.unit_len >= INODE_HEAD) {
      uint32_t nl = vd_get_u32(ld.unit + 20);
      if (nl != NO_NAME && nl > MAX_NAME) return "fs state: bad name length";
    }
    uint32_t k = need - ld.unit_len;
    if (k > n) k = (uint32_t)n;
    memcpy(ld.unit + ld.unit_len, p, k);
    ld.unit_len += k;
    p += k;
    n -= k;
    if (ld.unit_len < need) continue;
    /* An inode head may say a name follows: then the unit is not complete yet. */
    if (ld.phase == LD_INODES && need == INODE_HEAD && unit_need() > INODE_HEAD) {
      uint32_t nl = vd_get_u32(ld.unit + 20);
      if (nl > MAX_NAME) return "fs state: bad name length";
      continue;
    }
    const char *err = take_unit();
    if (err) return err;
    ld.unit_len = 0;
  }
  return NULL;
}

const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len) {
  if (offset == 0) {
    load_reset();
    ld.phase = LD_HEADER;
  } else if (ld.phase == LD_IDLE || offset != ld.got) {
    ld.phase = LD_FAILED;
    return "state chunk out of order";
  }
  if (ld.phase == LD_FAILED) return "fs state: an earlier chunk was refused";
  if (len > MAX_STATE - ld.got) {
    ld.phase = LD_FAILED;
    return "fs state larger than 256 MiB";
  }
  ld.got += len;
  const char *err = feed(chunk, len);
  if (err) {
    ld.phase = LD_FAILED;
    fs_tables_clear();
  }
  return err;
}

const char *vd_finish_load(void) {
  const char *err = NULL;
  if (ld.phase == LD_FAILED) err = "fs state: a chunk was refused";
  else if (ld.phase == LD_IDLE || ld.phase == LD_HEADER) err = "fs state truncated";
  else if (ld.phase != LD_DONE || ld.unit_len) err = "fs state truncated in its tables";
  else if (!ld.initialized) fs_tables_clear();
  else err = fs_load_finish(ld.files, ld.nf, ld.minor, ld.flags, ld.readahead);
  if (!err && ld.initialized) session.record_locks = ld.record_locks;
  if (err) fs_tables_clear();
  load_reset();
  return err;
}
