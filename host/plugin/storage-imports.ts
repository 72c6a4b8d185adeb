// The `storage` import: the plugin's only way to its disk. Every range from the plugin is
// checked here, against the backing's size and per-call limits, before the backing sees it;
// failures come back to the plugin as storage-error values, never as exceptions into its
// stack (except "not granted", which traps like every refused capability).
import { BackingError, type Backing } from '../storage/backing.ts';

/** One read may move this much: the plugin asks per request, and requests are small. */
export const MAX_STORAGE_IO = 16 * 1024 * 1024;
/** One discard/write-zeroes may cover this much: a file backing writes real zeroes. */
export const MAX_STORAGE_ZERO = 1024 * 1024 * 1024;

type StorageError = 'io' | 'out-of-range' | 'read-only';
type Result<T> = T | { tag: 'err'; val: StorageError };

const err = (val: StorageError) => ({ tag: 'err' as const, val });

export function storageImports(
  backing: Backing | undefined,
  refuse: () => never,
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
  const modifying = (offset: bigint, len: number | bigint, max: number, op: (off: number, n: number) => void): Result<void> => {
    const b = need();
    if (b.readOnly) return err('read-only');
    const r = range(offset, len, max);
    if (r === null) return err('out-of-range');
    return guarded(() => op(r[0], r[1]));
  };
  return {
    size: (): bigint => BigInt(need().size),
    readOnly: (): boolean => need().readOnly,
    read(offset: bigint, len: number): Result<Uint8Array> {
      const b = need();
      const r = range(offset, len, MAX_STORAGE_IO);
      if (r === null) return err('out-of-range');
      return guarded(() => b.read(r[0], r[1]));
    },
    write: (offset: bigint, data: Uint8Array): Result<void> =>
      modifying(offset, data.length, MAX_STORAGE_IO, (off) => backing!.write(off, data)),
    flush(): Result<void> {
      const b = need();
      // Read-only: nothing of ours to make durable, and fdatasync on O_RDONLY is pointless.
      if (b.readOnly) return undefined;
      return guarded(() => b.flush());
    },
    discard: (offset: bigint, len: bigint): Result<void> =>
      modifying(offset, len, MAX_STORAGE_ZERO, (off, n) => backing!.discard(off, n)),
    writeZeroes: (offset: bigint, len: bigint): Result<void> =>
      modifying(offset, len, MAX_STORAGE_ZERO, (off, n) => backing!.writeZeroes(off, n)),
  };
}
