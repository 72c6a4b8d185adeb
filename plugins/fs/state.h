/* The fs plugin's tables, shared between the FUSE server (fs.c) and its state (state.c). */
#ifndef PLUGIN_FS_STATE_H
#define PLUGIN_FS_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "vhost_fs.h"

/* 56 bytes: a million of them is what a guest may hold, so the layout is packed by hand. */
typedef struct fs_inode {
  vfs_handle handle; /* host node handle; 0 = none (pending, or lost in a migration) */
  uint64_t dev, ino; /* host identity: the same inode is always the same nodeid */
  uint64_t nlookup;  /* the kernel's lookup count; 0 frees the slot */
  uint8_t *name;     /* the name it was last looked up by */
  uint32_t parent;   /* node id of the directory it was last looked up in */
  uint32_t mode;
  uint32_t hnext;    /* hash chain, or the free list when unused */
  uint32_t nnext;    /* chain in the (parent, name) index */
  uint16_t name_len;
  uint8_t used;
  /* Loaded by a migration and not yet looked up again on this host: no handle, no dev/ino,
   * not in the identity hash; found by (parent, name) and resolved on first use (fs.c). */
  uint8_t pending;
} fs_inode;

typedef struct fs_file {
  uint8_t used;
  vfs_handle handle; /* host open-file handle */
  uint32_t flags;    /* open(2) flags it was opened with */
  uint64_t nodeid;
  uint32_t backing;  /* its backing index + 1 (filesystem.backing), 0 until first asked */
} fs_file;

typedef struct fs_session {
  uint8_t initialized;
  /* The guest asked for a record lock this session: a FLUSH then drops the closing process's
   * record locks on the host (a guest that never asked holds none, and its closes cost nothing). */
  uint8_t record_locks;
  uint32_t minor, flags, max_readahead;
} fs_session;

#define MAX_INODES (1u << 20)
#define INODE_PAGE 4096u
extern fs_inode *inode_pages[MAX_INODES / INODE_PAGE];
/* Node id i's slot (i below n_inodes). */
#define INODE_AT(i) (inode_pages[(i) / INODE_PAGE][(i) % INODE_PAGE])
extern uint32_t n_inodes;
extern fs_file *files;
extern uint32_t n_files;
extern fs_session session;

void fs_tables_clear(void);

/* The loader's side of the tables (fs.c), used by state.c as the state streams in. */
void fs_load_begin(uint32_t inode_count);
const char *fs_load_inode(uint32_t id, uint32_t parent, const uint8_t *name, size_t len, uint64_t nlookup, uint32_t mode);
const char *fs_load_finish(const uint8_t *files, uint32_t file_count, uint32_t minor, uint32_t flags, uint32_t max_readahead);

#endif
