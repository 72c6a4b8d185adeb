// SIGINT/SIGTERM: a clean shutdown when every device lets go in time, and a forced one when a
// device does not. The promise is that a signal ends the host within 2 s whatever any plugin
// or front-end does. A device worker can be stuck where nothing reaches it: terminate() stops
// JavaScript and WebAssembly, not a thread blocked in a system call (open() of a FIFO, a write
// to a blocking fd), and process.exit() itself waits for every worker thread to end. So after
// a grace period the host removes its sockets (already done when the listeners closed), names
// the devices that would not stop, and leaves with _exit(), which ends every thread at once.

import { native } from '../native/index.ts';
import type { Host } from './index.ts';
import type { Logger } from '../log/logger.ts';
import { errorText } from '../log/logger.ts';

/** Time the clean path gets before the forced exit (the promise is 2 s, signal to exit). */
export const SHUTDOWN_GRACE_MS = 1500;

/** Exit status when the shutdown had to be forced. */
export const FORCED_EXIT_CODE = 1;

/** `beforeClose` runs first on a signal (the daemon closes its management socket there). */
export function stopOnSignals(host: Host, log: Logger, graceMs = SHUTDOWN_GRACE_MS, beforeClose: () => void | Promise<void> = () => {}): void {
  let stopping = false;
  const force = (why: string): never => {
    const stuck = host.devicesWithLiveThreads();
    log.error(
      `${why}; forcing the exit` +
        (stuck.length > 0 ? `: the worker of device(s) ${stuck.join(', ')} would not stop (blocked in a system call?)` : ''),
    );
    return native.exitNow(FORCED_EXIT_CODE);
  };
  const stop = (signal: string) => {
    if (stopping) {
      force(`${signal} again during shutdown`);
      return;
    }
    stopping = true;
    log.info(`${signal}: shutting down`);
    // Not unref'd: this timer must fire even if nothing else is left to run.
    const timer = setTimeout(() => force(`shutdown did not finish within ${graceMs} ms`), graceMs);
    // What else the process runs (the daemon's spare worker threads, its sockets) is ended
    // beside the devices and awaited: process.exit() would wait for a thread still booting with
    // no timer left to force it.
    let others: Promise<void>;
    try {
      others = Promise.resolve(beforeClose()).catch((e: unknown) => log.error(`shutdown: ${errorText(e)}`));
    } catch (e) {
      log.error(`shutdown: ${errorText(e)}`);
      others = Promise.resolve();
    }
    Promise.all([host.close(), others]).then(
      () => {
        clearTimeout(timer);
        // process.exit() would wait for a worker thread that never ends: only take it when none is left.
        if (host.devicesWithLiveThreads().length > 0) force('shut down, but a device worker is still alive');
        process.exit(0);
      },
      (e) => {
        clearTimeout(timer);
        log.error(`shutdown failed: ${errorText(e)}`);
        if (host.devicesWithLiveThreads().length > 0) force('shutdown failed and a device worker is still alive');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}
