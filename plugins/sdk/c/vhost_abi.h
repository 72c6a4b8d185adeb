/*
 * vhost_abi.h: where the canonical ABI puts every value of wit/device.wit in linear memory
 * (wasm32), as the C SDK reads and writes it: record sizes, alignments and field offsets,
 * enum case numbers, and the layout of each function's return area.
 *
 * Every number here follows from wit/device.wit by the rules of the Component Model's
 * CanonicalABI.md; test/sdk-abi.test.ts computes them from the WIT and fails naming the
 * constant that drifted. Change the WIT, then change the number the test names.
 *
 * Names: VD_ABI_SIZEOF_<RECORD>, VD_ABI_ALIGNOF_<RECORD>, VD_ABI_<RECORD>_<FIELD> (offset),
 * VD_ABI_<RECORD>_<FIELD>_SOME (an option field's value, from the field's start);
 * VD_ABI_SIZEOF_/ALIGNOF_<VARIANT>, VD_ABI_<VARIANT>_PAYLOAD (where every case's payload
 * starts; the case number is a u8 at 0), VD_ABI_<VARIANT>_<CASE> (case number),
 * VD_ABI_<VARIANT>_<CASE>_<i> (element i of a tuple payload, from the payload's start);
 * VD_ABI_<ENUM>_<CASE> (case number); VD_ABI_SIZEOF_<IFACE>_<FUNC>_RET (its return area) and
 * VD_ABI_<IFACE>_<FUNC>_RET_OK / _ERR (where the result's payload starts), _OK_<i> (tuple
 * element i of it). A list or string is lowered as (pointer u32, length u32).
 */
#ifndef VHOST_ABI_H
#define VHOST_ABI_H

/* list<T> and string, lowered */
#define VD_ABI_SIZEOF_LIST 8
#define VD_ABI_LIST_LEN 4

/* log.level */
#define VD_ABI_LEVEL_ERROR 0
#define VD_ABI_LEVEL_WARN 1
#define VD_ABI_LEVEL_INFO 2
#define VD_ABI_LEVEL_DEBUG 3
#define VD_ABI_LEVEL_TRACE 4

/* entropy.fill */
#define VD_ABI_SIZEOF_ENTROPY_FILL_RET 8

/* options.get: option<string> */
#define VD_ABI_SIZEOF_OPTIONS_GET_RET 12
#define VD_ABI_OPTIONS_GET_RET_SOME 4

/* filesystem.attr */
#define VD_ABI_SIZEOF_ATTR 96
#define VD_ABI_ALIGNOF_ATTR 8
#define VD_ABI_ATTR_DEV 0
#define VD_ABI_ATTR_INO 8
#define VD_ABI_ATTR_SIZE 16
#define VD_ABI_ATTR_BLOCKS 24
#define VD_ABI_ATTR_ATIME 32
#define VD_ABI_ATTR_MTIME 40
#define VD_ABI_ATTR_CTIME 48
#define VD_ABI_ATTR_ATIME_NSEC 56
#define VD_ABI_ATTR_MTIME_NSEC 60
#define VD_ABI_ATTR_CTIME_NSEC 64
#define VD_ABI_ATTR_MODE 68
#define VD_ABI_ATTR_NLINK 72
#define VD_ABI_ATTR_UID 76
#define VD_ABI_ATTR_GID 80
#define VD_ABI_ATTR_RDEV 84
#define VD_ABI_ATTR_BLKSIZE 88

/* filesystem.entry */
#define VD_ABI_SIZEOF_ENTRY 104
#define VD_ABI_ALIGNOF_ENTRY 8
#define VD_ABI_ENTRY_NODE 0
#define VD_ABI_ENTRY_ATTR 8

/* filesystem.dir-entry */
#define VD_ABI_SIZEOF_DIR_ENTRY 32
#define VD_ABI_ALIGNOF_DIR_ENTRY 8
#define VD_ABI_DIR_ENTRY_INO 0
#define VD_ABI_DIR_ENTRY_NEXT 8
#define VD_ABI_DIR_ENTRY_KIND 16
#define VD_ABI_DIR_ENTRY_NAME 20

