/*
 * Migratable state of the fs plugin: what a destination needs to keep serving a guest that
 * holds node ids and file handles from the source. Host handles cannot travel (they are
 * fds), so inodes are saved as (parent node id, name) and re-resolved on load by lookups
 * from the root, file handles as (node id, open flags) and reopened (never with O_TRUNC).
 *
 * Format, little-endian (version 1):
 *   0  "VFSS"                        magic
 *   4  u8 version = 1, u8 oldest version that can read it = 1, u16 zero
 *   8  u32 session initialized (0/1), u32 FUSE minor, u32 FUSE flags, u32 max_readahead
 *  24  u32 inode count, u32 file count
 *  32  inodes: u32 id, u32 parent id, u64 nlookup, u32 mode, u32 name length
 *      (0xffffffff = no name: unlinked or never named), name bytes
 *      files:  u64 fh, u32 node id, u32 open flags
 * The root (node id 1) is not listed: it is always the share root.
 *
 * An inode that cannot be found again on load (renamed or deleted behind our back, missing
 * from the destination's share, another kind of file now at its name) or a file that cannot
 * be reopened fails the load with a message naming its path (--migration-on-error abort, the
 * default), or (guest-error) keeps its id with no host handle: the guest's requests on it
 * answer EIO instead of reaching another file. Inodes unlinked through the server while held
 * (saved without a name) are kept that way in both modes.
 */
#include <stdlib.h>
#include <string.h>

#include "state.h"
#include "vhost_device.h"

#define STATE_VERSION 1
#define HEADER 32
#define NO_NAME 0xffffffffu
#define MAX_STATE (256u * 1024 * 1024)

const char *fs_restore_inode(uint32_t id, uint32_t parent, const uint8_t *name, size_t len, uint64_t nlookup,
                             uint32_t mode);
const char *fs_restore_file(uint64_t fh, uint64_t nodeid, uint32_t flags);
uint32_t fs_restore_root(void);
void fs_restore_finish(uint32_t minor, uint32_t flags, uint32_t max_readahead);

static uint8_t *saving;
static size_t saving_len;
static vd_state_loader loader = {.max = MAX_STATE, .grow = 1};

static const char *snapshot(void) {
  size_t size = HEADER;
  uint32_t ni = 0, nf = 0;
  if (session.initialized) {
    for (uint32_t i = 2; i < n_inodes; i++)
      if (inodes[i].used) ni++, size += 24 + inodes[i].name_len;
    for (uint32_t i = 0; i < n_files; i++)
      if (files[i].used) nf++, size += 16;
  }
  free(saving);
  saving = malloc(size);
  if (!saving) return "out of memory";
  saving_len = size;
  memset(saving, 0, HEADER);
  memcpy(saving, "VFSS", 4);
  saving[4] = STATE_VERSION;
  saving[5] = 1;
  vd_put_u32(saving + 8, session.initialized);
  vd_put_u32(saving + 12, session.minor);
  vd_put_u32(saving + 16, session.flags);
  vd_put_u32(saving + 20, session.max_readahead);
  vd_put_u32(saving + 24, ni);
  vd_put_u32(saving + 28, nf);
  uint8_t *p = saving + HEADER;
  if (!session.initialized) return NULL;
  for (uint32_t i = 2; i < n_inodes; i++) {
    fs_inode *in = &inodes[i];
    if (!in->used) continue;
    vd_put_u32(p, i);
    vd_put_u32(p + 4, (uint32_t)in->parent);
    vd_put_u64(p + 8, in->nlookup);
    vd_put_u32(p + 16, in->mode);
    vd_put_u32(p + 20, in->name ? (uint32_t)in->name_len : NO_NAME);
    if (in->name) memcpy(p + 24, in->name, in->name_len);
    p += 24 + in->name_len;
  }
  for (uint32_t i = 0; i < n_files; i++) {
    if (!files[i].used) continue;
    vd_put_u64(p, (uint64_t)i + 1);
    vd_put_u32(p + 8, (uint32_t)files[i].nodeid);
    vd_put_u32(p + 12, files[i].flags);
    p += 16;
  }
  return NULL;
}

