// Whether a storage ring asks the kernel for SINGLE_ISSUER + DEFER_TASKRUN (host/native/src/uring.c),
// decided by the kernel's release (uname -r, os.release()).
//
// The executor is driven by the ring's registered eventfd: it reaps when the eventfd fires. Under
// DEFER_TASKRUN a completion's task work waits until the thread enters the ring, so the eventfd
// must fire when such work is queued, not only when a completion is posted. Linux does that since
// commit 21a091b970cd ("io_uring: signal registered eventfd to process deferred task work"),
// merged with the flag itself (c0e0d6ba25f1, "io_uring: add IORING_SETUP_DEFER_TASKRUN") for
// 6.1-rc1: every mainline and stable kernel that accepts the flag signals the eventfd. A kernel
// that reports an older release but accepts the flag is a vendor backport, of which nothing says
// it took the eventfd patch too: it gets a plain ring (same results, more CPU per completion).
// An unreadable release is treated as such a kernel.

/** The first release where DEFER_TASKRUN and its eventfd signalling both are (6.1). */
const SINCE: readonly [number, number] = [6, 1];

export function deferTaskrunFits(release: string): boolean {
  const m = /^(\d+)\.(\d+)(?:[.\-+~_]|$)/.exec(release);
  if (m === null) return false;
  const major = Number(m[1]);
  const minor = Number(m[2]);
  return major > SINCE[0] || (major === SINCE[0] && minor >= SINCE[1]);
}
