// Which executor moves a device's bytes, from what its backing table holds at 0 (--storage):
// a memory disk -> MemoryExecutor (one copy, synchronous); a file or block device -> io_uring
// (UringExecutor; other backings in the table run synchronously in their turn); no --storage
// (a virtio-fs device, whose files host/fs serves) -> SyncExecutor. Where io_uring is not
// available (a kernel without it, io_uring_disabled, a seccomp filter) the file is served by
// the SyncExecutor, and the log says so and why: one request at a time is a different product.
import { errnoCode } from '../native/index.ts';
import type { Logger } from '../log/logger.ts';
import { FileBacking } from '../storage/file.ts';
import { MemoryBacking } from '../storage/memory.ts';
import type { BackingTable } from './backing-table.ts';
import type { IoExecutor } from './executor.ts';
import { MemoryExecutor } from './memory-executor.ts';
import { SyncExecutor } from './sync-executor.ts';
import { UringExecutor, type SyncTarget, type UringTarget } from './uring-executor.ts';

/** Submission entries per device ring: 256 requests in flight, more than QEMU's 128-entry virtqueue. */
const RING_ENTRIES = 128;

export interface ExecutorChoice {
  executor: IoExecutor;
  kind: 'memory' | 'io_uring' | 'sync';
}

export function chooseExecutor(table: BackingTable, log: Logger): ExecutorChoice {
  const logIoError = (message: string) => log.warn(`backing I/O failed: ${message}`);
  const storage = table.get(0)?.storage;
  if (storage instanceof MemoryBacking) return { executor: new MemoryExecutor((i) => table.get(i), logIoError), kind: 'memory' };
  if (storage instanceof FileBacking) {
    const target = (i: number): UringTarget | SyncTarget | undefined => {
      const b = table.get(i);
      if (b === undefined) return undefined;
      return b.storage instanceof FileBacking ? b.storage : { sync: b };
    };
    try {
      const executor = new UringExecutor({ target, entries: RING_ENTRIES, logIoError });
      log.debug(`storage I/O on ${storage.describe}: io_uring${storage.directAlign > 0 ? `, O_DIRECT (${storage.directAlign}-byte blocks)` : ''}`);
      return { executor, kind: 'io_uring' };
    } catch (e) {
      const why = `${errnoCode(e) ?? 'error'}: ${(e as Error).message}`;
      log.warn(`io_uring is not available here (${why}): ${storage.describe} is served synchronously, one request at a time; its I/O is not asynchronous and queue depth does not help`);
    }
  }
  return { executor: new SyncExecutor(table, logIoError), kind: 'sync' };
}
