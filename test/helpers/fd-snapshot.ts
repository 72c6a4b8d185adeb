// Leak checks by identity, not by count. A test process closes fds of its own now and then
// (seen in a fresh clone: 29 before a scenario, 28 after, in three test files), so "as many as
// before" fails without a leak, and "at most as many" could hide a leak behind such a close.
// What a leak really is: an fd open now that was not open before (a new number, or an old
// number now naming another file).
import { readdirSync, readlinkSync } from 'node:fs';

export type FdSnapshot = ReadonlyMap<number, string>;

function target(fd: string): string | undefined {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return undefined;
  }
}

/** The fds open now and what they name. One listed by readdir and gone by readlink is left out:
 * it was closed meanwhile (another thread's short-lived fd; seen in a fresh-clone CI run), so it
 * is not open now, and reporting it would make a leak check fail without a leak. */
export function fdSnapshot(): FdSnapshot {
  const open = new Map<number, string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    const to = target(fd);
    if (to !== undefined) open.set(Number(fd), to);
  }
  return open;
}

/** Fds open now that were not open at `before` (or now name another file), as "N -> target". */
export function fdsOpenedSince(before: FdSnapshot): string[] {
  const now = fdSnapshot();
  // readdir's own directory fd is in every snapshot under a number that may differ.
  return [...now]
    .filter(([fd, to]) => before.get(fd) !== to && !to.startsWith('/proc/') )
    .map(([fd, to]) => `${fd} -> ${to}`);
}
