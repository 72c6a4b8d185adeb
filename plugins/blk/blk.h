/* virtio-blk constants (virtio 1.2, 5.2) and this device's limits. */
#ifndef BLK_H
#define BLK_H

#define BIT(n) (1ull << (n))

/* Feature bits */
#define F_SIZE_MAX 1
#define F_SEG_MAX 2
#define F_RO 5
#define F_BLK_SIZE 6
#define F_FLUSH 9
#define F_MQ 12
#define F_DISCARD 13
#define F_WRITE_ZEROES 14

/* Request types and status bytes */
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

#define SECTOR 512
#define HDR_SIZE 16
#define ID_BYTES 20
/* struct virtio_blk_discard_write_zeroes: sector u64, num_sectors u32, flags u32 */
#define SEG_SIZE 16
#define WZ_FLAG_UNMAP 1u
#define BLK_SERIAL "vhost-wasm-blk"

/* struct virtio_blk_config offsets, up to write_zeroes_may_unmap and its padding */
#define CFG_CAPACITY 0
#define CFG_SIZE_MAX 8
#define CFG_SEG_MAX 12
#define CFG_BLK_SIZE 20
#define CFG_NUM_QUEUES 34
#define CFG_MAX_DISCARD_SECTORS 36
#define CFG_MAX_DISCARD_SEG 40
#define CFG_DISCARD_ALIGNMENT 44
#define CFG_MAX_WZ_SECTORS 48
#define CFG_MAX_WZ_SEG 52
#define CONFIG_SIZE 60

/* Limits. The host moves the data, but one request is still bounded (Linux splits bigger I/O). */
/* Queues offered: QEMU's vhost-user-blk asks for one per vCPU unless told num-queues=, and
 * refuses a back-end offering fewer; a front-end using fewer than offered is fine. */
#define NUM_QUEUES 64
#define MAX_QUEUE_SIZE 1024
#define SEG_MAX 126
/* SEG_MAX x SIZE_MAX (3.9 MiB) stays under MAX_IO: a conforming driver never sends a
 * request we would have to refuse for its size. */
#define SIZE_MAX_BYTES (32u * 1024)
#define MAX_IO (4u << 20)
/* 32 MiB per discard/write-zeroes segment: a file backing writes real zeroes for it. */
#define MAX_DISCARD_SECTORS (65536u)
#define MAX_DISCARD_SEG 8
/* What the plugin sees of a request: the header and, for discard/write-zeroes, every
 * segment it accepts. A write's first bytes land there too; they are never used: the
 * payload goes to the disk by transfer from byte HDR_SIZE. */
#define PREFIX_LEN (HDR_SIZE + MAX_DISCARD_SEG * SEG_SIZE)

#define STATE_VERSION 1
#define STATE_SIZE 16

#endif
