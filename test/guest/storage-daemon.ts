// Runs qemu-storage-daemon as a reference vhost-user-blk back-end, so the
// guest harness can be checked against a back-end that is known to work.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { track } from './reaper.ts';

export interface StorageDaemon {
  socketPath: string;
  /** The daemon's process id (e.g. to read its CPU time from /proc). */
  pid: number;
  /** SIGTERM, then SIGKILL after 5 s; resolves once the process is gone. */
  stop(): Promise<void>;
  stderr(): string;
}

export interface StorageDaemonOptions {
  /** Raw image file served as the disk. */
  image: string;
  socketPath: string;
  writable?: boolean;
  binary?: string;
  /** How long to wait for the socket to appear. */
  timeoutMs?: number;
}

/** Starts the export and resolves once its socket exists (QEMU without reconnect=1 needs it to). */
export async function startStorageDaemon(opts: StorageDaemonOptions): Promise<StorageDaemon> {
  const args = [
    '--blockdev', `driver=file,node-name=disk0,filename=${opts.image}`,
    '--export',
    `type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=${opts.socketPath},writable=${opts.writable === false ? 'off' : 'on'}`,
  ];
  const d = await runStorageDaemon(args, {
    binary: opts.binary,
    ready: () => existsSync(opts.socketPath),
    notReady: `did not create ${opts.socketPath}`,
    timeoutMs: opts.timeoutMs,
  });
  return { socketPath: opts.socketPath, ...d };
}

/** A qemu-storage-daemon process, tracked by the reaper, with its stderr kept. */
export interface StorageDaemonProcess {
  pid: number;
  /** SIGTERM (the daemon unmounts a FUSE export on the way out), then SIGKILL after 5 s; resolves once the process is gone. */
  stop(): Promise<void>;
  stderr(): string;
}

/**
 * Runs qemu-storage-daemon with `args` and resolves once `ready()` holds (polled), or stops it
 * and throws with its stderr when it exits first or `timeoutMs` (default 10 s) passes.
 */
export async function runStorageDaemon(
  args: string[],
  opts: { binary?: string; ready: () => boolean; notReady: string; timeoutMs?: number },
): Promise<StorageDaemonProcess> {
  const child = spawn(opts.binary ?? 'qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  track(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  let exited = false;
  const gone = new Promise<void>((resolve) => {
    child.once('close', () => {
      exited = true;
      resolve();
    });
    child.once('error', (err) => {
      stderr += `spawn failed: ${err.message}\n`;
      exited = true;
      resolve();
    });
  });
  const stop = async (): Promise<void> => {
    if (exited) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
  };

  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  while (!opts.ready()) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(`qemu-storage-daemon ${opts.notReady}: ${stderr.trim() || '(no stderr)'}`);
    }
    await sleep(10);
  }
  return { pid: child.pid!, stop, stderr: () => stderr };
}
