// Guest buffers that lie back to back in host memory, as one view each run. A Linux guest's
// virtio-fs driver gives every 4 KiB page of a FUSE_READ or FUSE_WRITE its own descriptor, but
// the pages of one request are mostly neighbours in guest memory (bench/fs-guest, 2026-12-07: a
// 1 MiB WRITE's 256 pages were 3.7 runs on average, a 128 KiB READ's 32 pages 1.3 runs), and so
// in the host's mapping. One iovec per run instead of per page: each view handed to the addon
// costs an N-API element read and typed-array lookup (~50-100 ns), 256 of them per 1 MiB.

/**
 * `views` with each run of neighbours (the same ArrayBuffer, one ending where the next begins)
 * made one view; the same array when nothing joins. Empty views are kept as they are.
 */
export function coalesceViews(views: readonly Uint8Array[]): readonly Uint8Array[] {
  const n = views.length;
  let i = 1;
  for (; i < n; i++) if (joins(views[i - 1]!, views[i]!)) break;
  if (i >= n) return views;
  const out: Uint8Array[] = views.slice(0, i - 1);
  let start = views[i - 1]!;
  let len = start.length;
  for (; i < n; i++) {
    const v = views[i]!;
    if (v.length > 0 && len > 0 && v.buffer === start.buffer && start.byteOffset + len === v.byteOffset) {
      len += v.length;
      continue;
    }
    out.push(len === start.length ? start : new Uint8Array(start.buffer, start.byteOffset, len));
    start = v;
    len = v.length;
  }
  out.push(len === start.length ? start : new Uint8Array(start.buffer, start.byteOffset, len));
  return out;
}

/** Empty views never join: a detached one (its memory unmapped) reads as empty and must stay as it is. */
function joins(a: Uint8Array, b: Uint8Array): boolean {
  return a.length > 0 && b.length > 0 && a.buffer === b.buffer && a.byteOffset + a.length === b.byteOffset;
}

/**
 * `views` past their first `n` bytes (n at most their total): the views wholly moved are
 * dropped and the one the count stopped in starts where it stopped; the same array when `n`
 * is 0. For a transfer that went short (preadv, pwritev) and goes on from there.
 */
export function advanceViews(views: readonly Uint8Array[], n: number): readonly Uint8Array[] {
  let left = n;
  let k = 0;
  while (k < views.length && left >= views[k]!.length) left -= views[k++]!.length;
  if (k === 0 && left === 0) return views;
  return k < views.length ? [views[k]!.subarray(left), ...views.slice(k + 1)] : [];
}
