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
  while (!existsSync(opts.socketPath)) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(`qemu-storage-daemon did not create ${opts.socketPath}: ${stderr.trim() || '(no stderr)'}`);
    }
    await sleep(10);
  }
  return { socketPath: opts.socketPath, pid: child.pid!, stop, stderr: () => stderr };
}
