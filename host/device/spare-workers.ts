// Device worker threads booted before a device asks for one (the daemon's device-add, and a
// device restarted after a failure). Most of a device's start is its thread: a V8 isolate and
// the worker bundle, 50-170 ms on this 2-core machine under load, against 25-45 ms to build the
// device in it. A spare has done the first part; the device that takes it sends its init as the
// first message (worker.ts) and waits for the second part only. Off unless enabled (the
// single-device command line has no use for an idle thread's ~11 MiB); the daemon keeps a few
// once its configured devices have started.

import { Worker } from 'node:worker_threads';
import { createLogger, errorText } from '../log/logger.ts';

const log = createLogger('spare-workers');

let wanted = 0;
const spares: Worker[] = [];
let makeWorker: ((workerData: unknown) => Worker) | null = null;

/** How a worker is made (worker-thread.ts: the bundle's file, or the TypeScript entry under tsx). */
export function setWorkerFactory(make: (workerData: unknown) => Worker): void {
  makeWorker = make;
}

/** Keeps `n` spare workers from now on (0: none; those kept are ended). */
export function keepSpareWorkers(n: number): void {
  wanted = n;
  while (spares.length > wanted) void spares.pop()!.terminate();
  refill();
}

function refill(): void {
  while (makeWorker && spares.length < wanted) {
    const w = makeWorker(null);
    // A spare must not keep the process alive. One that dies while it waits is a worker that
    // cannot boot: keeping spares would only make more of them, so they are turned off (a
    // device then starts its own worker, which reports why it fails).
    w.unref();
    let why = '';
    w.on('error', (e) => (why = `: ${errorText(e)}`));
    w.once('exit', (code) => {
      const i = spares.indexOf(w);
      if (i < 0) return;
      spares.splice(i, 1);
      if (wanted === 0) return;
      log.warn(`a spare device worker exited before any device took it (code ${code}${why}); no more spares are kept`);
      keepSpareWorkers(0);
    });
    spares.push(w);
  }
}

/** A spare worker, or null when none is kept; a new spare starts booting in its place. */
export function takeSpareWorker(): Worker | null {
  const w = spares.shift() ?? null;
  if (w) {
    w.ref();
    w.removeAllListeners('exit');
    w.removeAllListeners('error');
    // Booting its replacement waits for this start to be under way: both want a CPU.
    setImmediate(refill);
  }
  return w;
}

/** Ends every spare (shutdown). */
export async function closeSpareWorkers(): Promise<void> {
  wanted = 0;
  await Promise.all(spares.splice(0).map((w) => w.terminate()));
}
