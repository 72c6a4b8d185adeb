// Fds a device worker makes during one call (duplicates it hands back in its reply, scratch fds
// it closes itself before it answers), written down where the main thread can read them
// whatever becomes of the worker. Fds are process-wide but a worker's JavaScript objects are
// not: a worker killed (the watchdog, a crash, a terminate) between making an fd and replying
// or closing it leaves a number nobody else knows, open for good. With the ledger, the main
// thread closes what the dead worker left once its thread is gone.
//
// The ledger is an Int32Array over a SharedArrayBuffer, passed as an argument of the call (a
// shared buffer is shared, not copied, by postMessage). Cell 0 counts the cells used; cells
// 1.. hold fds, -1 once the worker closed one itself. The worker writes an fd in the same
// expression that makes it, `cells[at] = native.dup(fd)`: a terminate interrupts JavaScript only
// at a function's entry or a loop's back edge, never between a native call's return and the
// store of its value, so a made fd is always written down. It clears a cell before it closes
// the fd (a number closed first could be reused, and the main thread would close another file).
//
// The outcome of the call decides who closes: answered, the fds in the reply are the caller's
// and those the worker made for itself are closed already; failed with the worker alive, the
// worker closed its own (the cells say -1); failed because the worker died (its reply, if it
// sent one, is dropped), reclaim() closes every fd still written down.
import { native } from '../native/index.ts';
import { errorText, type Logger } from '../log/logger.ts';

export type FdCells = Int32Array;

/** A ledger of room for `capacity` fds (main thread: made per call, passed as an argument). */
export function fdLedger(capacity: number): FdCells {
  const cells = new Int32Array(new SharedArrayBuffer(4 * (capacity + 1)));
  cells.fill(-1, 1);
  return cells;
}

/**
 * Worker side: the cell the next fd goes into (`cells[at] = native.dup(fd)`, in one expression).
 * Throws, before anything is made, when the ledger is full.
 */
export function nextCell(cells: FdCells, what: string): number {
  const at = Atomics.load(cells, 0) + 1;
  if (at >= cells.length) throw new Error(`${what}: more than the ${cells.length - 1} fds one call may make`);
  Atomics.store(cells, 0, at);
  return at;
}

/** Worker side: closes fd `fd` made in this call, taking it out of the ledger first. */
export function closeNoted(cells: FdCells, fd: number): void {
  for (let i = 1; i <= Atomics.load(cells, 0) && i < cells.length; i++) {
    if (Atomics.load(cells, i) === fd) {
      Atomics.store(cells, i, -1);
      break;
    }
  }
  native.close(fd);
}

/** The fds the ledger still holds. */
export function notedFds(cells: FdCells): number[] {
  const out: number[] = [];
  for (let i = 1; i <= Atomics.load(cells, 0) && i < cells.length; i++) {
    const fd = Atomics.load(cells, i);
    if (fd >= 0) out.push(fd);
  }
  return out;
}

/** What reclaim needs of the thread the call went to. */
export interface LedgerThread {
  /** Why the thread is gone, or null while it runs. */
  readonly dead: string | null;
  /** Waits (bounded) for the thread to exit; false if it did not. */
  exitedWithin(ms?: number): Promise<boolean>;
}

/**
 * Main thread, after the call failed: if the worker died, every fd it left in the ledger is
 * closed once its thread is gone (before that it could still be using them). A thread that does
 * not exit (stuck in a system call) keeps them: they are left open, said in the log. A worker
 * that is alive closed its own. Returns the fds closed.
 */
export async function reclaim(thread: LedgerThread, cells: FdCells, log: Logger, what: string): Promise<number> {
  if (thread.dead === null) return 0;
  const exited = await thread.exitedWithin();
  const fds = notedFds(cells);
  if (fds.length === 0) return 0;
  if (!exited) {
    log.warn(`${what}: leaving ${fds.length} fd(s) the worker made open: it died in the call and its thread has not exited`);
    return 0;
  }
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch (e) {
      log.warn(`${what}: closing fd ${fd} the dead worker made: ${errorText(e)}`);
    }
  }
  log.info(`${what}: closed ${fds.length} fd(s) the worker made before it died in the call`);
  return fds.length;
}
