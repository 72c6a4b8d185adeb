// The `storage` import: the plugin's only way to its disk. Every range from the plugin is
// checked here, against the backing's size and per-call limits, before the backing sees it;
// failures come back to the plugin as storage-error values, never as exceptions into its
// stack (except "not granted", which traps like every refused capability).
import { BackingError, type Backing } from '../storage/backing.ts';

/** One read may move this much: the plugin asks per request, and requests are small. */
export const MAX_STORAGE_IO = 16 * 1024 * 1024;
/** One discard/write-zeroes may cover this much: a file system without fallocate gets real zeroes written. */
export const MAX_STORAGE_ZERO = 1024 * 1024 * 1024;

type StorageError = 'io' | 'out-of-range' | 'read-only';
type Result<T> = T | { tag: 'err'; val: StorageError };

const err = (val: StorageError) => ({ tag: 'err' as const, val });

export function storageImports(
  backing: Backing | undefined,
  refuse: () => never,
  /** Backing failures and plugin range bugs, for the operator's log. */
  logIoError: (message: string) => void,
): Record<string, unknown> {
  // Offsets arrive as u64 bigints; anything past 2^53 is past any backing we can open.
  const range = (offset: bigint, len: number | bigint, max: number): [number, number] | null => {
    const b = backing!;
    if (offset > BigInt(b.size)) return null;
    const off = Number(offset);
    const n = typeof len === 'bigint' ? (len > BigInt(max) ? Infinity : Number(len)) : len;
    if (n > max || n > b.size - off) return null;
    return [off, n];
  };
  // A well-behaved plugin checks ranges itself; reaching ours means it did not. Said once
  // per grant, so a plugin looping on it cannot flood the log.
  let warned = false;
  const outOfRange = (what: string, offset: bigint, len: number | bigint): { tag: 'err'; val: StorageError } => {
    if (!warned) {
      warned = true;
      logIoError(`${what} of ${len} bytes at ${offset} is outside the ${backing!.size}-byte store or over the per-call limit: refused (out-of-range; later ones are not logged)`);
    }
    return err('out-of-range');
  };
  const guarded = <T>(fn: () => T): Result<T> => {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof BackingError)) throw e;
      logIoError(e.message);
      return err('io');
    }
  };
  const need = (): Backing => backing ?? refuse();
  const modifying = (what: string, offset: bigint, len: number | bigint, max: number, op: (off: number, n: number) => void): Result<void> => {
    const b = need();
    if (b.readOnly) return err('read-only');
    const r = range(offset, len, max);
    if (r === null) return outOfRange(what, offset, len);
    return guarded(() => op(r[0], r[1]));
  };
  return {
    size: (): bigint => BigInt(need().size),
    readOnly: (): boolean => need().readOnly,
    read(offset: bigint, len: number): Result<Uint8Array> {
      const b = need();
      const r = range(offset, len, MAX_STORAGE_IO);
      if (r === null) return outOfRange('read', offset, len);
      return guarded(() => b.read(r[0], r[1]));
    },
    write: (offset: bigint, data: Uint8Array): Result<void> =>
      modifying('write', offset, data.length, MAX_STORAGE_IO, (off) => backing!.write(off, data)),
    flush(): Result<void> {
      const b = need();
      // Read-only: nothing of ours to make durable, and fdatasync on O_RDONLY is pointless.
      if (b.readOnly) return undefined;
      return guarded(() => b.flush());
    },
    discard: (offset: bigint, len: bigint): Result<void> =>
      modifying('discard', offset, len, MAX_STORAGE_ZERO, (off, n) => backing!.discard(off, n)),
    writeZeroes: (offset: bigint, len: bigint): Result<void> =>
      modifying('write-zeroes', offset, len, MAX_STORAGE_ZERO, (off, n) => backing!.writeZeroes(off, n)),
  };
}
