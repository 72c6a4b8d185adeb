// A daemon's socket file exists from bind(); connects are refused until it calls listen(). Tests
// that start a peer (qemu-storage-daemon) wait for a connect to succeed, not for the file.
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../../host/native/index.ts';

/** Connects to `path` once it accepts connections; throws after `timeoutMs` or when `gaveUp()` says the daemon died. */
export async function connectWhenListening(path: string, timeoutMs = 15_000, gaveUp: () => boolean = () => false): Promise<number> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return native.connectUnix(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ECONNREFUSED' && code !== 'ENOENT') throw e;
      if (gaveUp() || Date.now() > end) throw new Error(`${path}: nothing listening after ${timeoutMs} ms (${code})`);
    }
    await sleep(10);
  }
}

/** Waits until `path` accepts connections, without keeping one. */
export async function waitForListening(path: string, timeoutMs = 15_000, gaveUp?: () => boolean): Promise<void> {
  native.close(await connectWhenListening(path, timeoutMs, gaveUp));
}
