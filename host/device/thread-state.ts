// What Linux says about one thread of this process, for the device watchdog and the CPU-share
// governor: whether it is runnable (state R: computing or waiting for a CPU, not blocked in a
// system call), the CPU time it used, and how long it waited for a CPU. On a busy machine a
// thread can wait for a CPU far longer than a call's deadline.

import { readFileSync, readlinkSync } from 'node:fs';
import { native } from '../native/index.ts';

/** The calling thread's Linux thread id (/proc/thread-self names it: "<pid>/task/<tid>"). */
export function ownThreadId(): number {
  const link = readlinkSync('/proc/thread-self');
  const tid = Number(link.slice(link.lastIndexOf('/') + 1));
  if (!Number.isInteger(tid) || tid <= 0) throw new Error(`/proc/thread-self links to '${link}', which names no thread id`);
  return tid;
}

/**
 * Whether thread `tid` of this process is runnable now (state R in /proc/self/task/<tid>/stat).
 * false when it sleeps, is stopped, or is gone.
 */
export function threadRunnable(tid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
  } catch {
    return false; // the thread is gone: nothing is running there
  }
  // "<tid> (<comm>) <state> ...": comm may hold spaces and parentheses, the last ')' ends it.
  return stat.charAt(stat.lastIndexOf(')') + 2) === 'R';
}

/**
 * CPU time thread `tid` of this process has used over its life, in ms (on a CPU, in its own code
 * or in the kernel for it); null when the thread is gone. This is what a call deadline measures.
 * It is the thread's CPU clock (clock_gettime), not sum_exec_runtime from schedstat: for a thread
 * on a CPU right now the kernel brings the clock up to date before answering, while schedstat
 * is as of the thread's last scheduler tick or switch (up to 4 ms behind at HZ 250, measured
 * here; on a nohz_full CPU, where the tick stops, up to a second).
 */
export function threadCpuMs(tid: number): number | null {
  const ns = native.threadCpuNs(tid);
  return ns < 0 ? null : ns / 1e6;
}

/**
 * Milliseconds thread `tid` of this process has spent runnable but waiting for a CPU, over its
 * life; null when the kernel does not say (no schedstat, or the thread is gone). The kernel adds
 * a wait only when it ends (the thread gets a CPU): a wait in progress is not in it yet, so
 * this is exact only for a thread that is not runnable now.
 */
export function threadCpuWaitMs(tid: number): number | null {
  return schedstat(tid)?.waitMs ?? null;
}

/**
 * What thread `tid` of this process has spent over its life, in ms: on a CPU, and runnable but
 * waiting for one (the first two fields of /proc/self/task/<tid>/schedstat); null when the
 * kernel does not say. Their sum over a span is how much CPU the thread wanted in it, which the
 * CPU-share governor compares with the device's share (host/limits/cpu-share.ts). Both are as of
 * the thread's last tick or switch: good for a one-second window, not for a deadline.
 */
export function threadCpuTimes(tid: number): { runMs: number; waitMs: number } | null {
  return schedstat(tid);
}

function schedstat(tid: number): { runMs: number; waitMs: number } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1');
  } catch {
    return null;
  }
  const [run, wait] = text.split(' ').map(Number);
  return Number.isFinite(run) && Number.isFinite(wait) && run >= 0 && wait >= 0 ? { runMs: run / 1e6, waitMs: wait / 1e6 } : null;
}