/* filesystem.fs-stats */
#define VD_ABI_SIZEOF_FS_STATS 56
#define VD_ABI_ALIGNOF_FS_STATS 8
#define VD_ABI_FS_STATS_BLOCKS 0
#define VD_ABI_FS_STATS_BFREE 8
#define VD_ABI_FS_STATS_BAVAIL 16
#define VD_ABI_FS_STATS_FILES 24
#define VD_ABI_FS_STATS_FFREE 32
#define VD_ABI_FS_STATS_BSIZE 40
#define VD_ABI_FS_STATS_NAMELEN 44
#define VD_ABI_FS_STATS_FRSIZE 48

/* filesystem.file-lock */
#define VD_ABI_SIZEOF_FILE_LOCK 24
#define VD_ABI_ALIGNOF_FILE_LOCK 8
#define VD_ABI_FILE_LOCK_START 0
#define VD_ABI_FILE_LOCK_END 8
#define VD_ABI_FILE_LOCK_KIND 16
#define VD_ABI_FILE_LOCK_PID 20

/* filesystem.migration-error-policy */
#define VD_ABI_MIGRATION_ERROR_POLICY_ABORT 0
#define VD_ABI_MIGRATION_ERROR_POLICY_GUEST_ERROR 1

/* filesystem.cache-policy */
#define VD_ABI_CACHE_POLICY_NEVER 0
#define VD_ABI_CACHE_POLICY_METADATA 1
#define VD_ABI_CACHE_POLICY_AUTO 2
#define VD_ABI_CACHE_POLICY_ALWAYS 3

/* filesystem.tag */
#define VD_ABI_SIZEOF_FILESYSTEM_TAG_RET 8

/* filesystem.root */
#define VD_ABI_SIZEOF_FILESYSTEM_ROOT_RET 112
#define VD_ABI_FILESYSTEM_ROOT_RET_OK 8
#define VD_ABI_FILESYSTEM_ROOT_RET_ERR 8

/* filesystem.lookup */
#define VD_ABI_SIZEOF_FILESYSTEM_LOOKUP_RET 112
#define VD_ABI_FILESYSTEM_LOOKUP_RET_OK 8
#define VD_ABI_FILESYSTEM_LOOKUP_RET_ERR 8

/* filesystem.lookup-known */
#define VD_ABI_SIZEOF_FILESYSTEM_LOOKUP_KNOWN_RET 112
#define VD_ABI_FILESYSTEM_LOOKUP_KNOWN_RET_OK 8
#define VD_ABI_FILESYSTEM_LOOKUP_KNOWN_RET_ERR 8

/* filesystem.getattr */
#define VD_ABI_SIZEOF_FILESYSTEM_GETATTR_RET 104
#define VD_ABI_FILESYSTEM_GETATTR_RET_OK 8
#define VD_ABI_FILESYSTEM_GETATTR_RET_ERR 8

/* filesystem.setattr */
#define VD_ABI_SIZEOF_FILESYSTEM_SETATTR_RET 104
#define VD_ABI_FILESYSTEM_SETATTR_RET_OK 8
#define VD_ABI_FILESYSTEM_SETATTR_RET_ERR 8

/* filesystem.open */
#define VD_ABI_SIZEOF_FILESYSTEM_OPEN_RET 16
#define VD_ABI_FILESYSTEM_OPEN_RET_OK 8
#define VD_ABI_FILESYSTEM_OPEN_RET_ERR 8

/* filesystem.create */
#define VD_ABI_SIZEOF_FILESYSTEM_CREATE_RET 120
#define VD_ABI_FILESYSTEM_CREATE_RET_OK 8
#define VD_ABI_FILESYSTEM_CREATE_RET_OK_0 8
#define VD_ABI_FILESYSTEM_CREATE_RET_OK_1 112
#define VD_ABI_FILESYSTEM_CREATE_RET_ERR 8

