// Leak checks by identity, not by count. A test process closes fds of its own now and then
// (seen in a fresh clone: 29 before a scenario, 28 after, in three test files), so "as many as
// before" fails without a leak, and "at most as many" could hide a leak behind such a close.
// What a leak really is: an fd open now that was not open before (a new number, or an old
// number now naming another file).
import { readdirSync, readlinkSync } from 'node:fs';

export type FdSnapshot = ReadonlyMap<number, string>;

function target(fd: string): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '(closed while reading)';
  }
}

export function fdSnapshot(): FdSnapshot {
  return new Map(readdirSync('/proc/self/fd').map((fd) => [Number(fd), target(fd)]));
}

/** Fds open now that were not open at `before` (or now name another file), as "N -> target". */
export function fdsOpenedSince(before: FdSnapshot): string[] {
  const now = fdSnapshot();
  // readdir's own directory fd is in every snapshot under a number that may differ.
  return [...now]
    .filter(([fd, to]) => before.get(fd) !== to && !to.startsWith('/proc/') )
    .map(([fd, to]) => `${fd} -> ${to}`);
}
