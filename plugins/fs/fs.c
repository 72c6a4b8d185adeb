/*
 * virtio-fs (device id 26): a FUSE server over the host's `filesystem` capability.
 *
 * Queues: 0 = hiprio (FORGET, BATCH_FORGET, INTERRUPT), 1..N = request queues, N from the
 * plugin option request-queues (default 1, at most MAX_REQUEST_QUEUES). Every queue is served
 * by this one instance (one inode and file table); a request is handled the same whichever
 * queue it came on, and its reply goes back on that queue (the host's used ring). Config
 * space: tag[36] (the operator's --tag) and num_request_queues (N). No device features.
 *
 * Every request is untrusted: each header and argument is bounds-checked against the bytes
 * the guest supplied; a malformed one gets EINVAL (or, if it is too short to carry a
 * `unique`, an empty answer), an unknown opcode ENOSYS. Nothing a guest sends makes a
 * callback return an error, so the device is never marked broken by a guest.
 *
 * Tables: nodeids index `inodes` (1 = the share root); each holds a host node handle and
 * the kernel's lookup count; the same host inode (dev, ino, and the generation: see
 * hash_find_entry) is always the same nodeid (a hard link looked up twice is one inode). FUSE file handles index `files`, each an open
 * host handle. Both are capped, so a guest cannot exhaust our memory; the host caps fds.
 *
 * Extended attributes (GETXATTR, LISTXATTR, SETXATTR, REMOVEXATTR) go to the host's xattr
 * calls, which answer ENOSYS unless the operator gave --xattr: the guest kernel remembers
 * that and stops asking (getfattr then fails with EOPNOTSUPP). A size of 0 asks for the
 * length only; a value or list longer than the guest's size is ERANGE.
 *
 * POSIX ACLs (--posix-acl, "POSIX ACLs" below): INIT offers FUSE_POSIX_ACL with FUSE_DONT_MASK
 * and FUSE_SETXATTR_EXT, and refuses a kernel that lacks any of them (EPROTO), as virtiofsd
 * 1.13 does; the guest kernel then enforces the ACLs it reads through GETXATTR, and leaves the
 * umask to us: creates go to the host with the request's umask (the *-with-umask calls).
 *
 * Locks (GETLK/SETLK/SETLKW, flock) are the host's (host/fs/locks.ts); a SETLKW that must
 * wait is held and answered from a timer event ("Locks" below).
 *
 * TMPFILE (open(dir, O_TMPFILE)) makes an unnamed file on the host ("Unnamed files" below).
 *
 * Not implemented (answered ENOSYS, which the kernel remembers): IOCTL, POLL, DAX mappings.
 * What a request creates is given to the request's uid/gid afterwards (own_new); permission
 * checks are the guest kernel's.
 */
#include "fuse.h"
#include "state.h"
#include "vhost_device.h"
#include "vhost_fs.h"

#include <stdlib.h>
#include <string.h>

#define ENOENT 2
#define EIO 5
#define EBADF 9
#define ENOMEM 12
#define EINVAL 22
#define ENFILE 23
#define ERANGE 34
#define E2BIG 7
#define ENOSYS 38
#define ENAMETOOLONG 36
#define EROFS 30
#define EPROTO 71
#define EPERM 1
#define EEXIST 17
#define EINTR 4
#define EAGAIN 11
#define ENOLCK 37
#define EINPROGRESS 115
#define EOPNOTSUPP 95

#define O_ACCMODE 3
#define O_CREAT 0100
#define O_EXCL 0200
#define O_NOCTTY 0400
#define O_DIRECTORY 0200000

/*
 * The largest FUSE_WRITE (and, with FUSE_MAX_PAGES, FUSE_READ) a guest may send: 1 MiB, as
 * virtiofsd. Each request costs the same wake-up, plugin call and answer check whatever its
 * size, so 1 MiB requests move a sequential file 8x cheaper than the kernel's default of 32
 * pages (128 KiB). The host moves at most MAX_FS_IO (1 MiB) per read or write.
 */
#define MAX_WRITE (1024 * 1024)
#define MAX_PAGES (MAX_WRITE / 4096)
/*
 * What the plugin sees of each request (the most a device may ask for). The in-header and
 * every op struct are far smaller; the rest is for what follows them: names (NAME_MAX 255),
 * symlink targets, xattr names and values, forget lists. A request whose arguments reach
 * past it is answered ENAMETOOLONG (a name) or E2BIG (an xattr value): with the 40-byte
 * header, a symlink's name and target share 4056 bytes, an xattr value gets what its name
 * leaves of them. FUSE_WRITE's payload is never read from here: it goes to the file by a
 * transfer from the byte after fuse_write_in.
 */
#define FS_PREFIX_LEN 4096
#define MAX_FILES (1u << 16)
/* Both hashes have a fixed size: at a million inodes chains are ~4 long, and no request ever
 * pays for rehashing the whole table. */
#define HASH_BUCKETS (1u << 18)
#define NAME_BUCKETS (1u << 18)
#define OUR_MINOR 31

/* ---- Tables ---- */

/* Node id i is INODE_AT(i) ([0] unused, [1] root), in pages of INODE_PAGE slots: a table of a
 * million inodes grows a page at a time and is never copied (one large realloc would grow the
 * plugin's memory by ~100 MB inside one call). */
fs_inode *inode_pages[MAX_INODES / INODE_PAGE];
uint32_t n_inodes;  /* slots in use (high-water mark) */
static uint32_t cap_inodes; /* slots in allocated pages */
static uint32_t free_inode; /* head of the free list through .hnext, 0 = none */
static uint32_t buckets[HASH_BUCKETS];

fs_file *files; /* fh = index + 1 */
uint32_t n_files;
static uint32_t cap_files;

fs_session session;

static uint32_t hash_of(uint64_t dev, uint64_t ino) {
  uint64_t h = (dev * 0x9E3779B97F4A7C15ull) ^ (ino * 0xC2B2AE3D27D4EB4Full);
  return (uint32_t)(h >> 32) % HASH_BUCKETS;
}

static void hash_insert(uint32_t id) {
  uint32_t b = hash_of(INODE_AT(id).dev, INODE_AT(id).ino);
  INODE_AT(id).hnext = buckets[b];
  buckets[b] = id;
}

static void hash_remove(uint32_t id) {
  uint32_t b = hash_of(INODE_AT(id).dev, INODE_AT(id).ino);
  for (uint32_t *p = &buckets[b]; *p; p = &INODE_AT(*p).hnext) {
    if (*p == id) {
      *p = INODE_AT(id).hnext;
      return;
    }
  }
}

static uint32_t hash_find(uint64_t dev, uint64_t ino) {
  for (uint32_t id = buckets[hash_of(dev, ino)]; id; id = INODE_AT(id).hnext) {
    if (INODE_AT(id).dev == dev && INODE_AT(id).ino == ino) return id;
  }
  return 0;
}

/*
 * The inode the table holds for host entry e, or 0. (dev, ino) alone is not an inode's
 * identity: with file handles nothing holds a looked-up inode open, so the host side may
 * delete it and give its number to a new file (another generation). So a fresh handle
 * (e->node) whose (dev, ino) the table holds is checked with the host (same-node, a compare
 * of stored handles); when it is another inode, the held one leaves the index (the guest
 * keeps it until FORGET, its handle answering ESTALE) and the new one takes its place: never
 * two inodes under one (dev, ino), never the old node id for the new file.
 */
static uint32_t hash_find_entry(const vfs_entry *e) {
  uint32_t id = hash_find(e->attr.dev, e->attr.ino);
  if (id && e->node && !vfs_same_node(INODE_AT(id).handle, e->node)) {
    hash_remove(id); /* inode_free's and inode_kill's hash_remove then find nothing to take */
    id = 0;
  }
  return id;
}

/*
 * The (parent, name) index: which inode was last looked up by that name. It keeps the names a
 * migration carries in step with renames and unlinks without scanning the table, and lets a
 * lookup on a migration destination find the pending inode the guest already holds for that
 * name. At most one inode holds a given (parent, name).
 */
static uint32_t *nbuckets; /* NAME_BUCKETS heads, allocated on first use */
static uint32_t n_named;

static uint32_t name_hash(uint64_t parent, const uint8_t *name, size_t len) {
  uint32_t h = 2166136261u ^ (uint32_t)(parent * 0x9E3779B1u);
  for (size_t i = 0; i < len; i++) h = (h ^ name[i]) * 16777619u;
  return (h ^ (h >> 15)) % NAME_BUCKETS;
}

static uint32_t name_find(uint64_t parent, const uint8_t *name, size_t len) {
  if (!nbuckets) return 0;
  for (uint32_t id = nbuckets[name_hash(parent, name, len)]; id; id = INODE_AT(id).nnext) {
    fs_inode *in = &INODE_AT(id);
    if (in->parent == parent && in->name_len == len && memcmp(in->name, name, len) == 0) return id;
  }
  return 0;
}

/* Takes inode id's name out of the index and frees it. */
static void name_drop(uint32_t id) {
  fs_inode *in = &INODE_AT(id);
  if (!in->name) return;
  uint32_t *p = &nbuckets[name_hash(in->parent, in->name, in->name_len)];
  for (; *p; p = &INODE_AT(*p).nnext) {
    if (*p == id) {
      *p = in->nnext;
      n_named--;
      break;
    }
  }
  free(in->name);
  in->name = NULL;
  in->name_len = 0;
  in->nnext = 0;
}

/* Gives inode id the name `copy` (malloc'd, taken over) in parent; 0 if the index cannot grow. */
static int name_put(uint32_t id, uint64_t parent, uint8_t *copy, size_t len) {
  if (!nbuckets && !(nbuckets = calloc(NAME_BUCKETS, sizeof *nbuckets))) return 0;
  fs_inode *in = &INODE_AT(id);
  in->name = copy;
  in->name_len = len;
  in->parent = parent;
  uint32_t k = name_hash(parent, copy, len);
  in->nnext = nbuckets[k];
  nbuckets[k] = id;
  n_named++;
  return 1;
}

static void inode_lose_name(uint32_t id);

static fs_inode *inode_get(uint64_t nodeid) {
  if (nodeid == 0 || nodeid >= n_inodes || !INODE_AT(nodeid).used) return NULL;
  return &INODE_AT(nodeid);
}

