/* The fs plugin's tables, shared between the FUSE server (fs.c) and its state (state.c). */
#ifndef PLUGIN_FS_STATE_H
#define PLUGIN_FS_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "vhost_fs.h"

typedef struct fs_inode {
  uint8_t used;
  vfs_handle handle; /* host node handle */
  uint64_t dev, ino; /* host identity: the same inode is always the same nodeid */
  uint32_t mode;
  uint64_t nlookup; /* the kernel's lookup count; 0 frees the slot */
  uint32_t hnext;   /* hash chain, or the free list when unused */
  uint64_t parent;  /* nodeid of the directory it was last looked up in (0 = root) */
  uint8_t *name;    /* the name it was last looked up by */
  size_t name_len;
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
  uint32_t minor, flags, max_readahead;
} fs_session;

extern fs_inode *inodes;
extern uint32_t n_inodes;
extern fs_file *files;
extern uint32_t n_files;
extern fs_session session;

void fs_tables_clear(void);

#endif
