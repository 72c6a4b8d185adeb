// host/storage: the backings behind a device's `storage` grant.
import { BackingError, type Backing, type StorageSpec } from './backing.ts';
import { FileBacking } from './file.ts';
import { MemoryBacking } from './memory.ts';
import { createMemoryDisk, mapMemoryDisk } from './memory-disk.ts';
import { DirtyBlocks } from './dirty-blocks.ts';

export { BackingError, FileBacking, MemoryBacking, createMemoryDisk, mapMemoryDisk, type Backing, type StorageSpec };

/** Opens what the operator granted (in the device worker: the backing lives there). */
export function openBacking(spec: StorageSpec, log?: (message: string) => void): Backing {
  if (spec.kind === 'memory') {
    if (spec.fd === undefined) return new MemoryBacking(spec.size, spec.readOnly);
    const dirty = spec.dirty === undefined ? undefined : new DirtyBlocks(spec.dirty, spec.size);
    return new MemoryBacking(spec.size, spec.readOnly, mapMemoryDisk(spec.fd, spec.size, spec.readOnly, spec.prealloc === true), dirty);
  }
  return FileBacking.open(spec.path, spec.readOnly, { direct: spec.direct === true, log });
}

export function isStorageSpec(v: unknown): v is StorageSpec {
  if (typeof v !== 'object' || v === null) return false;
  const s = v as Record<string, unknown>;
  if (typeof s.readOnly !== 'boolean') return false;
  if (s.kind === 'file') return typeof s.path === 'string' && s.path.length > 0 && (s.direct === undefined || typeof s.direct === 'boolean');
  return s.kind === 'memory' && Number.isSafeInteger(s.size) && (s.size as number) >= 0 && (s.fd === undefined || (Number.isInteger(s.fd) && (s.fd as number) >= 0)) &&
    (s.prealloc === undefined || typeof s.prealloc === 'boolean') &&
    (s.dirty === undefined || (s.fd !== undefined && s.dirty instanceof SharedArrayBuffer));
}