/* One more page of (zeroed) slots; 0 when out of memory. */
static int inode_page_add(void) {
  fs_inode *p = calloc(INODE_PAGE, sizeof *p);
  if (!p) return 0;
  inode_pages[cap_inodes / INODE_PAGE] = p;
  cap_inodes += INODE_PAGE;
  return 1;
}

/* A slot for a new inode, or 0 when the table is full. */
static uint32_t inode_alloc(void) {
  if (free_inode) {
    uint32_t id = free_inode;
    free_inode = INODE_AT(id).hnext;
    return id;
  }
  if (n_inodes >= MAX_INODES) return 0;
  if (n_inodes == cap_inodes && !inode_page_add()) return 0;
  return n_inodes++;
}

static void inode_free(uint32_t id) {
  fs_inode *in = &INODE_AT(id);
  if (!in->pending) hash_remove(id);
  if (in->handle) vfs_close(in->handle);
  name_drop(id);
  memset(in, 0, sizeof *in);
  in->hnext = free_inode;
  free_inode = id;
}

/*
 * Inode id is now known as `name` in directory `parent`. Whoever held that name before no
 * longer does (it was replaced behind our back). A name that cannot be stored leaves the
 * inode nameless: it is only what a migration resolves by.
 */
static void set_name(uint32_t id, uint64_t parent, const uint8_t *name, size_t len) {
  fs_inode *in = &INODE_AT(id);
  if (in->name && in->parent == parent && in->name_len == len && memcmp(in->name, name, len) == 0) return;
  uint32_t holder = name_find(parent, name, len);
  if (holder) inode_lose_name(holder);
  name_drop(id);
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy) return;
  memcpy(copy, name, len);
  if (!name_put(id, parent, copy, len)) free(copy);
}

/* Slot `id` holds `e` afresh, looked up once, and is found by its (dev, ino). */
static void inode_init(uint32_t id, const vfs_entry *e) {
  fs_inode *in = &INODE_AT(id);
  memset(in, 0, sizeof *in);
  in->used = 1;
  in->handle = e->node;
  in->dev = e->attr.dev;
  in->ino = e->attr.ino;
  in->mode = e->attr.mode;
  in->nlookup = 1;
  hash_insert(id);
}

/*
 * Take a fresh host entry into the table: the same host inode becomes the same nodeid (the
 * new handle is closed), otherwise a new nodeid. Counts one kernel lookup. 0 = full (the
 * handle is closed).
 */
static int inode_adopt(uint32_t id, const vfs_entry *e);

static uint32_t inode_take(const vfs_entry *e, uint64_t parent, const uint8_t *name, size_t len) {
  uint32_t id = hash_find_entry(e);
  if (!id && !e->node) {
    /* lookup-known's "the inode you hold" (no handle) for one this table does not hold. */
    vd_log(VD_LOG_ERROR, "fs: the host answered lookup-known with no handle for an inode not held (a host bug)");
    return 0;
  }
  if (!id && name) {
    /* A migration's pending inode the guest holds under this very name: this is it. */
    uint32_t p = name_find(parent, name, len);
    if (p && INODE_AT(p).pending && inode_adopt(p, e)) {
      INODE_AT(p).nlookup++;
      return p;
    }
  }
  if (id) {
    if (e->node) vfs_close(e->node);
    INODE_AT(id).nlookup++;
    if (name) set_name(id, parent, name, len);
    return id;
  }
  id = inode_alloc();
  if (!id) {
    vfs_close(e->node);
    return 0;
  }
  inode_init(id, e);
  if (name) set_name(id, parent, name, len);
  return id;
}

/* Keep the (parent, name) hints that migration re-resolves in step with renames/unlinks. */
static void names_renamed(uint64_t od, const uint8_t *on, size_t ol, uint64_t nd, const uint8_t *nn, size_t nl,
                          uint32_t flags) {
  uint32_t a = name_find(od, on, ol), b = name_find(nd, nn, nl);
  if (flags & 2) { /* RENAME_EXCHANGE */
    if (a) name_drop(a);
    if (b) name_drop(b);
    if (a) set_name(a, nd, nn, nl);
    if (b) set_name(b, od, on, ol);
    return;
  }
  if (b && b != a) inode_lose_name(b); /* replaced: no longer reachable by that name */
  if (a) set_name(a, nd, nn, nl);
}

static void names_unlinked(uint64_t dir, const uint8_t *name, size_t len) {
  uint32_t id = name_find(dir, name, len);
  if (id) inode_lose_name(id);
}

static void forget(uint64_t nodeid, uint64_t n) {
  fs_inode *in = inode_get(nodeid);
  if (!in || nodeid == FUSE_ROOT_ID) return;
  in->nlookup = n >= in->nlookup ? 0 : in->nlookup - n;
  if (in->nlookup == 0) inode_free((uint32_t)nodeid);
}

static uint64_t file_alloc(vfs_handle h, uint32_t flags, uint64_t nodeid) {
  uint32_t i;
  for (i = 0; i < n_files; i++)
    if (!files[i].used) break;
  if (i == n_files) {
    if (n_files >= MAX_FILES) return 0;
    if (n_files == cap_files) {
      uint32_t nc = cap_files ? cap_files * 2 : 64;
      fs_file *p = realloc(files, nc * sizeof *p);
      if (!p) return 0;
      files = p;
      cap_files = nc;
    }
    n_files++;
  }
  files[i] = (fs_file){.used = 1, .handle = h, .flags = flags, .nodeid = nodeid};
  return (uint64_t)i + 1;
}

static fs_file *file_get(uint64_t fh) {
  if (fh == 0 || fh > n_files || !files[fh - 1].used) return NULL;
  return &files[fh - 1];
}

/* --cache, asked once per INIT: how long the guest may trust entries and attributes, and
 * the open flags that decide whether it caches file data (virtiofsd's policies). */
#define FOPEN_DIRECT_IO (1u << 0)
#define FOPEN_KEEP_CACHE (1u << 1)
#define FOPEN_CACHE_DIR (1u << 3)
static int cache_policy = VFS_CACHE_AUTO;
/* --posix-acl, asked once per INIT (or load): the host passes the ACL names through. */
static int acl_granted;

static uint64_t cache_timeout(void) {
  switch (cache_policy) {
    case VFS_CACHE_NEVER: return 0;
    case VFS_CACHE_AUTO: return 1;
    default: return 86400; /* metadata, always: a day */
  }
}

static uint32_t cache_open_flags(int dir) {
  switch (cache_policy) {
    case VFS_CACHE_NEVER:
    case VFS_CACHE_METADATA: return dir ? 0 : FOPEN_DIRECT_IO;
    case VFS_CACHE_ALWAYS: return dir ? FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE : FOPEN_KEEP_CACHE;
    default: return 0;
  }
}

/* A SETLKW waiting for its lock: held, answered when the host's wait with `token` resolves. */
typedef struct lock_wait {
  uint64_t token; /* 0: free slot */
  uint32_t id, cap;
  uint64_t unique, owner;
  vfs_handle file;
  vfs_lock lk;
  int flock;
} lock_wait;
#define MAX_LOCK_WAITS 256
static lock_wait waits[MAX_LOCK_WAITS];
static uint64_t next_token = 1;

void fs_tables_clear(void) {
  for (uint32_t i = 1; i < n_inodes; i++)
    if (INODE_AT(i).used) {
      if (INODE_AT(i).handle) vfs_close(INODE_AT(i).handle);
      free(INODE_AT(i).name);
    }
  for (uint32_t i = 0; i < n_files; i++)
    if (files[i].used) vfs_close(files[i].handle);
  for (uint32_t i = 0; i < cap_inodes / INODE_PAGE; i++) {
    free(inode_pages[i]);
    inode_pages[i] = NULL;
  }
  free(files);
  files = NULL;
  n_inodes = cap_inodes = free_inode = 0;
  n_files = cap_files = 0;
  memset(buckets, 0, sizeof buckets);
  free(nbuckets);
  nbuckets = NULL;
  n_named = 0;
  memset(&session, 0, sizeof session);
  /* Held SETLKWs are the host's to drop on a reset (their waits end with the share's handles). */
  memset(waits, 0, sizeof waits);
}

/* Nodeid 1 holds the share root `e` (a fresh start and the end of a load alike). */
static void put_root(const vfs_entry *e) {
  inode_init(FUSE_ROOT_ID, e);
}

/* The root as nodeid 1 (slot 0 is never used). */
static uint32_t setup_root(void) {
  vfs_entry e;
  uint32_t err = vfs_root(&e);
  if (err) return err;
  if (inode_alloc() != 0 || inode_alloc() != FUSE_ROOT_ID) {
    vfs_close(e.node);
    return ENOMEM;
  }
  memset(&INODE_AT(0), 0, sizeof(fs_inode));
  put_root(&e);
  return 0;
}

/*
 * ---- Migration (state.c) ----
 *
 * A destination rebuilds the tables with the saved node ids and file handles, but does not
 * look every inode up again inside the migration's downtime: a saved inode is *pending*,
 * holding only its (parent, name), and is resolved by lookups from the root the first time a
 * request needs it (inode_resolve), or adopted by a LOOKUP of its name (inode_take). A
 * guest that knew 100,000 inodes thus costs the load a table fill, no host call per inode.
 * Open files are reopened during the load (they must be: an I/O handle is what the guest
 * holds), which resolves their inodes and those inodes' directories then.
 *
 * A name that no longer resolves (renamed or deleted behind our back, missing from the
 * destination's share, another kind of file there now): during the load (an open file) it
 * fails the load with a message naming the path (--migration-on-error abort, the default) or
 * is logged (guest-error); on first use after the load it is logged. Either way the inode
 * keeps its id with no host handle and the guest's requests on it answer EIO instead of
 * reaching another file. Inodes unlinked through this server while held (saved without a
 * name), unnamed files (TMPFILE) not linked yet (no name either), under a lost directory, or
 * resolving to an inode already known under another id are lost the same way without a
 * message of their own.
 */

/* Longest chain of pending directories resolved for one inode (a cycle in a hostile state ends here). */
#define MAX_DEPTH 4096

