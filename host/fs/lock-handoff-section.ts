// The guest's locks on a share as a worker state section that only a live plugin upgrade moves
// (VirtioDevice.upgradeSections; never saved for a migration or a host handover: its fds are
// this process's). The old instance's share describes them (rings stopped), the new one's takes
// them over in finish(), after the plugin's finish-load reopened the open files.
import type { WorkerStateSection } from '../migration/section.ts';
import type { FsShare } from './share.ts';
import { decodeLockHandoff, encodeLockHandoff, LOCK_HANDOFF_MAX_BYTES, LOCK_HANDOFF_SECTION_ID } from './lock-handoff.ts';

const sections = new WeakMap<FsShare, WorkerStateSection>();

export function lockHandoffSection(share: FsShare): WorkerStateSection {
  let s = sections.get(share);
  if (s === undefined) {
    s = section(share);
    sections.set(share, s);
  }
  return s;
}

function section(share: FsShare): WorkerStateSection {
  // SAVE: encoded once when its size is asked, so the reads that follow see the same bytes.
  let saved: Uint8Array | null = null;
  let loading: Uint8Array | null = null;
  let loaded = 0;
  return {
    id: LOCK_HANDOFF_SECTION_ID,
    name: 'fs-locks',
    size() {
      saved = encodeLockHandoff(share.lockHandoff());
      return saved.length;
    },
    read(offset, len) {
      if (saved === null) throw new Error('fs-locks: read before size');
      return saved.subarray(offset, offset + len);
    },
    beginLoad(size) {
      if (!Number.isSafeInteger(size) || size < 8 || size > LOCK_HANDOFF_MAX_BYTES) throw new Error(`fs-locks: ${size} bytes is not a lock handoff (8 to ${LOCK_HANDOFF_MAX_BYTES})`);
      loading = new Uint8Array(size);
      loaded = 0;
    },
    write(offset, chunk) {
      if (loading === null) throw new Error('fs-locks: write before beginLoad');
      if (offset !== loaded || offset + chunk.length > loading.length) throw new Error(`fs-locks: bytes at ${offset}, expected ${loaded}`);
      loading.set(chunk, offset);
      loaded += chunk.length;
    },
    finish() {
      if (loading === null || loaded !== loading.length) return `fs-locks: ${loaded} of ${loading?.length ?? 0} bytes arrived`;
      const bytes = loading;
      loading = null;
      try {
        return share.adoptLocks(decodeLockHandoff(bytes));
      } catch (e) {
        return (e as Error).message;
      }
    },
    abort() {
      loading = null;
    },
  };
}