/* filesystem.mknod */
#define VD_ABI_SIZEOF_FILESYSTEM_MKNOD_RET 112
#define VD_ABI_FILESYSTEM_MKNOD_RET_OK 8
#define VD_ABI_FILESYSTEM_MKNOD_RET_ERR 8

/* filesystem.mkdir */
#define VD_ABI_SIZEOF_FILESYSTEM_MKDIR_RET 112
#define VD_ABI_FILESYSTEM_MKDIR_RET_OK 8
#define VD_ABI_FILESYSTEM_MKDIR_RET_ERR 8

/* filesystem.create-with-umask */
#define VD_ABI_SIZEOF_FILESYSTEM_CREATE_WITH_UMASK_RET 120
#define VD_ABI_FILESYSTEM_CREATE_WITH_UMASK_RET_OK 8
#define VD_ABI_FILESYSTEM_CREATE_WITH_UMASK_RET_OK_0 8
#define VD_ABI_FILESYSTEM_CREATE_WITH_UMASK_RET_OK_1 112
#define VD_ABI_FILESYSTEM_CREATE_WITH_UMASK_RET_ERR 8

/* filesystem.tmpfile (0.2.2) */
#define VD_ABI_SIZEOF_FILESYSTEM_TMPFILE_RET 120
#define VD_ABI_FILESYSTEM_TMPFILE_RET_OK 8
#define VD_ABI_FILESYSTEM_TMPFILE_RET_OK_0 8
#define VD_ABI_FILESYSTEM_TMPFILE_RET_OK_1 112
#define VD_ABI_FILESYSTEM_TMPFILE_RET_ERR 8

/* filesystem.mknod-with-umask */
#define VD_ABI_SIZEOF_FILESYSTEM_MKNOD_WITH_UMASK_RET 112
#define VD_ABI_FILESYSTEM_MKNOD_WITH_UMASK_RET_OK 8
#define VD_ABI_FILESYSTEM_MKNOD_WITH_UMASK_RET_ERR 8

/* filesystem.mkdir-with-umask */
#define VD_ABI_SIZEOF_FILESYSTEM_MKDIR_WITH_UMASK_RET 112
#define VD_ABI_FILESYSTEM_MKDIR_WITH_UMASK_RET_OK 8
#define VD_ABI_FILESYSTEM_MKDIR_WITH_UMASK_RET_ERR 8

/* filesystem.symlink */
#define VD_ABI_SIZEOF_FILESYSTEM_SYMLINK_RET 112
#define VD_ABI_FILESYSTEM_SYMLINK_RET_OK 8
#define VD_ABI_FILESYSTEM_SYMLINK_RET_ERR 8

/* filesystem.link */
#define VD_ABI_SIZEOF_FILESYSTEM_LINK_RET 112
#define VD_ABI_FILESYSTEM_LINK_RET_OK 8
#define VD_ABI_FILESYSTEM_LINK_RET_ERR 8

/* filesystem.unlink */
#define VD_ABI_SIZEOF_FILESYSTEM_UNLINK_RET 8
#define VD_ABI_FILESYSTEM_UNLINK_RET_ERR 4

/* filesystem.rmdir */
#define VD_ABI_SIZEOF_FILESYSTEM_RMDIR_RET 8
#define VD_ABI_FILESYSTEM_RMDIR_RET_ERR 4

/* filesystem.rename */
#define VD_ABI_SIZEOF_FILESYSTEM_RENAME_RET 8
#define VD_ABI_FILESYSTEM_RENAME_RET_ERR 4

/* filesystem.readlink */
#define VD_ABI_SIZEOF_FILESYSTEM_READLINK_RET 12
#define VD_ABI_FILESYSTEM_READLINK_RET_OK 4
#define VD_ABI_FILESYSTEM_READLINK_RET_ERR 4

/* filesystem.backing */
#define VD_ABI_SIZEOF_FILESYSTEM_BACKING_RET 8
#define VD_ABI_FILESYSTEM_BACKING_RET_OK 4
#define VD_ABI_FILESYSTEM_BACKING_RET_ERR 4