const char *vd_get_state(uint64_t offset, uint32_t size, vd_buf *out, uint64_t *remaining) {
  if (offset == 0) {
    const char *err = snapshot();
    if (err) return err;
  }
  return vd_state_serve(saving, saving_len, offset, size, out, remaining);
}

const char *vd_set_state(uint64_t offset, const uint8_t *chunk, size_t len) {
  return vd_state_accept(&loader, offset, chunk, len, "fs state larger than 256 MiB");
}

typedef struct saved_inode {
  uint32_t id, parent, mode, name_len;
  uint64_t nlookup;
  const uint8_t *name;
} saved_inode;

static const char *load(void) {
  const uint8_t *s = loader.data;
  size_t n = loader.len;
  if (loader.overflow) return "fs state larger than 256 MiB";
  if (n < HEADER) return "fs state truncated";
  if (memcmp(s, "VFSS", 4) != 0) return "not an fs state (bad magic)";
  if (s[5] > STATE_VERSION) return "fs state from a newer plugin this version cannot read";
  if (s[4] < 1) return "unsupported fs state version";
  uint32_t initialized = vd_get_u32(s + 8), minor = vd_get_u32(s + 12), flags = vd_get_u32(s + 16), readahead = vd_get_u32(s + 20);
  uint32_t ni = vd_get_u32(s + 24), nf = vd_get_u32(s + 28);
  if (initialized > 1) return "fs state: bad session flag";
  /* Parse and check everything before touching the live tables. */
  if (ni > (n - HEADER) / 24) return "fs state: inode count larger than the state";
  saved_inode *saved = malloc((ni ? ni : 1) * sizeof *saved);
  if (!saved) return "out of memory";
  size_t at = HEADER;
  for (uint32_t i = 0; i < ni; i++) {
    if (n - at < 24) return free(saved), "fs state truncated in the inode table";
    saved_inode *x = &saved[i];
    x->id = vd_get_u32(s + at);
    x->parent = vd_get_u32(s + at + 4);
    x->nlookup = vd_get_u64(s + at + 8);
    x->mode = vd_get_u32(s + at + 16);
    x->name_len = vd_get_u32(s + at + 20);
    at += 24;
    x->name = NULL;
    if (x->name_len != NO_NAME) {
      if (x->name_len > 255 || n - at < x->name_len) return free(saved), "fs state: bad name length";
      x->name = s + at;
      at += x->name_len;
    }
  }
  if (n - at != (size_t)nf * 16) return free(saved), "fs state: file table does not end the state";
  if (!initialized) {
    free(saved);
    fs_tables_clear();
    return NULL;
  }
  uint32_t err = fs_restore_root();
  if (err) return free(saved), "fs state: the share root cannot be opened";
  /* Parents first: repeat passes until nothing more resolves; the rest have no live parent. */
  uint8_t *done = calloc(ni ? ni : 1, 1);
  if (!done) return free(saved), "out of memory";
  const char *msg = NULL;
  for (int progress = 1; progress && !msg;) {
    progress = 0;
    for (uint32_t i = 0; i < ni && !msg; i++) {
      if (done[i]) continue;
      uint32_t p = saved[i].parent;
      int ready = p == 1 || (p < n_inodes && inodes[p].used);
      if (!ready) continue;
      msg = fs_restore_inode(saved[i].id, p, saved[i].name, saved[i].name ? saved[i].name_len : 0, saved[i].nlookup,
                             saved[i].mode);
      done[i] = 1;
      progress = 1;
    }
  }
  for (uint32_t i = 0; i < ni && !msg; i++)
    if (!done[i]) msg = fs_restore_inode(saved[i].id, 0, NULL, 0, saved[i].nlookup, saved[i].mode);
  free(done);
  free(saved);
  for (uint32_t i = 0; i < nf && !msg; i++) {
    const uint8_t *f = s + at + (size_t)i * 16;
    msg = fs_restore_file(vd_get_u64(f), vd_get_u32(f + 8), vd_get_u32(f + 12));
  }
  if (msg) {
    fs_tables_clear();
    return msg;
  }
  fs_restore_finish(minor, flags, readahead);
  return NULL;
}

const char *vd_finish_load(void) {
  const char *err = load();
  vd_state_loader_reset(&loader);
  return err;
}
