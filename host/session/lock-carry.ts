// A virtio-fs guest's locks across a live host handover (docs/virtio-fs.md, "Locks across
// upgrades, handovers, migrations and stops"). The locks live on open file descriptions of the
// old host (host/fs/locks.ts), so the descriptions themselves move: the old host reads its
// share's lock handoff (host/fs/lock-handoff.ts) after the rings stopped and sends the fds that
// hold the locks beside the state memfd (SCM_RIGHTS), as duplicates its device worker took; the new host's share duplicates them
// after the state's finish-load, before the old host lets go, so the locks never drop. A
// handoff names fds by number in the process that wrote it: on the wire they are indexes into
// the fds that came with the stop message, and the new host puts its own numbers back.
import { Buffer } from 'node:buffer';
import type { DeviceWorker } from '../device/worker-client.ts';
import { LiveHandoverOverBound } from './live-handover.ts';
import { decodeLockHandoff, encodeLockHandoff, renumberFds, LOCK_HANDOFF_SECTION_ID } from '../fs/lock-handoff.ts';

/** Lock-holding fds one handover carries at most (the wire takes 4096 fds in all). */
export const MAX_CARRIED_LOCK_FDS = 1024;
/** The handoff's bytes at most (base64 in the stop message, whose JSON is at most 1 MiB). */
const MAX_CARRIED_BYTES = 512 * 1024;

/** The locks part of a stop message: the handoff (base64), its fds named by index into the fds sent after the state memfd. */
export interface CarriedLocks {
  handoff: string;
  fds: number;
}


function overBound(fds: number, bytes: number): string | null {
  if (fds <= MAX_CARRIED_LOCK_FDS && bytes <= MAX_CARRIED_BYTES) return null;
  return `the guest's locks are held through ${fds} host descriptions (${bytes} bytes to describe): a handover carries at most ${MAX_CARRIED_LOCK_FDS} (${MAX_CARRIED_BYTES} bytes); retry once the guest released some`;
}

/**
 * Old host, rings paused, before they stop: refuses (LiveHandoverOverBound, not retried) a guest whose locks are
 * over the bounds now, so the guest does not pause for a handover carryLocks would refuse.
 * carryLocks checks again after the stop and is the authority.
 */
export async function checkLockBounds(worker: DeviceWorker): Promise<void> {
  const { fds, bytes } = await worker.lockCarrySize();
  const why = overBound(fds, bytes);
  if (why !== null) throw new LiveHandoverOverBound(why);
}

/**
 * Old host, rings stopped: the locks to send and the fds to send with them, or null when the
 * guest holds none. The fds are duplicates the device's worker took as the share described
 * its locks (host/fs/lock-carry-wire.ts): the caller owns them and closes them whether they
 * were sent or not.
 */
export async function carryLocks(worker: DeviceWorker, close: (fds: number[]) => void): Promise<{ locks: CarriedLocks; fds: number[] } | null> {
  const w = await worker.lockCarry();
  if (w === null) return null;
  const why = overBound(w.fds.length, w.handoff.length);
  if (why !== null) {
    close(w.fds);
    throw new LiveHandoverOverBound(why);
  }
  return { locks: { handoff: Buffer.from(w.handoff).toString('base64'), fds: w.fds.length }, fds: w.fds };
}

/**
 * New host, after the state's finish-load and before the rings start: the guest's locks from
 * the stop message and the fds that came with it (closed here whatever happens: the share keeps
 * its own duplicates). Throws with what failed.
 */
export async function takeLocks(worker: DeviceWorker, locks: CarriedLocks, fds: number[], close: (fds: number[]) => void): Promise<void> {
  try {
    const h = decodeLockHandoff(Buffer.from(locks.handoff, 'base64'));
    const fd = (i: number) => {
      if (i >= fds.length) throw new Error(`the lock handoff names fd ${i} of the ${fds.length} that came with it`);
      return fds[i];
    };
    const local = encodeLockHandoff({ ...renumberFds(h, fd), pid: process.pid });
    await worker.stateBeginLoad(LOCK_HANDOFF_SECTION_ID, local.length);
    await worker.stateWrite(0, local, LOCK_HANDOFF_SECTION_ID);
    const why = await worker.stateFinish(LOCK_HANDOFF_SECTION_ID);
    if (why !== null) throw new Error(why);
  } catch (e) {
    throw new Error(`the guest's file locks could not be taken over: ${(e as Error).message}`);
  } finally {
    close(fds);
  }
}