/* filesystem.readdir */
#define VD_ABI_SIZEOF_FILESYSTEM_READDIR_RET 12
#define VD_ABI_FILESYSTEM_READDIR_RET_OK 4
#define VD_ABI_FILESYSTEM_READDIR_RET_ERR 4

/* filesystem.readdir-records */
#define VD_ABI_SIZEOF_FILESYSTEM_READDIR_RECORDS_RET 12
#define VD_ABI_FILESYSTEM_READDIR_RECORDS_RET_OK 4
#define VD_ABI_FILESYSTEM_READDIR_RECORDS_RET_ERR 4

/* filesystem.fsync */
#define VD_ABI_SIZEOF_FILESYSTEM_FSYNC_RET 8
#define VD_ABI_FILESYSTEM_FSYNC_RET_ERR 4

/* filesystem.fallocate */
#define VD_ABI_SIZEOF_FILESYSTEM_FALLOCATE_RET 8
#define VD_ABI_FILESYSTEM_FALLOCATE_RET_ERR 4

/* filesystem.lseek */
#define VD_ABI_SIZEOF_FILESYSTEM_LSEEK_RET 16
#define VD_ABI_FILESYSTEM_LSEEK_RET_OK 8
#define VD_ABI_FILESYSTEM_LSEEK_RET_ERR 8

/* filesystem.statfs */
#define VD_ABI_SIZEOF_FILESYSTEM_STATFS_RET 64
#define VD_ABI_FILESYSTEM_STATFS_RET_OK 8
#define VD_ABI_FILESYSTEM_STATFS_RET_ERR 8

/* filesystem.getxattr */
#define VD_ABI_SIZEOF_FILESYSTEM_GETXATTR_RET 12
#define VD_ABI_FILESYSTEM_GETXATTR_RET_OK 4
#define VD_ABI_FILESYSTEM_GETXATTR_RET_ERR 4

/* filesystem.listxattr */
#define VD_ABI_SIZEOF_FILESYSTEM_LISTXATTR_RET 12
#define VD_ABI_FILESYSTEM_LISTXATTR_RET_OK 4
#define VD_ABI_FILESYSTEM_LISTXATTR_RET_ERR 4

/* filesystem.setxattr */
#define VD_ABI_SIZEOF_FILESYSTEM_SETXATTR_RET 8
#define VD_ABI_FILESYSTEM_SETXATTR_RET_ERR 4

/* filesystem.removexattr */
#define VD_ABI_SIZEOF_FILESYSTEM_REMOVEXATTR_RET 8
#define VD_ABI_FILESYSTEM_REMOVEXATTR_RET_ERR 4

/* filesystem.copy-file-range */
#define VD_ABI_SIZEOF_FILESYSTEM_COPY_FILE_RANGE_RET 16
#define VD_ABI_FILESYSTEM_COPY_FILE_RANGE_RET_OK 8
#define VD_ABI_FILESYSTEM_COPY_FILE_RANGE_RET_ERR 8

/* filesystem.syncfs */
#define VD_ABI_SIZEOF_FILESYSTEM_SYNCFS_RET 8
#define VD_ABI_FILESYSTEM_SYNCFS_RET_ERR 4

/* filesystem.getlk */
#define VD_ABI_SIZEOF_FILESYSTEM_GETLK_RET 32
#define VD_ABI_FILESYSTEM_GETLK_RET_OK 8
#define VD_ABI_FILESYSTEM_GETLK_RET_ERR 8

/* filesystem.setlk */
#define VD_ABI_SIZEOF_FILESYSTEM_SETLK_RET 8
#define VD_ABI_FILESYSTEM_SETLK_RET_ERR 4

/* types.request */
#define VD_ABI_SIZEOF_REQUEST 24
#define VD_ABI_ALIGNOF_REQUEST 4
#define VD_ABI_REQUEST_ID 0
#define VD_ABI_REQUEST_QUEUE 4
#define VD_ABI_REQUEST_PREFIX 8
#define VD_ABI_REQUEST_READABLE_LEN 16
#define VD_ABI_REQUEST_WRITABLE_LEN 20

