// Pre-copy of a memory disk between two vhost-wasm hosts (vhost-wasm only; docs/migration.md,
// "Pre-copy"). The vhost-user protocol moves device state only while the rings are stopped
// (SET_DEVICE_STATE_FD phase STOPPED, the only phase the spec defines); this extension adds two
// phases of our own to the same message, negotiated with a protocol feature bit of our own, so
// that `vhost-wasm migrate` can move a memory disk's blocks while the guest runs. QEMU never
// sets the bit (it masks GET_PROTOCOL_FEATURES with the bits it knows), so it never sees them.
// The stream a round carries is host/migration/precopy.ts.

/**
 * Protocol feature bit of the extension: like the RFC state shm's bit 63, from the top of the
 * range a future spec revision reaches last. Offered only by a device with a memory disk.
 */
export const PRECOPY_PROTOCOL_FEATURE = 62;

/** SET_DEVICE_STATE_FD phases of the extension (the spec's only phase is STOPPED = 0). */
export const PrecopyPhase = {
  /** One round of disk blocks through a pipe; rings may run. SAVE on the source, LOAD on the destination. */
  ROUND: 0x5657_0001,
  /** Like ROUND, but the source starts a new pre-copy (the whole disk) whatever it sent before. */
  START: 0x5657_0003,
  /** Rings stopped: the container, with the disk replaced by the pre-copy's last round. */
  FINAL: 0x5657_0002,
} as const;

/**
 * Protocol feature bit of the disk hand-over (docs/migration.md, "Disk hand-over"): two hosts on
 * one machine, the memory disk's memfd goes from the source to the destination by reference
 * instead of its bytes through a pipe. Ours, next below pre-copy's; offered only by a device with
 * a writable memory disk; QEMU masks it off like bit 62.
 */
export const DISK_HANDOVER_PROTOCOL_FEATURE = 61;

/** SET_DEVICE_STATE_FD phases of the disk hand-over. */
export const HandoverPhase = {
  /**
   * SAVE: the source answers with its disk's memfd (the message's own fd is not used). LOAD: the
   * message's fd is that memfd; the destination checks it and serves it in place of its own
   * disk once a DISK_FINAL state naming it applied. Rings may run on the source meanwhile (the
   * two hosts share the very pages); none may on the destination.
   */
  DISK_FD: 0x5657_0004,
  /** Rings stopped: the container, with the disk replaced by the identity of the memfd handed over. */
  DISK_FINAL: 0x5657_0005,
} as const;
