// One fd budget per process: how many fds the filesystem shares of all devices together may
// hold. Devices run in worker threads of one process, so they share one fd table and one
// RLIMIT_NOFILE; without a common budget one virtio-fs guest can take every fd and another
// device's listener then fails accept() with EMFILE. The counter itself is native
// (host/native/src/fd_budget.c: atomics in process-global memory, the same for every
// thread); this module is the policy: how much of RLIMIT_NOFILE the host keeps for itself.
//
// The reserve is everything that is not a share handle:
//  - RESERVE_BASE for the process: Node's own fds (stdio, the main loop's epoll and
//    eventfds, the libuv threadpool's pipes: 40 measured for an idle host with one device),
//    log pipes, and one transient fd per fs call in flight (a truncate reopens the file; a
//    create pins an existing entry with O_PATH while it checks its type).
//  - deviceReserve(numQueues, threads) per device, added when the device's worker has started
//    and its queue count is known: its listener and connection, the connections waiting for it
//    (MAX_WAITING_CONNECTIONS), the memory regions one SET_MEM_TABLE can carry
//    (MEM_REGIONS_RESERVED, 8: what QEMU sends without CONFIGURE_MEM_SLOTS; every queue thread
//    maps the same fds), kick, call and err fds for each queue, and each worker thread's own (its loop's epoll and eventfds, the
//    back-end channel, the dirty-log and device-state fds, io_uring, a storage backing: 16
//    covers them with room).
// Memory regions past those 8 (ADD_MEM_REG up to the 509 slots GET_MAX_MEM_SLOTS offers) are
// accounted when they arrive (takeMemoryRegionFds, from the session's memory table): reserving
// all 509 per started device kept ~534 fds per device, so RLIMIT_NOFILE 20,000 let only ~37
// devices start in one daemon although almost none of them would ever hold more than 8
// regions. A fixed 8 keeps an ordinary front-end's table from ever being refused because fs
// shares spent the budget; a front-end that adds regions past it and finds the budget spent
// gets its ADD_MEM_REG refused (that one message fails, the device and host go on).
// With RLIMIT_NOFILE at 20,000 and an rng and an fs device that leaves about 19,800 share
// handles. When the budget is spent the share answers ENFILE (the guest sees "too many open
// files in system"), never EMFILE somewhere else.
//
// Fair shares between devices (host/native/src/fd_budget.c has the mechanism): every device
// with a share open (its worker joined the budget, FsShare) is guaranteed a reserve,
//   min(its maxHandles, floor(budget / (2 * devices with a share)))
// fds no other device can take; the other half of the budget is a common pool that any device
// takes from only while every other live device's unspent reserve stays free. So a guest that
// opens files until ENFILE leaves each other fs device its reserve (with 2 fs devices under
// RLIMIT_NOFILE 20,000: ~4,900 each, the greedy one up to ~14,700). The reserve lasts as long
// as the device's share (worker start to device removal or worker death): a reset or a
// disconnect gives the device's fds back, and its next guest finds its reserve still there.
// Memory regions past MEM_REGIONS_RESERVED come from the common pool only (takeMemoryRegionFds):
// a front-end adding regions cannot take an fs device's reserve either.
import { native } from '../native/index.ts';
import type { FdBudgetAccount, FdBudgetInfo } from '../native/fs-api.ts';
import { MAX_MEM_TABLE_REGIONS } from '../protocol/constants.ts';

export type { FdBudgetAccount, FdBudgetInfo } from '../native/fs-api.ts';

export const RESERVE_BASE = 128;
/** Accepted connections a busy device keeps waiting for it (host/server/listener.ts). */
export const MAX_WAITING_CONNECTIONS = 4;
const PER_DEVICE_FIXED = 1 + 1 + MAX_WAITING_CONNECTIONS;
const PER_WORKER_THREAD = 16;
/** Memory region fds every started device keeps without asking: one SET_MEM_TABLE's worth. */
export const MEM_REGIONS_RESERVED = MAX_MEM_TABLE_REGIONS;

/** Fds one device (its worker threads and its front-end) may need besides share handles. */
export function deviceReserve(numQueues: number, threads = 1): number {
  return PER_DEVICE_FIXED + PER_WORKER_THREAD * threads + MEM_REGIONS_RESERVED + 3 * numQueues;
}

/**
 * Sets the budget up if no thread has yet (raising RLIMIT_NOFILE's soft limit to the hard
 * one), and returns it. Idempotent and cheap: every FsShare calls it.
 */
export function ensureFdBudget(): FdBudgetInfo {
  return native.fdBudgetInit(RESERVE_BASE);
}

/** Keeps a started device's own fds out of the budget. */
export function reserveForDevice(numQueues: number, threads = 1): FdBudgetInfo {
  ensureFdBudget();
  return native.fdBudgetReserve(deviceReserve(numQueues, threads));
}

/** Returns a removed device's reserve to the budget (the inverse of reserveForDevice). */
export function releaseForDevice(numQueues: number, threads = 1): FdBudgetInfo {
  return native.fdBudgetRelease(deviceReserve(numQueues, threads));
}

/**
 * Keeps n more fds for memory regions past MEM_REGIONS_RESERVED (they have arrived with the
 * front-end's message: the fds are ours already, and must not be counted as free share
 * handles). They come from the common pool only, never from an fs device's reserve, and the
 * reserves are not shrunk by them. False, taking nothing, when the pool has fewer than n free
 * (checked and taken in one step, in native code).
 */
export function takeMemoryRegionFds(n: number): boolean {
  ensureFdBudget();
  return native.fdBudgetTakePool(n);
}

/** Gives back what takeMemoryRegionFds kept (regions removed, table replaced, connection gone). */
export function giveMemoryRegionFds(n: number): void {
  if (n > 0) native.fdBudgetGivePool(n);
}

/** This thread's share opened: it holds a reserve of the budget until leaveFdBudget (see the top). */
export function joinFdBudget(maxHandles: number): void {
  ensureFdBudget();
  native.fsBudgetJoin(maxHandles);
}

/** A share that joined closed: with the thread's last one its reserve goes back to the others. */
export function leaveFdBudget(): void {
  native.fsBudgetLeave();
}

/** What this thread holds of the budget, its reserve, and how many more fds it may take now. */
export function fdBudgetAccount(): FdBudgetAccount {
  return native.fsBudgetAccount();
}

export function fdBudgetInfo(): FdBudgetInfo {
  return native.fdBudgetInfo();
}

/** One line for the log: what the budget is and where it comes from. */
export function describeFdBudget(b: FdBudgetInfo): string {
  const raised = b.limitBefore !== b.limit ? `, raised from ${b.limitBefore}` : '';
  // The fair share (see the top, computed by the native side): what each device with a share keeps for itself now.
  const fair = b.accounts > 0 ? `; each of the ${b.accounts} device(s) with a share keeps a reserve of about ${b.fairReserve}` : '';
  return `fd budget: ${b.budget} share handles for all devices (RLIMIT_NOFILE ${b.limit}${raised}; ${b.reserve} kept for the host's own fds${fair})`;
}
