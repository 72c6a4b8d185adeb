// The front-end driver's public surface.
export { VhostUserFrontend, FRONTEND_PROTOCOL_FEATURES, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VirtioStatus } from './driver.ts';
export type { FrontendOptions } from './driver.ts';
export { VhostUserConnection, VhostUserError } from './connection.ts';
export { BackendChannel } from './backend-channel.ts';
export { DriverQueue } from './queue.ts';
export type { Completion, QueueOptions, Readable, SubmitOptions } from './queue.ts';
export { GuestRam, UVA_BASE } from './driver-memory.ts';
export type { RamOptions, RamRegion } from './driver-memory.ts';
export { RangeAllocator } from './allocator.ts';
export { BlkDevice, BlkError, BlkStatus, BlkType, SECTOR, parseBlkConfig } from './blk.ts';
export type { BlkConfig, BlkRequestOptions } from './blk.ts';
export { FrontendDirtyLog, ringAddr } from './driver.ts';
export { migrate, saveState, loadState, readToEnd, writeAll, MigrationError, MIGRATION_CHUNK } from './migrate.ts';
export type { MigrateOptions, MigrateReport, StateChannelMode } from './migrate.ts';