/* Grow the inode table so `id` is a slot; new slots are unused. */
static int ensure_inode_slot(uint32_t id) {
  if (id >= MAX_INODES) return 0;
  while (id >= cap_inodes)
    if (!inode_page_add()) return 0;
  if (n_inodes <= id) n_inodes = id + 1; /* slots past the high-water mark are still zero */
  return 1;
}

/* --migration-on-error guest-error for the load in progress (else abort). */
static int restore_tolerant;
static char restore_msg[1024];

/* A tiny string builder (no stdio in the plugin: it would import WASI). */
static size_t msg_at;
static void msg_s(const char *t) {
  while (*t && msg_at + 1 < sizeof restore_msg) restore_msg[msg_at++] = *t++;
  restore_msg[msg_at] = 0;
}
static void msg_u(uint64_t v) {
  char d[24];
  int n = 0;
  do d[n++] = (char)('0' + v % 10), v /= 10;
  while (v);
  char t[24];
  for (int i = 0; i < n; i++) t[i] = d[n - 1 - i];
  t[n] = 0;
  msg_s(t);
}

static const char *errno_name(uint32_t e) {
  switch (e) {
    case 1: return "EPERM";
    case 2: return "ENOENT";
    case 13: return "EACCES";
    case 20: return "ENOTDIR";
    case 21: return "EISDIR";
    case 23: return "ENFILE";
    case 24: return "EMFILE";
    case 30: return "EROFS";
    case 40: return "ELOOP";
    case 18: return "EXDEV";
    case 6: return "ENXIO";
    default: return "error";
  }
}

/* "dir/sub/name" of a (restored) inode, from the share root; "?" for unnamed parts. */
static void path_of(uint32_t parent, const uint8_t *name, size_t len, char *buf, size_t cap) {
  const uint8_t *parts[64];
  size_t lens[64];
  int n = 0;
  if (name) parts[n] = name, lens[n++] = len;
  for (uint64_t p = parent; p > FUSE_ROOT_ID && n < 64;) {
    fs_inode *in = inode_get(p);
    if (!in || !in->name) {
      parts[n] = (const uint8_t *)"?", lens[n++] = 1;
      break;
    }
    parts[n] = in->name, lens[n++] = in->name_len;
    p = in->parent;
  }
  size_t at = 0;
  for (int i = n; i-- > 0;) {
    for (size_t j = 0; j < lens[i] && at + 2 < cap; j++) {
      uint8_t c = parts[i][j];
      buf[at++] = (c < 32 || c == 127) ? '?' : (char)c; /* one log line */
    }
    if (i && at + 2 < cap) buf[at++] = '/';
  }
  buf[at] = 0;
}

/* A lost inode: no host identity, never found by hash; the guest's requests on it answer EIO. */
static void inode_kill(uint32_t id) {
  fs_inode *in = &INODE_AT(id);
  if (!in->pending && in->handle) {
    hash_remove(id);
    vfs_close(in->handle);
  }
  in->pending = 0;
  in->handle = 0;
  in->dev = ~0ull;
  in->ino = ~0ull - id;
}

/* Inode id is no longer reachable by its name; a pending inode had nothing else to be found by. */
static void inode_lose_name(uint32_t id) {
  name_drop(id);
  if (INODE_AT(id).pending) inode_kill(id);
}

/* Pending inode id takes host entry e as its inode: 1, or 0 (e is the caller's) when e is
 * another kind of file or an inode already known under another id. */
static int inode_adopt(uint32_t id, const vfs_entry *e) {
  fs_inode *in = &INODE_AT(id);
  if ((e->attr.mode & 0170000) != (in->mode & 0170000) || hash_find_entry(e)) return 0;
  in->pending = 0;
  in->handle = e->node;
  in->dev = e->attr.dev;
  in->ino = e->attr.ino;
  hash_insert(id);
  return 1;
}

/* Resolve pending inode id, whose directory is not pending: NULL, or why it is lost (in restore_msg, open for a suffix). */
static const char *resolve_one(uint32_t id) {
  fs_inode *in = &INODE_AT(id);
  fs_inode *p = inode_get(in->parent);
  if (!p || !p->handle || !in->name) {
    inode_kill(id); /* under a lost directory: that loss was the one reported */
    return NULL;
  }
  vfs_entry e;
  memset(&e, 0, sizeof e);
  const char *why = NULL;
  uint32_t err = vfs_lookup(p->handle, in->name, in->name_len, &e);
  if (!err) {
    if (inode_adopt(id, &e)) return NULL;
    vfs_close(e.node);
    if ((e.attr.mode & 0170000) == (in->mode & 0170000)) {
      inode_kill(id); /* already known under another id (a hard link): keep this one lost */
      return NULL;
    }
    err = ENOENT;
    why = "another kind of file has that name now";
  }
  char path[768];
  path_of((uint32_t)in->parent, in->name, in->name_len, path, sizeof path);
  msg_at = 0;
  msg_s("cannot find \"");
  msg_s(path);
  msg_s("\" (node ");
  msg_u(id);
  msg_s(") in the destination's share: ");
  msg_s(why ? why : errno_name(err));
  inode_kill(id);
  return restore_msg;
}

/*
 * Make inode id usable if it is pending: resolve it and its pending directories, top down.
 * During a load (loading = 1, an open file's inode) a lost name under --migration-on-error
 * abort is returned, to fail the load; otherwise it is logged and the inode answers EIO.
 */
static const char *inode_resolve(uint32_t id, int loading) {
  for (uint32_t round = 0; INODE_AT(id).pending && round <= MAX_DEPTH + 1; round++) {
    uint32_t cur = id, steps = 0;
    for (;;) {
      fs_inode *p = inode_get(INODE_AT(cur).parent);
      if (!p || !p->pending || ++steps > MAX_DEPTH) break;
      cur = (uint32_t)INODE_AT(cur).parent;
    }
    if (steps > MAX_DEPTH) { /* a cycle of directories in the state: nothing to resolve */
      inode_kill(cur);
      continue;
    }
    const char *lost = resolve_one(cur);
    if (!lost) continue;
    if (loading && !restore_tolerant) {
      msg_s(" (--migration-on-error abort)");
      return lost;
    }
    msg_s(loading ? "; the guest gets EIO for it" : "; the guest gets EIO for it (found missing on first use after a migration)");
    vd_log(VD_LOG_WARN, lost);
  }
  if (INODE_AT(id).pending) inode_kill(id);
  return NULL;
}

/* The free list is built as the saved ids stream in (ascending, as a save writes them): the
 * gap below each id goes on it. Ids out of order make finish-load build it in one pass. */
static uint32_t load_high;
static int load_unordered;

/* A new load: empty tables (ids 0 and 1 reserved), the name index sized for `count` inodes. */
void fs_load_begin(uint32_t count) {
  fs_tables_clear();
  restore_tolerant = vfs_migration_guest_error();
  ensure_inode_slot(FUSE_ROOT_ID);
  /* Grow the plugin's memory once for the table to come (a fair estimate; freed at once, it
   * stays with the allocator) instead of in the allocator's small steps: in V8 each
   * memory.grow costs up to a millisecond once the memory is large, and a million inodes
   * would take thousands of them inside the load's calls. */
  if (count > INODE_PAGE) {
    void *volatile grown = malloc((size_t)count * (sizeof(fs_inode) + 40)); /* volatile: not elided */
    free(grown);
  }
  load_high = FUSE_ROOT_ID;
  load_unordered = 0;
}

/* Saved inode `id`: pending under `name` in `parent` (not looked up now), or lost (no name). */
const char *fs_load_inode(uint32_t id, uint32_t parent, const uint8_t *name, size_t len, uint64_t nlookup,
                          uint32_t mode) {
  if (id <= FUSE_ROOT_ID || !ensure_inode_slot(id)) return "fs state: inode id out of range";
  if (INODE_AT(id).used) return "fs state: inode id saved twice";
  if (id > load_high) {
    for (uint32_t gap = id - 1; gap > load_high; gap--) { /* gaps are rare: freed ids */
      INODE_AT(gap).hnext = free_inode;
      free_inode = gap;
    }
    load_high = id;
  } else {
    load_unordered = 1;
  }
  fs_inode *in = &INODE_AT(id);
  memset(in, 0, sizeof *in);
  in->used = 1;
  in->nlookup = nlookup ? nlookup : 1;
  in->mode = mode;
  in->parent = parent;
  if (!name) {
    inode_kill(id); /* unlinked through this server while held: no destination can find it */
    return NULL;
  }
  in->pending = 1;
  /* Not checked against the names already loaded (a lookup per record would cost the load
   * more than everything else): two saved with one name (an older plugin's state) both go into
   * the index; the first resolved takes the inode, the other finds it taken and is lost. */
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy) return "out of memory";
  memcpy(copy, name, len);
  if (!name_put(id, parent, copy, len)) {
    free(copy);
    return "out of memory";
  }
  return NULL;
}

/* Reopen saved file handle `fh` on inode `nodeid` with `flags` (never O_TRUNC again). */
static const char *restore_file(uint64_t fh, uint64_t nodeid, uint32_t flags) {
  if (fh == 0 || fh > MAX_FILES) return "file handle out of range";
  while (cap_files < fh) {
    uint32_t nc = cap_files ? cap_files * 2 : 64;
    fs_file *p = realloc(files, nc * sizeof *p);
    if (!p) return "out of memory";
    files = p;
    cap_files = nc;
  }
  while (n_files < fh) memset(&files[n_files++], 0, sizeof(fs_file));
  fs_file *f = &files[fh - 1];
  if (f->used) return "file handle saved twice";
  fs_inode *in = inode_get(nodeid);
  if (in && in->pending) {
    const char *lost = inode_resolve((uint32_t)nodeid, 1);
    if (lost) return lost;
  }
  vfs_handle h = 0;
  uint32_t of = flags & ~(uint32_t)(O_CREAT | O_EXCL | O_NOCTTY | 01000 /* O_TRUNC */);
  if (in && in->handle) {
    uint32_t err = vfs_open(in->handle, of, &h);
    if (err) {
      h = 0;
      char path[768];
      path_of((uint32_t)in->parent, in->name, in->name_len, path, sizeof path);
      msg_at = 0;
      msg_s("cannot reopen \"");
      msg_s(path);
      msg_s("\" (node ");
      msg_u(nodeid);
      msg_s(", file handle ");
      msg_u(fh);
      msg_s(") in the destination's share: ");
      msg_s(errno_name(err));
      msg_s(restore_tolerant ? "; the guest gets EIO for it" : " (--migration-on-error abort)");
      if (!restore_tolerant) return restore_msg;
      vd_log(VD_LOG_WARN, restore_msg);
    }
  }
  *f = (fs_file){.used = 1, .handle = h, .flags = flags, .nodeid = nodeid};
  return NULL;
}

