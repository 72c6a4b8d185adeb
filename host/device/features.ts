// Virtio feature bits the host itself implements (transport and ring features), as opposed to
// the device-specific bits a device offers.

export const VirtioFeature = {
  NOTIFY_ON_EMPTY: 24,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** VHOST_USER_F_PROTOCOL_FEATURES shares bit 30 with the legacy BAD_FEATURE. */
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  RING_RESET: 40,
  /**
   * VHOST_F_LOG_ALL: bit 26 (linux/vhost.h, libvhost-user, QEMU). Not 42: a back-end offering
   * bit 42 instead gets "Migration disabled: vhost lacks VHOST_F_LOG_ALL feature" from QEMU.
   */
  LOG_ALL: 26,
} as const;

export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

export function hasFeature(features: bigint, n: number): boolean {
  return (features & bit(n)) !== 0n;
}

/** Bits 0-23 and 50-127 are device-specific; 24-49 belong to the transport and ring layout. */
export const DEVICE_FEATURE_MASK = (1n << 24n) - 1n | (((1n << 64n) - 1n) & ~((1n << 50n) - 1n));

/** Names for log lines ("bit 33 (ACCESS_PLATFORM)"). */
export function describeBits(mask: bigint): string {
  const names = new Map<number, string>(Object.entries(VirtioFeature).map(([k, v]) => [v, k]));
  const out: string[] = [];
  for (let i = 0; i < 64; i++) {
    if (mask & bit(i)) out.push(names.has(i) ? `${i} (${names.get(i)})` : `${i}`);
  }
  return out.length ? `bit${out.length > 1 ? 's' : ''} ${out.join(', ')}` : 'none';
}
