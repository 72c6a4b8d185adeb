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
import { native } from '../native/index.ts';
import type { FdBudgetInfo } from '../native/fs-api.ts';
import { MAX_MEM_TABLE_REGIONS } from '../protocol/constants.ts';

export type { FdBudgetInfo } from '../native/fs-api.ts';

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
 * handles). False, taking nothing, when fewer than n are free. Only the main thread reserves,
 * so check-then-reserve does not race another reserve; a share handle taken in between makes
 * `used` pass the budget by that much, and shares then get ENFILE until it comes back.
 */
export function takeMemoryRegionFds(n: number): boolean {
  const b = ensureFdBudget();
  if (b.budget - b.used < n) return false;
  native.fdBudgetReserve(n);
  return true;
}

/** Gives back what takeMemoryRegionFds kept (regions removed, table replaced, connection gone). */
export function giveMemoryRegionFds(n: number): void {
  if (n > 0) native.fdBudgetRelease(n);
}

export function fdBudgetInfo(): FdBudgetInfo {
  return native.fdBudgetInfo();
}

/** One line for the log: what the budget is and where it comes from. */
export function describeFdBudget(b: FdBudgetInfo): string {
  const raised = b.limitBefore !== b.limit ? `, raised from ${b.limitBefore}` : '';
  return `fd budget: ${b.budget} share handles for all devices (RLIMIT_NOFILE ${b.limit}${raised}; ${b.reserve} kept for the host's own fds)`;
}