/* The session, and the free list if the ids came out of order (see fs_load_inode). */
static void restore_finish(uint32_t minor, uint32_t flags, uint32_t max_readahead) {
  cache_policy = vfs_cache_policy(); /* no INIT on a migration destination */
  acl_granted = vfs_posix_acl();
  if (load_unordered) {
    free_inode = 0;
    for (uint32_t i = n_inodes; i-- > 2;) {
      if (!INODE_AT(i).used) {
        INODE_AT(i).hnext = free_inode;
        free_inode = i;
      }
    }
  }
  session.initialized = 1;
  session.minor = minor;
  session.flags = flags;
  session.max_readahead = max_readahead;
}

/* The end of a load: the root, the open files (`count` saved records of 16 bytes, see state.c). */
const char *fs_load_finish(const uint8_t *saved_files, uint32_t count, uint32_t minor, uint32_t flags,
                           uint32_t max_readahead) {
  /* The guest enforces ACLs it reads from us and sends creates unmasked: a share without
   * them would hand it raw ACL xattrs and files made without any umask. */
  if ((flags & FUSE_POSIX_ACL) && !vfs_posix_acl()) {
    fs_tables_clear();
    return "fs state: the source's guest mounted with POSIX ACLs (--posix-acl): start this destination with "
           "--posix-acl too";
  }
  vfs_entry e;
  if (vfs_root(&e)) {
    fs_tables_clear();
    return "fs state: the share root cannot be opened";
  }
  put_root(&e);
  for (uint32_t i = 0; i < count; i++) {
    const uint8_t *f = saved_files + (size_t)i * 16;
    const char *msg = restore_file(vd_get_u64(f), vd_get_u32(f + 8), vd_get_u32(f + 12));
    if (msg) {
      fs_tables_clear();
      return msg;
    }
  }
  restore_finish(minor, flags, max_readahead);
  return NULL;
}

/* ---- Replies ---- */

typedef struct reply {
  uint8_t *buf;
  uint32_t len, cap;
  uint64_t unique;
  int32_t error; /* 0 or -errno, written by reply_finish */
  /* FUSE_READ: rd_len bytes of backing rd_backing from rd_offset follow the header,
   * read by the host straight into the guest's buffers. */
  int read;
  uint32_t rd_backing, rd_len;
  uint64_t rd_offset;
  /* FUSE_WRITE: readable bytes [wr_source, wr_source + wr_len) go to the backing. */
  int write;
  uint32_t wr_source, wr_backing, wr_len;
  uint64_t wr_offset;
  /* SETLKW waiting for its lock: the request is held and answered from a timer event. */
  int held;
} reply;

/* Reserve `n` payload bytes after the header; NULL if the guest's buffer is too small. */
static void *reply_alloc(reply *r, uint32_t n) {
  uint32_t need = (uint32_t)sizeof(struct fuse_out_header) + n;
  if (need > r->cap) return NULL;
  r->buf = calloc(1, need);
  if (!r->buf) return NULL;
  r->len = need;
  return r->buf + sizeof(struct fuse_out_header);
}

static void reply_error(reply *r, uint32_t err) {
  r->read = r->write = 0;
  free(r->buf);
  r->buf = NULL;
  r->len = 0;
  if (r->cap < sizeof(struct fuse_out_header)) return;
  r->buf = calloc(1, sizeof(struct fuse_out_header));
  if (!r->buf) return;
  r->len = sizeof(struct fuse_out_header);
  r->error = -(int32_t)err;
}

static void reply_finish(reply *r) {
  if (!r->buf) return;
  /* A read's header counts its data; the host rewrites len when the read comes back short. */
  struct fuse_out_header h = {.len = r->len + (r->read ? r->rd_len : 0), .error = r->error, .unique = r->unique};
  memcpy(r->buf, &h, sizeof h);
}

static void *reply_or_erange(reply *r, uint32_t n) {
  void *p = reply_alloc(r, n);
  if (!p) reply_error(r, r->cap < sizeof(struct fuse_out_header) + n ? ERANGE : ENOMEM);
  return p;
}

static void fill_attr(struct fuse_attr *a, const vfs_attr *v) {
  a->ino = v->ino;
  a->size = v->size;
  a->blocks = v->blocks;
  a->atime = (uint64_t)v->atime;
  a->mtime = (uint64_t)v->mtime;
  a->ctime = (uint64_t)v->ctime;
  a->atimensec = v->atime_nsec;
  a->mtimensec = v->mtime_nsec;
  a->ctimensec = v->ctime_nsec;
  a->mode = v->mode;
  a->nlink = v->nlink;
  a->uid = v->uid;
  a->gid = v->gid;
  a->rdev = v->rdev;
  a->blksize = v->blksize;
}

static void fill_entry(struct fuse_entry_out *o, uint64_t nodeid, const vfs_attr *v) {
  memset(o, 0, sizeof *o);
  o->nodeid = nodeid;
  o->entry_valid = cache_timeout();
  o->attr_valid = cache_timeout();
  fill_attr(&o->attr, v);
}

static void reply_attr(reply *r, const vfs_attr *v) {
  struct fuse_attr_out *o = reply_or_erange(r, sizeof *o);
  if (!o) return;
  o->attr_valid = cache_timeout();
  fill_attr(&o->attr, v);
}

/* The request being served (its uid/gid own what it creates). */
static const struct fuse_in_header *current;

/*
 * A file the guest just created belongs to the requesting uid/gid, as with a local file
 * system (the host created it with its own credentials). The group stays the directory's
 * when that directory is set-group-id. Best effort: a host without the privilege to chown
 * leaves its own ids (the guest then sees them).
 */
static void own_new(vfs_entry *e, const fs_inode *dir) {
  if (!current) return;
  uint32_t valid = 0;
  if (e->attr.uid != current->uid) valid |= VFS_SET_UID;
  if (e->attr.gid != current->gid && !(dir && (dir->mode & 02000))) valid |= VFS_SET_GID;
  if (!valid) return;
  vfs_attr v;
  if (vfs_setattr(e->node, valid, 0, current->uid, current->gid, 0, 0, 0, 0, 0, &v) == 0) e->attr = v;
}

/* A new entry from the host: into the table, then the reply. */
static void reply_new_entry(reply *r, uint32_t err, const vfs_entry *e, uint64_t parent, const uint8_t *name,
                            size_t len) {
  if (err) return reply_error(r, err);
  struct fuse_entry_out *o = reply_alloc(r, sizeof *o);
  if (!o) {
    /* Do not count a lookup the kernel will never hear about. */
    if (e->node) vfs_close(e->node);
    return reply_error(r, ERANGE);
  }
  uint32_t id = inode_take(e, parent, name, len);
  if (!id) return reply_error(r, ENFILE);
  fill_entry(o, id, &e->attr);
}

/* ---- Argument parsing ---- */

typedef struct args {
  const uint8_t *p;
  size_t len;  /* bytes left that the plugin sees (inside the prefix) */
  size_t more; /* bytes of the request after those (past the prefix: never seen) */
} args;

static const void *take(args *a, size_t n) {
  if (a->len < n) return NULL;
  const void *p = a->p;
  a->p += n;
  a->len -= n;
  return p;
}

/* Copy a fixed struct out (the request bytes need not be aligned). */
#define TAKE(a, type, var)                 \
  type var;                                \
  do {                                     \
    const void *src_ = take(a, sizeof var); \
    if (!src_) return reply_error(r, (a)->more ? E2BIG : EINVAL); \
    memcpy(&var, src_, sizeof var);        \
  } while (0)

/* A NUL-terminated name: its bytes (without the NUL) or NULL. */
static const uint8_t *take_name(args *a, size_t *len) {
  const uint8_t *nul = memchr(a->p, 0, a->len);
  if (!nul) return NULL;
  *len = (size_t)(nul - a->p);
  const uint8_t *s = a->p;
  a->p = nul + 1;
  a->len -= *len + 1;
  return s;
}

#define NAME(a, var, lenvar)                    \
  size_t lenvar;                                \
  const uint8_t *var = take_name(a, &lenvar);   \
  if (!var) return reply_error(r, (a)->more ? ENAMETOOLONG : EINVAL)

/* A node id the guest holds: resolved now if a migration left it pending; one that a
 * migration could not find again (no host handle) answers EIO. */
#define INODE(id, var)                                         \
  fs_inode *var = inode_get(id);                               \
  if (!var) return reply_error(r, ENOENT);                     \
  if (var->pending) inode_resolve((uint32_t)(id), 0);         \
  if (!var->handle) return reply_error(r, EIO)

/* ---- Operations ---- */

static void op_init(reply *r, args *a) {
  TAKE(a, struct fuse_init_in, in);
  if (in.major < 7) return reply_error(r, EPROTO);
  struct fuse_init_out *o = reply_or_erange(r, sizeof *o);
  if (!o) return;
  o->major = 7;
  if (in.major > 7) return; /* the kernel retries with our major */
  if (!inode_get(FUSE_ROOT_ID)) {
    uint32_t err = setup_root();
    if (err) return reply_error(r, err);
  }
  uint32_t ours = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO |
                  FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_MAX_PAGES;
  acl_granted = vfs_posix_acl();
  if (acl_granted) {
    /* All three or none: ACLs without DONT_MASK would have the kernel apply the umask even
     * under a default ACL, and without SETXATTR_EXT we could not clear set-group-id when the
     * kernel asks. The operator asked for ACLs: a mount without them is refused, not degraded. */
    const uint32_t acl = FUSE_POSIX_ACL | FUSE_DONT_MASK | FUSE_SETXATTR_EXT;
    if ((in.flags & acl) != acl) {
      vd_log(VD_LOG_ERROR, "fs: --posix-acl, but the guest kernel does not offer FUSE_POSIX_ACL, FUSE_DONT_MASK and "
                           "FUSE_SETXATTR_EXT (Linux 5.15 or later does): mount refused (EPROTO)");
      return reply_error(r, EPROTO);
    }
    ours |= acl;
  }
  o->minor = in.minor < OUR_MINOR ? in.minor : OUR_MINOR;
  o->max_readahead = in.max_readahead;
  o->flags = in.flags & ours;
  o->max_background = 64;
  o->congestion_threshold = 48;
  /* Without FUSE_MAX_PAGES (minor < 28) the kernel keeps 32 pages and clamps max_write itself. */
  o->max_write = MAX_WRITE;
  if (o->flags & FUSE_MAX_PAGES) o->max_pages = MAX_PAGES;
  o->time_gran = 1;
  session.initialized = 1;
  cache_policy = vfs_cache_policy();
  session.minor = o->minor;
  session.flags = o->flags;
  session.max_readahead = o->max_readahead;
}

