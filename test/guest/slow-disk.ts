// A disk image whose writes are slow, as a file: qemu-storage-daemon exports the image through
// a throttle filter (a write IOPS limit) as a FUSE file, which the host is then given as its
// --storage. A host killed while it works through a batch of guest writes is then killed with
// requests in flight (a plain file on this machine answers too fast for that to happen).

import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { track } from './reaper.ts';

export interface SlowDisk {
  /** The FUSE file to use as the image (reads and writes go to `image`, writes throttled). */
  path: string;
  stop(): Promise<void>;
  stderr(): string;
}

const mounted = (path: string) => readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === path);

/** `mountpoint` is created (an empty regular file) and mounted over; unmounted by stop(). */
export async function startSlowDisk(opts: { image: string; mountpoint: string; writeIops: number; binary?: string }): Promise<SlowDisk> {
  writeFileSync(opts.mountpoint, '');
  const args = [
    '--object', `throttle-group,id=tg0,x-iops-write=${opts.writeIops}`,
    '--blockdev', `driver=file,node-name=file0,filename=${opts.image}`,
    '--blockdev', 'driver=throttle,node-name=slow0,throttle-group=tg0,file=file0',
    '--export', `type=fuse,id=e0,node-name=slow0,mountpoint=${opts.mountpoint},writable=on`,
  ];
  const child = spawn(opts.binary ?? 'qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  track(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  let exited = false;
  const gone = new Promise<void>((resolve) => {
    child.once('close', () => ((exited = true), resolve()));
    child.once('error', (err) => ((stderr += `spawn failed: ${err.message}\n`), (exited = true), resolve()));
  });
  const stop = async (): Promise<void> => {
    if (exited) return;
    child.kill('SIGTERM'); // the daemon unmounts its export on the way out
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
  };
  const deadline = Date.now() + 10_000;
  while (!mounted(opts.mountpoint)) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(`qemu-storage-daemon did not mount its FUSE export at ${opts.mountpoint}: ${stderr.trim() || '(no stderr)'}`);
    }
    await sleep(20);
  }
  return { path: opts.mountpoint, stop, stderr: () => stderr };
}
