// What Linux says about one thread of this process, for the device watchdog: a thread that is
// runnable (state R) is computing or waiting for a CPU, not blocked in a system call. On a busy
// machine a thread can wait for a CPU far longer than a notification write's deadline; only a
// thread that is asleep in the write is stuck.

import { readFileSync, readlinkSync } from 'node:fs';

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
 * Milliseconds thread `tid` of this process has spent runnable but waiting for a CPU, over its
 * life (the second field of /proc/self/task/<tid>/schedstat, in ns); null when the kernel does
 * not say (no schedstat, or the thread is gone). The watchdog subtracts what a call waited
 * from its wall-clock time: a deadline is what the device may spend, not what a loaded
 * machine keeps it from running.
 */
export function threadCpuWaitMs(tid: number): number | null {
  let text: string;
  try {
    text = readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1');
  } catch {
    return null;
  }
  const waitNs = Number(text.split(' ')[1]);
  return Number.isFinite(waitNs) && waitNs >= 0 ? waitNs / 1e6 : null;
}

/**
 * What thread `tid` of this process has spent over its life, in ms: on a CPU, and runnable but
 * waiting for one (the first two fields of /proc/self/task/<tid>/schedstat); null when the
 * kernel does not say. Their sum over a span is how much CPU the thread wanted in it, which the
 * CPU-share governor compares with the device's share (host/limits/cpu-share.ts).
 */
export function threadCpuTimes(tid: number): { runMs: number; waitMs: number } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1');
  } catch {
    return null;
  }
  const [run, wait] = text.split(' ').map(Number);
  return Number.isFinite(run) && Number.isFinite(wait) && run >= 0 && wait >= 0 ? { runMs: run / 1e6, waitMs: wait / 1e6 } : null;
}