static void waits_end(void);
static void op_destroy(reply *r) {
  waits_end();
  fs_tables_clear();
  reply_alloc(r, 0);
}

/*
 * Look `name` up in directory `dir` (inode `parent`). When the table holds an inode under
 * that name, the host is told its handle and (dev, ino) (lookup-known): if the name is still
 * that inode (generation included), the host makes no handle (e->node 0), which inode_take
 * would only close again, a host call more per warm LOOKUP and READDIRPLUS entry.
 */
static uint32_t lookup_name(vfs_handle dir, uint64_t parent, const uint8_t *name, size_t len, vfs_entry *e) {
  uint32_t known = name_find(parent, name, len);
  if (!known || INODE_AT(known).pending || !INODE_AT(known).handle) return vfs_lookup(dir, name, len, e);
  return vfs_lookup_known(dir, name, len, INODE_AT(known).handle, INODE_AT(known).dev, INODE_AT(known).ino, e);
}

static void op_lookup(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, dir);
  NAME(a, name, len);
  vfs_entry e;
  uint32_t err = lookup_name(dir->handle, nodeid, name, len, &e);
  reply_new_entry(r, err, &e, nodeid, name, len);
}

static void op_getattr(reply *r, uint64_t nodeid) {
  INODE(nodeid, in);
  vfs_attr v;
  uint32_t err = vfs_getattr(in->handle, &v);
  if (err) return reply_error(r, err);
  reply_attr(r, &v);
}

static void op_setattr(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, in);
  TAKE(a, struct fuse_setattr_in, s);
  uint32_t valid = s.valid & (VFS_SET_MODE | VFS_SET_UID | VFS_SET_GID | VFS_SET_SIZE | VFS_SET_ATIME | VFS_SET_MTIME |
                              VFS_SET_ATIME_NOW | VFS_SET_MTIME_NOW);
  vfs_attr v;
  uint32_t err = vfs_setattr(in->handle, valid, s.mode, s.uid, s.gid, s.size, (int64_t)s.atime, s.atimensec,
                             (int64_t)s.mtime, s.mtimensec, &v);
  if (err) return reply_error(r, err);
  reply_attr(r, &v);
}

static void reply_open(reply *r, vfs_handle h, uint32_t flags, uint64_t nodeid) {
  struct fuse_open_out *o = reply_alloc(r, sizeof *o);
  if (!o) {
    vfs_close(h);
    return reply_error(r, ERANGE);
  }
  uint64_t fh = file_alloc(h, flags, nodeid);
  if (!fh) {
    vfs_close(h);
    return reply_error(r, ENFILE);
  }
  o->fh = fh;
  o->open_flags = cache_open_flags((flags & O_DIRECTORY) != 0);
}

static void op_open(reply *r, uint64_t nodeid, args *a, int dir) {
  INODE(nodeid, in);
  TAKE(a, struct fuse_open_in, o);
  uint32_t flags = o.flags & ~(uint32_t)(O_CREAT | O_EXCL | O_NOCTTY);
  if (dir) flags = O_DIRECTORY; /* read-only, whatever the guest asked */
  vfs_handle h;
  uint32_t err = vfs_open(in->handle, flags, &h);
  if (err) return reply_error(r, err);
  reply_open(r, h, flags, nodeid);
}

/* With FUSE_DONT_MASK (POSIX ACLs) the kernel sends the mode unmasked and its umask beside it:
 * the host creates under that umask, so a default ACL on the directory decides instead. */
static int umask_is_ours(void) { return (session.flags & FUSE_DONT_MASK) != 0; }

static uint32_t create(vfs_handle dir, const uint8_t *name, size_t len, uint32_t flags, const struct fuse_create_in *c,
                       vfs_entry *e, vfs_handle *h) {
  if (umask_is_ours()) return vfs_create_umask(dir, name, len, flags, c->mode, c->umask, e, h);
  return vfs_create(dir, name, len, flags, c->mode, e, h);
}

/* CREATE's and TMPFILE's answer: the new node (named, or NULL for an unnamed file) and its open
 * file; on any failure both host handles are closed and nothing is left in the tables. */
static void reply_created(reply *r, uint64_t parent, const uint8_t *name, size_t len, vfs_entry *e, vfs_handle h, uint32_t flags) {
  uint8_t *o = reply_alloc(r, sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out));
  if (!o) {
    vfs_close(e->node);
    vfs_close(h);
    return reply_error(r, ERANGE);
  }
  uint32_t id = inode_take(e, parent, name, len);
  if (!id) {
    vfs_close(h);
    return reply_error(r, ENFILE);
  }
  uint64_t fh = file_alloc(h, flags, id);
  if (!fh) {
    vfs_close(h);
    forget(id, 1);
    return reply_error(r, ENFILE);
  }
  struct fuse_entry_out eo;
  fill_entry(&eo, id, &e->attr);
  struct fuse_open_out oo = {.fh = fh, .open_flags = cache_open_flags(0)};
  memcpy(o, &eo, sizeof eo);
  memcpy(o + sizeof eo, &oo, sizeof oo);
}

static void op_create(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, dir);
  TAKE(a, struct fuse_create_in, c);
  NAME(a, name, len);
  vfs_entry e;
  vfs_handle h;
  uint32_t flags = c.flags & ~(uint32_t)(O_CREAT | O_NOCTTY);
  /* Exclusive first: only a file this request made is given to the requester (O_CREAT
   * without O_EXCL may open someone else's file, which must keep its owner). */
  uint32_t err = create(dir->handle, name, len, flags | O_EXCL, &c, &e, &h);
  if (!err) own_new(&e, dir);
  else if (err == EEXIST && !(flags & O_EXCL)) err = create(dir->handle, name, len, flags, &c, &e, &h);
  if (err) return reply_error(r, err);
  reply_created(r, nodeid, name, len, &e, h, flags);
}

/*
 * ---- Unnamed files (FUSE_TMPFILE) ----
 *
 * The guest's open(dir, O_TMPFILE): the host makes an unnamed file in that directory and
 * answers as CREATE does (entry and open file). Its inode joins the table like any other (found
 * by (dev, ino), so a later LINK's entry is this very node id) but with no (parent, name): it
 * has none, and a migration saves it as it saves a file unlinked while held (no name: lost on
 * the destination, the guest's requests on it and on its open file answer EIO). A LINK of it
 * (linkat(fd, "", ..., AT_EMPTY_PATH), or through /proc/self/fd) gives it a name as any link
 * does. Closed without a link, nothing of it is left on the host.
 */
#define O_APPEND 02000
#define O_DSYNC 010000
#define O_SYNC 04010000

static void op_tmpfile(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, dir);
  TAKE(a, struct fuse_create_in, c);
  /* The name that follows ("/", the kernel's placeholder dentry) names nothing: not read. What
   * the host's open may carry: O_EXCL keeps the file from ever being linked, as on a local fs. */
  uint32_t flags = c.flags & (uint32_t)(O_ACCMODE | O_APPEND | O_SYNC | O_DSYNC | O_EXCL);
  vfs_entry e;
  vfs_handle h;
  uint32_t err = vfs_tmpfile(dir->handle, flags, c.mode & 07777, umask_is_ours(), c.umask, &e, &h);
  if (err) return reply_error(r, err);
  own_new(&e, dir);
  reply_created(r, nodeid, NULL, 0, &e, h, flags & ~(uint32_t)O_EXCL);
}

static void op_mknod(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, dir);
  TAKE(a, struct fuse_mknod_in, m);
  NAME(a, name, len);
  vfs_entry e; /* regular files, FIFOs and sockets; the host refuses device nodes (EPERM) */
  uint32_t err = umask_is_ours() ? vfs_mknod_umask(dir->handle, name, len, m.mode, m.umask, &e)
                                 : vfs_mknod(dir->handle, name, len, m.mode, &e);
  if (!err) own_new(&e, dir);
  reply_new_entry(r, err, &e, nodeid, name, len);
}

static void op_mkdir(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, dir);
  TAKE(a, struct fuse_mkdir_in, m);
  NAME(a, name, len);
  vfs_entry e;
  uint32_t err = umask_is_ours() ? vfs_mkdir_umask(dir->handle, name, len, m.mode, m.umask, &e)
                                 : vfs_mkdir(dir->handle, name, len, m.mode, &e);
  if (!err) own_new(&e, dir);
  reply_new_entry(r, err, &e, nodeid, name, len);
}

static void op_symlink(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, dir);
  NAME(a, name, len);
  NAME(a, target, tlen);
  vfs_entry e;
  uint32_t err = vfs_symlink(dir->handle, name, len, target, tlen, &e);
  if (!err) own_new(&e, dir);
  reply_new_entry(r, err, &e, nodeid, name, len);
}

static void op_link(reply *r, uint64_t nodeid, args *a) {
  INODE(nodeid, dir);
  TAKE(a, struct fuse_link_in, l);
  NAME(a, name, len);
  INODE(l.oldnodeid, old);
  vfs_entry e;
  reply_new_entry(r, vfs_link(old->handle, dir->handle, name, len, &e), &e, nodeid, name, len);
}

static void op_unlink(reply *r, uint64_t nodeid, args *a, int dir) {
  INODE(nodeid, d);
  NAME(a, name, len);
  uint32_t err = dir ? vfs_rmdir(d->handle, name, len) : vfs_unlink(d->handle, name, len);
  if (err) return reply_error(r, err);
  names_unlinked(nodeid, name, len);
  reply_alloc(r, 0);
}

