// A share's lock handoff as a host handover sends it (host/session/lock-carry.ts): the fds it
// names become indexes into the fds sent with it. Built on the device's worker thread, at the
// moment the share describes its locks: there each distinct lock-holding fd is duplicated
// (F_DUPFD_CLOEXEC) so the main thread sends descriptions it owns. Sending the share's own
// numbers a little later from the main thread would race with the share closing one: the
// number could by then name another fd (another tenant's file) and that would leave the process.
import { decodeLockHandoff, encodeLockHandoff, renumberFds } from './lock-handoff.ts';

/** What one handover would carry: the wire handoff and, in index order, the fds it names. */
export interface LockCarryWire {
  /** The handoff with every fd replaced by its index in `fds`. */
  handoff: Uint8Array;
  /** Owned duplicates (dup given) or the share's own numbers (none given: for counting only). */
  fds: number[];
}

/**
 * The wire form of a share's lock handoff section, or null when it holds no lock. `dup` takes
 * an fd and answers a new fd the caller owns; if one fails, those taken are given to `close`
 * and the error is thrown.
 */
export function lockCarryWire(section: Uint8Array, dup?: (fd: number) => number, close?: (fds: number[]) => void): LockCarryWire | null {
  if (section.length === 0) return null;
  const h = decodeLockHandoff(section);
  if (h.owners.length === 0 && h.flocked.length === 0) return null;
  const fds: number[] = [];
  const at = new Map<number, number>();
  const index = (fd: number) => {
    let i = at.get(fd);
    if (i === undefined) at.set(fd, (i = fds.push(fd) - 1));
    return i;
  };
  const handoff = encodeLockHandoff(renumberFds(h, index));
  if (!dup) return { handoff, fds };
  const owned: number[] = [];
  try {
    for (const fd of fds) owned.push(dup(fd));
  } catch (e) {
    close?.(owned);
    throw e;
  }
  return { handoff, fds: owned };
}