/* types.extent */
#define VD_ABI_SIZEOF_EXTENT 24
#define VD_ABI_ALIGNOF_EXTENT 8
#define VD_ABI_EXTENT_BACKING 0
#define VD_ABI_EXTENT_OFFSET 8
#define VD_ABI_EXTENT_LEN 16

/* types.frame */
#define VD_ABI_SIZEOF_FRAME 24
#define VD_ABI_ALIGNOF_FRAME 4
#define VD_ABI_FRAME_ID 0
#define VD_ABI_FRAME_NETWORK 4
#define VD_ABI_FRAME_FROM_PORT 8
#define VD_ABI_FRAME_LEN 12
#define VD_ABI_FRAME_PREFIX 16

/* types.frame-slice */
#define VD_ABI_SIZEOF_FRAME_SLICE 12
#define VD_ABI_ALIGNOF_FRAME_SLICE 4
#define VD_ABI_FRAME_SLICE_FRAME 0
#define VD_ABI_FRAME_SLICE_OFFSET 4
#define VD_ABI_FRAME_SLICE_LEN 8

/* types.send (to: option<port>, tag u8 at the field, value at _SOME from it) */
#define VD_ABI_SIZEOF_SEND 24
#define VD_ABI_ALIGNOF_SEND 4
#define VD_ABI_SEND_NETWORK 0
#define VD_ABI_SEND_REQUEST 4
#define VD_ABI_SEND_SOURCE 8
#define VD_ABI_SEND_LEN 12
#define VD_ABI_SEND_TO 16
#define VD_ABI_SEND_TO_SOME 4

/* types.piece: bytes(list<u8>), backing-read(extent), zeroes(u32), skip(u32), frame-read(frame-slice) */
#define VD_ABI_SIZEOF_PIECE 32
#define VD_ABI_ALIGNOF_PIECE 8
#define VD_ABI_PIECE_PAYLOAD 8
#define VD_ABI_PIECE_BYTES 0
#define VD_ABI_PIECE_BACKING_READ 1
#define VD_ABI_PIECE_ZEROES 2
#define VD_ABI_PIECE_SKIP 3
#define VD_ABI_PIECE_FRAME_READ 4

/* types.transfer */
#define VD_ABI_SIZEOF_TRANSFER 32
#define VD_ABI_ALIGNOF_TRANSFER 8
#define VD_ABI_TRANSFER_SOURCE 0
#define VD_ABI_TRANSFER_TO 8

/* types.backing-op-kind */
#define VD_ABI_BACKING_OP_KIND_FLUSH 0
#define VD_ABI_BACKING_OP_KIND_DISCARD 1
#define VD_ABI_BACKING_OP_KIND_WRITE_ZEROES 2

/* types.backing-op */
#define VD_ABI_SIZEOF_BACKING_OP 24
#define VD_ABI_ALIGNOF_BACKING_OP 8
#define VD_ABI_BACKING_OP_KIND 0
#define VD_ABI_BACKING_OP_BACKING 4
#define VD_ABI_BACKING_OP_OFFSET 8
#define VD_ABI_BACKING_OP_LEN 16

/* types.answer (length-at: option<u32>, tag u8 at the field, value at _SOME from it) */
#define VD_ABI_SIZEOF_ANSWER 40
#define VD_ABI_ALIGNOF_ANSWER 4
#define VD_ABI_ANSWER_ID 0
#define VD_ABI_ANSWER_TRANSFERS 4
#define VD_ABI_ANSWER_OPS 12
#define VD_ABI_ANSWER_REPLY 20
#define VD_ABI_ANSWER_LENGTH_AT 28
#define VD_ABI_ANSWER_LENGTH_AT_SOME 4
#define VD_ABI_ANSWER_BARRIER 36

/* types.io-failure */
#define VD_ABI_SIZEOF_IO_FAILURE 8
#define VD_ABI_ALIGNOF_IO_FAILURE 4
#define VD_ABI_IO_FAILURE_ID 0
#define VD_ABI_IO_FAILURE_ERRNO 4