static void op_rename(reply *r, uint64_t nodeid, args *a, int v2) {
  INODE(nodeid, od);
  uint64_t newdir;
  uint32_t flags = 0;
  if (v2) {
    TAKE(a, struct fuse_rename2_in, in);
    newdir = in.newdir;
    flags = in.flags;
  } else {
    TAKE(a, struct fuse_rename_in, in);
    newdir = in.newdir;
  }
  NAME(a, oldname, olen);
  NAME(a, newname, nlen);
  INODE(newdir, nd);
  if (flags & ~7u) return reply_error(r, EINVAL); /* NOREPLACE, EXCHANGE, WHITEOUT */
  uint32_t err = vfs_rename(od->handle, oldname, olen, nd->handle, newname, nlen, flags);
  if (err) return reply_error(r, err);
  names_renamed(nodeid, oldname, olen, newdir, newname, nlen, flags);
  reply_alloc(r, 0);
}

static void op_readlink(reply *r, uint64_t nodeid) {
  INODE(nodeid, in);
  uint8_t buf[4096];
  size_t n;
  uint32_t err = vfs_readlink(in->handle, buf, sizeof buf, &n);
  if (err) return reply_error(r, err);
  if (n > sizeof buf) return reply_error(r, ERANGE);
  uint8_t *o = reply_or_erange(r, (uint32_t)n);
  if (o) memcpy(o, buf, n);
}

/* The backing index of an open file, asked of the host once per open. */
static uint32_t file_backing(fs_file *f, uint32_t *out) {
  if (!f->backing) {
    uint32_t b = 0;
    uint32_t err = vfs_backing(f->handle, &b);
    if (err) return err;
    f->backing = b + 1;
  }
  *out = f->backing - 1;
  return 0;
}

static void op_read(reply *r, args *a) {
  TAKE(a, struct fuse_read_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO); /* lost in a migration */
  uint32_t backing;
  uint32_t err = file_backing(f, &backing);
  if (err) return reply_error(r, err);
  if (!reply_or_erange(r, 0)) return;
  uint32_t room = r->cap - (uint32_t)sizeof(struct fuse_out_header);
  uint32_t want = in.size < room ? in.size : room;
  if (want > 1024 * 1024) want = 1024 * 1024;
  if (want == 0) return;
  /* The host reads at most to the end of the file and then stores the used length in the
   * header's len (offset 0): a short read at EOF, as pread gives. */
  r->read = 1;
  r->rd_backing = backing;
  r->rd_offset = in.offset;
  r->rd_len = want;
}

static void op_write(reply *r, args *a) {
  TAKE(a, struct fuse_write_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO); /* lost in a migration */
  /* The payload follows write_in, mostly past the prefix: its length is what the header counted. */
  if (in.size > a->len + a->more || in.size > MAX_WRITE) return reply_error(r, EINVAL);
  /* A read-only file is a read-only backing, which the host must never be asked to write. */
  if ((f->flags & O_ACCMODE) == 0) return reply_error(r, vfs_read_only() ? EROFS : EBADF);
  uint32_t backing;
  uint32_t err = file_backing(f, &backing);
  if (err) return reply_error(r, err);
  struct fuse_write_out *o = reply_or_erange(r, sizeof *o);
  if (!o) return;
  /* A short write is a failure (io-failed, ENOSPC), so success means all of it. */
  o->size = in.size;
  if (in.size == 0) return;
  r->write = 1;
  r->wr_source = (uint32_t)(sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in));
  r->wr_backing = backing;
  r->wr_offset = in.offset;
  r->wr_len = in.size;
}

