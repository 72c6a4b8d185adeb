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
//    (MAX_WAITING_CONNECTIONS), every memory region a front-end may send (GET_MAX_MEM_SLOTS
//    answers 509, one memfd each; every queue thread maps the same fds), kick, call and err
//    fds for each queue, and each worker thread's own (its loop's epoll and eventfds, the
//    back-end channel, the dirty-log and device-state fds, io_uring, a storage backing: 16
//    covers them with room).
// With RLIMIT_NOFILE at 20,000 and an rng and an fs device that leaves about 18,800 share
// handles. When the budget is spent the share answers ENFILE (the guest sees "too many open
// files in system"), never EMFILE somewhere else.
import { native } from '../native/index.ts';
import type { FdBudgetInfo } from '../native/fs-api.ts';
import { MAX_MEM_SLOTS } from '../protocol/constants.ts';

export type { FdBudgetInfo } from '../native/fs-api.ts';

export const RESERVE_BASE = 128;
/** Accepted connections a busy device keeps waiting for it (host/server/listener.ts). */
export const MAX_WAITING_CONNECTIONS = 4;
const PER_DEVICE_FIXED = 1 + 1 + MAX_WAITING_CONNECTIONS;
const PER_WORKER_THREAD = 16;

/** Fds one device (its worker threads and its front-end) may need besides share handles. */
export function deviceReserve(numQueues: number, threads = 1): number {
  return PER_DEVICE_FIXED + PER_WORKER_THREAD * threads + MAX_MEM_SLOTS + 3 * numQueues;
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

export function fdBudgetInfo(): FdBudgetInfo {
  return native.fdBudgetInfo();
}

/** One line for the log: what the budget is and where it comes from. */
export function describeFdBudget(b: FdBudgetInfo): string {
  const raised = b.limitBefore !== b.limit ? `, raised from ${b.limitBefore}` : '';
  return `fd budget: ${b.budget} share handles for all devices (RLIMIT_NOFILE ${b.limit}${raised}; ${b.reserve} kept for the host's own fds)`;
}
