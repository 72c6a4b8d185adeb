// What the migration tests of a blk memory disk share: our front-end connected with pre-copy on
// offer, and a pool of lanes running numbered jobs (fills and read-backs of MiB after MiB).
import type { HostProcess } from './host-process.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../../host/frontend/driver.ts';
import { featureBit } from '../../host/protocol/constants.ts';
import { PRECOPY_PROTOCOL_FEATURE } from '../../host/protocol/precopy.ts';

/** One ring of 128, `memoryBytes` of guest memory, pre-copy (bit 62) offered. */
export function connectPrecopy(h: HostProcess, memoryBytes = 64 << 20): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(h.socketPath, {
    memoryBytes,
    queues: [128],
    features: 1n << BigInt(VIRTIO_F_VERSION_1),
    protocolFeatures: FRONTEND_PROTOCOL_FEATURES | featureBit(PRECOPY_PROTOCOL_FEATURE),
  });
}

/** Runs `lanes` workers over jobs [0, n) in order. */
export async function parallel(n: number, lanes: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: lanes }, async () => {
    while (next < n) await job(next++);
  }));
}