/* types.event: request(request), io-failed(io-failure), frame(frame), timer(u64) */
#define VD_ABI_SIZEOF_EVENT 32
#define VD_ABI_ALIGNOF_EVENT 8
#define VD_ABI_EVENT_PAYLOAD 8
#define VD_ABI_EVENT_REQUEST 0
#define VD_ABI_EVENT_IO_FAILED 1
#define VD_ABI_EVENT_FRAME 2
#define VD_ABI_EVENT_TIMER 3

/* types.action: answer(answer), hold(request-id), send(send), wake-after(tuple<u64, u64>) */
#define VD_ABI_SIZEOF_ACTION 48
#define VD_ABI_ALIGNOF_ACTION 8
#define VD_ABI_ACTION_PAYLOAD 8
#define VD_ABI_ACTION_ANSWER 0
#define VD_ABI_ACTION_HOLD 1
#define VD_ABI_ACTION_SEND 2
#define VD_ABI_ACTION_WAKE_AFTER 3
#define VD_ABI_ACTION_WAKE_AFTER_0 0
#define VD_ABI_ACTION_WAKE_AFTER_1 8

/* device.plugin-identity */
#define VD_ABI_SIZEOF_PLUGIN_IDENTITY 16
#define VD_ABI_ALIGNOF_PLUGIN_IDENTITY 4
#define VD_ABI_PLUGIN_IDENTITY_NAME 0
#define VD_ABI_PLUGIN_IDENTITY_VERSION 8

/* device.device-info */
#define VD_ABI_SIZEOF_DEVICE_INFO 32
#define VD_ABI_ALIGNOF_DEVICE_INFO 8
#define VD_ABI_DEVICE_INFO_DEVICE_ID 0
#define VD_ABI_DEVICE_INFO_NUM_QUEUES 4
#define VD_ABI_DEVICE_INFO_MAX_QUEUE_SIZE 6
#define VD_ABI_DEVICE_INFO_FEATURES 8
#define VD_ABI_DEVICE_INFO_CONFIG_SIZE 16
#define VD_ABI_DEVICE_INFO_PREFIX_LEN 20
#define VD_ABI_DEVICE_INFO_QUEUES_INDEPENDENT 24

/* device.state-chunk */
#define VD_ABI_SIZEOF_STATE_CHUNK 16
#define VD_ABI_ALIGNOF_STATE_CHUNK 8
#define VD_ABI_STATE_CHUNK_BYTES 0
#define VD_ABI_STATE_CHUNK_REMAINING 8

/* device.identity */
#define VD_ABI_SIZEOF_DEVICE_IDENTITY_RET 16

/* device.info */
#define VD_ABI_SIZEOF_DEVICE_INFO_RET 32

/* device.read-config */
#define VD_ABI_SIZEOF_DEVICE_READ_CONFIG_RET 8

/* device.activate */
#define VD_ABI_SIZEOF_DEVICE_ACTIVATE_RET 12
#define VD_ABI_DEVICE_ACTIVATE_RET_ERR 4

/* device.handle */
#define VD_ABI_SIZEOF_DEVICE_HANDLE_RET 12
#define VD_ABI_DEVICE_HANDLE_RET_OK 4
#define VD_ABI_DEVICE_HANDLE_RET_ERR 4

/* device.get-state */
#define VD_ABI_SIZEOF_DEVICE_GET_STATE_RET 24
#define VD_ABI_DEVICE_GET_STATE_RET_OK 8
#define VD_ABI_DEVICE_GET_STATE_RET_ERR 8

/* device.set-state */
#define VD_ABI_SIZEOF_DEVICE_SET_STATE_RET 12
#define VD_ABI_DEVICE_SET_STATE_RET_ERR 4

/* device.finish-load */
#define VD_ABI_SIZEOF_DEVICE_FINISH_LOAD_RET 12
#define VD_ABI_DEVICE_FINISH_LOAD_RET_ERR 4

#endif