static void op_release(reply *r, args *a) {
  TAKE(a, struct fuse_release_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  vfs_close(f->handle);
  memset(f, 0, sizeof *f);
  reply_alloc(r, 0);
}

static void op_flush(reply *r, args *a) {
  TAKE(a, struct fuse_release_in, in); /* fuse_flush_in has the same size, fh first, lock_owner last */
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  /* A process closed a file: POSIX drops every record lock it has on the inode. The guest
   * kernel keeps no record of locks the server holds, so this FLUSH is the only notice. A
   * guest that never asked for a record lock holds none: its every close() costs no host call. */
  if ((session.flags & FUSE_POSIX_LOCKS) && session.record_locks && f->handle) {
    vfs_lock all = {.start = 0, .end = VFS_LOCK_END_MAX, .kind = 2 /* F_UNLCK */};
    vfs_setlk(f->handle, in.lock_owner, &all, 0, 0);
  }
  reply_alloc(r, 0); /* nothing is buffered here */
}

static void op_fsync(reply *r, args *a) {
  TAKE(a, struct fuse_fsync_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO); /* lost in a migration */
  uint32_t err = vfs_fsync(f->handle, in.fsync_flags & FUSE_FSYNC_FDATASYNC);
  if (err) return reply_error(r, err);
  reply_alloc(r, 0);
}

/*
 * READDIR and READDIRPLUS. The host answers with fuse_dirent records (readdir-records), so a
 * READDIR reply is the host's bytes once checked: no host call or allocation per entry. A
 * READDIRPLUS entry also needs its lookup, and the host counts the fuse_entry_out each of its
 * records grows by: it returns entries that fit (near full) and reads no others, so the next
 * request continues the host's directory stream where it stopped.
 */
static void op_readdir(reply *r, args *a, int plus) {
  TAKE(a, struct fuse_read_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO); /* lost in a migration */
  /* Copy what we need: inode_take below may grow (move) the inode table. */
  fs_inode *dir = inode_get(f->nodeid);
  if (plus && !dir) return reply_error(r, ENOENT);
  if (dir && dir->pending) inode_resolve((uint32_t)f->nodeid, 0);
  vfs_handle dir_handle = dir ? dir->handle : 0;
  uint64_t dir_id = f->nodeid;
  uint32_t room = r->cap < sizeof(struct fuse_out_header) ? 0 : r->cap - (uint32_t)sizeof(struct fuse_out_header);
  uint32_t size = in.size < room ? in.size : room;
  if (size > 1024 * 1024) size = 1024 * 1024;
  uint32_t extra = plus ? (uint32_t)sizeof(struct fuse_entry_out) : 0;
  uint8_t *recs = NULL;
  size_t len = 0;
  uint32_t err = vfs_readdir_records(f->handle, in.offset, size, extra, &recs, &len);
  if (err) return reply_error(r, err);
  uint8_t *o = reply_alloc(r, size);
  if (!o) {
    free(recs);
    return reply_error(r, size ? ENOMEM : ERANGE);
  }
  uint32_t used = 0;
  size_t at = 0, rec;
  vfs_dirent d;
  while ((rec = vfs_record_next(recs, len, at, &d)) != 0 && rec + extra <= size - used) {
    uint8_t *to = o + used;
    if (plus) {
      struct fuse_entry_out eo;
      memset(&eo, 0, sizeof eo);
      int dots = (d.name_len == 1 && d.name[0] == '.') || (d.name_len == 2 && d.name[0] == '.' && d.name[1] == '.');
      vfs_entry e;
      if (!dots && lookup_name(dir_handle, dir_id, d.name, d.name_len, &e) == 0) {
        uint32_t id = inode_take(&e, dir_id, d.name, d.name_len);
        if (id) fill_entry(&eo, id, &e.attr);
      }
      if (!eo.nodeid) eo.attr.ino = d.ino, eo.attr.mode = (uint32_t)d.kind << 12;
      memcpy(to, &eo, sizeof eo);
      to += sizeof eo;
    }
    /* The host's record is the reply's fuse_dirent, checked by vfs_record_next. */
    memcpy(to, recs + at, rec);
    used += (uint32_t)(rec + extra);
    at += rec;
  }
  free(recs);
  if (at < len) {
    /* A record malformed or past the room asked for: the host broke its word. */
    vd_log(VD_LOG_ERROR, "fs: the host's readdir-records answer is malformed (a host bug)");
    return reply_error(r, EIO);
  }
  r->len = (uint32_t)sizeof(struct fuse_out_header) + used;
}

static void op_statfs(reply *r, uint64_t nodeid) {
  INODE(nodeid, in);
  vfs_fsstats s;
  uint32_t err = vfs_statfs(in->handle, &s);
  if (err) return reply_error(r, err);
  struct fuse_kstatfs *o = reply_or_erange(r, sizeof *o);
  if (!o) return;
  o->blocks = s.blocks;
  o->bfree = s.bfree;
  o->bavail = s.bavail;
  o->files = s.files;
  o->ffree = s.ffree;
  o->bsize = s.bsize;
  o->namelen = s.namelen;
  o->frsize = s.frsize;
}

static void op_access(reply *r, uint64_t nodeid) {
  /* virtiofs mounts with default_permissions: the guest kernel checks modes itself. */
  INODE(nodeid, in);
  (void)in;
  reply_alloc(r, 0);
}

static void op_fallocate(reply *r, args *a) {
  TAKE(a, struct fuse_fallocate_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO); /* lost in a migration */
  uint32_t err = vfs_fallocate(f->handle, in.mode, in.offset, in.length);
  if (err) return reply_error(r, err);
  reply_alloc(r, 0);
}

static void op_lseek(reply *r, args *a) {
  TAKE(a, struct fuse_lseek_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO); /* lost in a migration */
  uint64_t pos;
  uint32_t err = vfs_lseek(f->handle, (int64_t)in.offset, in.whence, &pos);
  if (err) return reply_error(r, err);
  struct fuse_lseek_out *o = reply_or_erange(r, sizeof *o);
  if (o) o->offset = pos;
}

/* The answer to GETXATTR/LISTXATTR of `n` bytes at p: the size alone (size 0), ERANGE when
 * the guest's size is too small, else the bytes. */
static void reply_xattr(reply *r, uint32_t size, const uint8_t *p, size_t n) {
  if (size == 0) {
    struct fuse_getxattr_out *o = reply_or_erange(r, sizeof *o);
    if (o) o->size = (uint32_t)n;
    return;
  }
  if (n > size) return reply_error(r, ERANGE);
  uint8_t *o = reply_or_erange(r, (uint32_t)n);
  if (o && n) memcpy(o, p, n);
}

/* ---- POSIX ACLs ----
 * The ACL names reach the host only in a session that negotiated FUSE_POSIX_ACL. The host
 * refuses them itself without --posix-acl; with it, a session without ACLs (a guest migrated
 * in from a source without --posix-acl, which kept its INIT) must not have them either:
 * EOPNOTSUPP and left out of lists, what virtiofsd 1.13 answers. As there, a name that is the
 * start of one (`system.posix_acl`, `system.posix_acl_acc`, `system.`) goes with them. */
static const char ACL_ACCESS[] = "system.posix_acl_access", ACL_DEFAULT[] = "system.posix_acl_default";

static int is_name(const uint8_t *name, size_t len, const char *what, size_t wlen) {
  return len == wlen && memcmp(name, what, len) == 0;
}

/* One of the two ACL names, or the start of one (not an empty name: that is malformed). */
static int acl_name(const uint8_t *name, size_t len) {
  return len > 0 && ((len <= sizeof ACL_ACCESS - 1 && memcmp(name, ACL_ACCESS, len) == 0) ||
                     (len <= sizeof ACL_DEFAULT - 1 && memcmp(name, ACL_DEFAULT, len) == 0));
}

static int acl_refused(const uint8_t *name, size_t len) {
  return acl_granted && !(session.flags & FUSE_POSIX_ACL) && acl_name(name, len);
}

/* Drops the ACL names (and starts of them) from a list of NUL-terminated names in place; its new length. */
static size_t list_without_acls(uint8_t *buf, size_t n) {
  size_t out = 0;
  for (size_t at = 0; at < n;) {
    const uint8_t *end = memchr(buf + at, 0, n - at);
    size_t l = end ? (size_t)(end - (buf + at)) : n - at;
    if (!acl_name(buf + at, l)) {
      memmove(buf + out, buf + at, l);
      out += l;
      if (end) buf[out++] = 0;
    }
    at += l + 1;
  }
  return out;
}

/* FUSE_SETXATTR_ACL_KILL_SGID: the guest kernel asks, for an access ACL set by someone who is
 * not in the file's group and lacks CAP_FSETID, that set-group-id go (the host kernel would
 * not clear it: the host sets the ACL with its own credentials). */
static uint32_t kill_sgid(vfs_handle h) {
  vfs_attr at;
  uint32_t err = vfs_getattr(h, &at);
  if (err || !(at.mode & 02000)) return err;
  return vfs_setattr(h, VFS_SET_MODE, at.mode & 05777, 0, 0, 0, 0, 0, 0, 0, &at);
}

static void op_getxattr(reply *r, uint64_t nodeid, args *a) {
  TAKE(a, struct fuse_getxattr_in, in);
  NAME(a, name, len);
  INODE(nodeid, node);
  if (acl_refused(name, len)) return reply_error(r, EOPNOTSUPP);
  uint8_t *buf = malloc(VFS_XATTR_MAX);
  if (!buf) return reply_error(r, ENOMEM);
  size_t n = 0;
  uint32_t err = vfs_getxattr(node->handle, name, len, buf, VFS_XATTR_MAX, &n);
  if (err) reply_error(r, err);
  else if (n > VFS_XATTR_MAX) reply_error(r, E2BIG); /* the host bounds values; never send heap bytes */
  else reply_xattr(r, in.size, buf, n);
  free(buf);
}

static void op_listxattr(reply *r, uint64_t nodeid, args *a) {
  TAKE(a, struct fuse_getxattr_in, in);
  INODE(nodeid, node);
  uint8_t *buf = malloc(VFS_XATTR_MAX);
  if (!buf) return reply_error(r, ENOMEM);
  size_t n = 0;
  uint32_t err = vfs_listxattr(node->handle, buf, VFS_XATTR_MAX, &n);
  if (err) reply_error(r, err);
  else if (n > VFS_XATTR_MAX) reply_error(r, E2BIG);
  else reply_xattr(r, in.size, buf, acl_granted && !(session.flags & FUSE_POSIX_ACL) ? list_without_acls(buf, n) : n);
  free(buf);
}

static void op_setxattr(reply *r, uint64_t nodeid, args *a) {
  struct fuse_setxattr_ext_in in = {0};
  if (session.flags & FUSE_SETXATTR_EXT) {
    TAKE(a, struct fuse_setxattr_ext_in, ext);
    in = ext;
  } else {
    TAKE(a, struct fuse_setxattr_in, old);
    in.size = old.size;
    in.flags = old.flags;
  }
  NAME(a, name, len);
  INODE(nodeid, node);
  if (acl_refused(name, len)) return reply_error(r, EOPNOTSUPP);
  if (in.size > VFS_XATTR_MAX) return reply_error(r, E2BIG);
  /* A value past the prefix never reaches us (FS_PREFIX_LEN). */
  if (in.size > a->len) return reply_error(r, in.size <= a->len + a->more ? E2BIG : EINVAL);
  uint32_t err = vfs_setxattr(node->handle, name, len, a->p, in.size, in.flags);
  if (err) return reply_error(r, err);
  /* After the ACL is set, as the kernel clears it for a local setxattr: an ACL refused leaves
   * set-group-id as it was. (chmod keeps the new ACL: the group bits read back are its mask.) */
  if ((in.setxattr_flags & FUSE_SETXATTR_ACL_KILL_SGID) && (session.flags & FUSE_POSIX_ACL) &&
      is_name(name, len, ACL_ACCESS, sizeof ACL_ACCESS - 1)) {
    err = kill_sgid(node->handle);
    if (err) return reply_error(r, err);
  }
  reply_alloc(r, 0);
}

static void op_removexattr(reply *r, uint64_t nodeid, args *a) {
  NAME(a, name, len);
  INODE(nodeid, node);
  if (acl_refused(name, len)) return reply_error(r, EOPNOTSUPP);
  uint32_t err = vfs_removexattr(node->handle, name, len);
  if (err) return reply_error(r, err);
  reply_alloc(r, 0);
}

/* COPY_FILE_RANGE: the host copies between the two open files (never through the plugin). */
static void op_copy_file_range(reply *r, args *a) {
  TAKE(a, struct fuse_copy_file_range_in, in);
  fs_file *src = file_get(in.fh_in), *dst = file_get(in.fh_out);
  if (!src || !dst) return reply_error(r, EBADF);
  if (!src->handle || !dst->handle) return reply_error(r, EIO);
  if (in.flags) return reply_error(r, EINVAL);
  uint64_t n = 0;
  uint32_t err = vfs_copy_file_range(src->handle, in.off_in, dst->handle, in.off_out, in.len, &n);
  if (err) return reply_error(r, err);
  struct fuse_write_out *o = reply_or_erange(r, sizeof *o);
  if (!o) return;
  o->size = n > 0xffffffffu ? 0xffffffffu : (uint32_t)n;
}

static void op_syncfs(reply *r, uint64_t nodeid) {
  INODE(nodeid, in);
  uint32_t err = vfs_syncfs(in->handle);
  if (err) return reply_error(r, err);
  reply_alloc(r, 0);
}

/* ---- Locks (FUSE_GETLK/SETLK/SETLKW): the host keeps them (OFD locks, flock) ---- */


static void lock_of(vfs_lock *out, const struct fuse_file_lock *in) {
  out->start = in->start;
  out->end = in->end;
  out->kind = in->type;
  out->pid = in->pid;
}

static void op_getlk(reply *r, args *a) {
  TAKE(a, struct fuse_lk_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO);
  vfs_lock lk, got;
  lock_of(&lk, &in.lk);
  uint32_t err = vfs_getlk(f->handle, in.owner, &lk, &got);
  if (err) return reply_error(r, err);
  struct fuse_lk_out *o = reply_or_erange(r, sizeof *o);
  if (!o) return;
  o->lk.start = got.start;
  o->lk.end = got.end;
  o->lk.type = got.kind;
  o->lk.pid = got.pid;
}

static void op_setlk(reply *r, args *a, int wait, uint32_t id) {
  TAKE(a, struct fuse_lk_in, in);
  fs_file *f = file_get(in.fh);
  if (!f) return reply_error(r, EBADF);
  if (!f->handle) return reply_error(r, EIO);
  vfs_lock lk;
  lock_of(&lk, &in.lk);
  int flock = (in.lk_flags & FUSE_LK_FLOCK) != 0;
  if (!flock) session.record_locks = 1;
  lock_wait *w = NULL;
  if (wait && lk.kind != 2 /* F_UNLCK never waits */) {
    for (uint32_t i = 0; i < MAX_LOCK_WAITS && !w; i++)
      if (!waits[i].token) w = &waits[i];
    if (!w) return reply_error(r, ENOLCK); /* too many waiters at once */
  }
  uint64_t token = w ? next_token++ : 0;
  uint32_t err = vfs_setlk(f->handle, in.owner, &lk, flock, token);
  if (err == EINPROGRESS && w) {
    *w = (lock_wait){.token = token, .id = id, .cap = r->cap, .unique = r->unique, .owner = in.owner,
                     .file = f->handle, .lk = lk, .flock = flock};
    r->held = 1;
    return;
  }
  if (err) return reply_error(r, err);
  reply_alloc(r, 0);
}

/* Answers the held SETLKW of `w` with err (0: granted) and frees its slot. */
static void wait_answer(lock_wait *w, uint32_t err) {
  reply r = {.cap = w->cap, .unique = w->unique};
  if (err) reply_error(&r, err);
  else reply_alloc(&r, 0);
  reply_finish(&r);
  vd_answer_begin(w->id);
  if (r.buf) vd_answer_bytes(r.buf, r.len);
  free(r.buf);
  w->token = 0;
}

/* The host's wait with this token resolved: ask for the verdict (and wait again if lost). */
static void lock_woken(uint64_t token) {
  for (uint32_t i = 0; i < MAX_LOCK_WAITS; i++) {
    lock_wait *w = &waits[i];
    if (w->token != token) continue;
    uint32_t err = vfs_setlk(w->file, w->owner, &w->lk, w->flock, 0);
    if (err == EAGAIN) { /* another owner got it first: wait again */
      w->token = next_token++;
      err = vfs_setlk(w->file, w->owner, &w->lk, w->flock, w->token);
      if (err == EINPROGRESS) return;
    }
    wait_answer(w, err);
    return;
  }
  /* A token of a wait already answered (interrupted, destroyed): nothing to do. */
}

/* FUSE_INTERRUPT: a waiting SETLKW gives up with EINTR; anything else completes anyway. */
static void op_interrupt(args *a) {
  if (a->len < sizeof(struct fuse_interrupt_in)) return;
  struct fuse_interrupt_in in;
  memcpy(&in, a->p, sizeof in);
  for (uint32_t i = 0; i < MAX_LOCK_WAITS; i++) {
    if (!waits[i].token || waits[i].unique != in.unique) continue;
    vfs_lock_cancel(waits[i].token);
    wait_answer(&waits[i], EINTR);
  }
}

/* DESTROY: every waiting SETLKW ends with EINTR. */
static void waits_end(void) {
  for (uint32_t i = 0; i < MAX_LOCK_WAITS; i++)
    if (waits[i].token) {
      vfs_lock_cancel(waits[i].token);
      wait_answer(&waits[i], EINTR);
    }
}

static void op_forget(args *a, uint64_t nodeid) {
  const struct fuse_forget_in *p = take(a, sizeof(struct fuse_forget_in));
  if (!p) return;
  struct fuse_forget_in in;
  memcpy(&in, p, sizeof in);
  forget(nodeid, in.nlookup);
}

static void op_batch_forget(args *a) {
  const void *p = take(a, sizeof(struct fuse_batch_forget_in));
  if (!p) return;
  struct fuse_batch_forget_in in;
  memcpy(&in, p, sizeof in);
  for (uint32_t i = 0; i < in.count; i++) {
    const void *q = take(a, sizeof(struct fuse_forget_one));
    if (!q) return;
    struct fuse_forget_one one;
    memcpy(&one, q, sizeof one);
    forget(one.nodeid, one.nlookup);
  }
}

/* One request -> its answer (possibly empty: FORGET, BATCH_FORGET, INTERRUPT). */
static void handle(const vd_request *req) {
  reply r = {.cap = req->writable_len};
  struct fuse_in_header h;
  if (req->prefix_len < sizeof h) {
    /* Too short for a header: answer EINVAL with whatever `unique` we can see. */
    if (req->prefix_len >= 16) memcpy(&r.unique, req->prefix + 8, 8);
    reply_error(&r, EINVAL);
    goto finish;
  }
  memcpy(&h, req->prefix, sizeof h);
  r.unique = h.unique;
  current = &h;
  if (h.len < sizeof h || h.len > req->readable_len) {
    reply_error(&r, EINVAL);
    goto finish;
  }
  uint32_t seen = h.len < req->prefix_len ? h.len : req->prefix_len;
  args a = {req->prefix + sizeof h, seen - sizeof h, h.len - seen};
  if (!session.initialized && h.opcode != FUSE_INIT) {
    if (h.opcode != FUSE_FORGET && h.opcode != FUSE_BATCH_FORGET && h.opcode != FUSE_INTERRUPT) reply_error(&r, EIO);
    goto finish;
  }
  switch (h.opcode) {
    case FUSE_INIT: op_init(&r, &a); break;
    case FUSE_DESTROY: op_destroy(&r); break;
    case FUSE_LOOKUP: op_lookup(&r, h.nodeid, &a); break;
    case FUSE_FORGET: op_forget(&a, h.nodeid); break;
    case FUSE_BATCH_FORGET: op_batch_forget(&a); break;
    case FUSE_INTERRUPT: op_interrupt(&a); break; /* only a waiting SETLKW can be interrupted */
    case FUSE_GETATTR: op_getattr(&r, h.nodeid); break;
    case FUSE_SETATTR: op_setattr(&r, h.nodeid, &a); break;
    case FUSE_OPEN: op_open(&r, h.nodeid, &a, 0); break;
    case FUSE_OPENDIR: op_open(&r, h.nodeid, &a, 1); break;
    case FUSE_READ: op_read(&r, &a); break;
    case FUSE_WRITE: op_write(&r, &a); break;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR: op_release(&r, &a); break;
    case FUSE_FLUSH: op_flush(&r, &a); break;
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR: op_fsync(&r, &a); break;
    case FUSE_READDIR: op_readdir(&r, &a, 0); break;
    case FUSE_READDIRPLUS: op_readdir(&r, &a, 1); break;
    case FUSE_CREATE: op_create(&r, h.nodeid, &a); break;
    case FUSE_MKNOD: op_mknod(&r, h.nodeid, &a); break;
    case FUSE_MKDIR: op_mkdir(&r, h.nodeid, &a); break;
    case FUSE_UNLINK: op_unlink(&r, h.nodeid, &a, 0); break;
    case FUSE_RMDIR: op_unlink(&r, h.nodeid, &a, 1); break;
    case FUSE_RENAME: op_rename(&r, h.nodeid, &a, 0); break;
    case FUSE_RENAME2: op_rename(&r, h.nodeid, &a, 1); break;
    case FUSE_LINK: op_link(&r, h.nodeid, &a); break;
    case FUSE_SYMLINK: op_symlink(&r, h.nodeid, &a); break;
    case FUSE_READLINK: op_readlink(&r, h.nodeid); break;
    case FUSE_STATFS: op_statfs(&r, h.nodeid); break;
    case FUSE_ACCESS: op_access(&r, h.nodeid); break;
    case FUSE_FALLOCATE: op_fallocate(&r, &a); break;
    case FUSE_LSEEK: op_lseek(&r, &a); break;
    case FUSE_GETXATTR: op_getxattr(&r, h.nodeid, &a); break;
    case FUSE_LISTXATTR: op_listxattr(&r, h.nodeid, &a); break;
    case FUSE_SETXATTR: op_setxattr(&r, h.nodeid, &a); break;
    case FUSE_REMOVEXATTR: op_removexattr(&r, h.nodeid, &a); break;
    case FUSE_GETLK: op_getlk(&r, &a); break;
    case FUSE_COPY_FILE_RANGE: op_copy_file_range(&r, &a); break;
    case FUSE_SYNCFS: op_syncfs(&r, h.nodeid); break;
    case FUSE_TMPFILE: op_tmpfile(&r, h.nodeid, &a); break;
    case FUSE_SETLK: op_setlk(&r, &a, 0, req->id); break;
    case FUSE_SETLKW: op_setlk(&r, &a, 1, req->id); break;
    default: reply_error(&r, ENOSYS); break;
  }
finish:
  current = NULL;
  if (r.held) {
    vd_hold(req->id);
    return;
  }
  reply_finish(&r);
  vd_answer_begin(req->id);
  if (r.buf) {
    if (r.write) vd_answer_transfer(r.wr_source, r.wr_backing, r.wr_offset, r.wr_len);
    vd_answer_bytes(r.buf, r.len);
    if (r.read) {
      vd_answer_backing_read(r.rd_backing, r.rd_offset, r.rd_len);
      vd_answer_length_at(0);
    }
    /* If the I/O fails, the error reply needs the request's unique. */
    if (r.read || r.write) vd_set_cookie(req->id, r.unique);
  }
  free(r.buf);
}

/* The file I/O of an answer failed: the guest gets the errno (EIO, ENOSPC, ...). */
static void io_failed(const vd_event *e) {
  const vd_request *req = &e->u.io_failed.request;
  reply r = {.cap = req->writable_len, .unique = e->u.io_failed.cookie};
  reply_error(&r, e->u.io_failed.err ? e->u.io_failed.err : EIO);
  reply_finish(&r);
  vd_answer_begin(e->u.io_failed.id);
  if (r.buf) vd_answer_bytes(r.buf, r.len);
  free(r.buf);
}

/* ---- Device callbacks ---- */

/* The most request queues an operator may ask for: a queue costs the host three fds (kick, call,
 * err) reserved from the process budget whether or not the front-end uses it. */
#define MAX_REQUEST_QUEUES 64

/* request-queues=N: how many request queues the device has and its config space says. 0 until read. */
static uint32_t request_queues;

/* A bad option fails the load with the reason in the log: the operator asked for a shape the
 * device cannot have. */
static uint32_t configured_request_queues(void) {
  if (request_queues) return request_queues;
  request_queues = 1;
  char *v = vd_option("request-queues");
  if (!v) return request_queues;
  uint32_t n = 0;
  const char *c = v;
  while (*c >= '0' && *c <= '9' && n <= MAX_REQUEST_QUEUES) n = n * 10 + (uint32_t)(*c++ - '0');
  if (c == v || *c || n < 1 || n > MAX_REQUEST_QUEUES) {
    vd_log(VD_LOG_ERROR, "option request-queues: not a number of request queues from 1 to 64");
    __builtin_trap();
  }
  free(v);
  request_queues = n;
  return n;
}

const char *vd_name(void) { return "fs"; }
const char *vd_version(void) { return "0.2.0"; }

void vd_get_info(vd_info *out) {
  out->device_id = 26;
  /* hiprio + the request queues; GET_QUEUE_NUM (protocol feature MQ) reports the same. */
  out->num_queues = (uint16_t)(1 + configured_request_queues());
  out->max_queue_size = 1024;
  out->features = 0;
  out->config_size = 40; /* tag[36], num_request_queues */
  out->prefix_len = FS_PREFIX_LEN;
  /* One inode and file table for every queue: one instance sees them all. */
  out->queues_independent = 0;
}

void vd_read_config(uint32_t offset, uint8_t *out, uint32_t size) {
  uint8_t cfg[40] = {0};
  vfs_tag((char *)cfg, 36);
  uint32_t n = configured_request_queues(); /* num_request_queues, le32 */
  cfg[36] = (uint8_t)n;
  cfg[37] = (uint8_t)(n >> 8);
  for (uint32_t i = 0; i < size && offset + i < sizeof cfg; i++) out[i] = cfg[offset + i];
}

void vd_write_config(uint32_t offset, const uint8_t *data, size_t len) { (void)offset, (void)data, (void)len; }

const char *vd_activate(uint64_t acked) {
  if (acked) return "virtio-fs offers no device features";
  return NULL;
}

void vd_reset(void) { fs_tables_clear(); }

const char *vd_handle(const vd_event *events, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (events[i].kind == VD_EVENT_REQUEST) {
      handle(&events[i].u.request);
    } else if (events[i].kind == VD_EVENT_IO_FAILED) {
      if (!events[i].u.io_failed.known) return "fs: io-failed for a request id this device never saw";
      io_failed(&events[i]);
    }
    else if (events[i].kind == VD_EVENT_TIMER) {
      lock_woken(events[i].u.timer);
    }
    /* No frames were asked for. */
  }
  return NULL;
}
