// A disk image whose writes are slow, as a file: qemu-storage-daemon exports the image through
// a throttle filter (a write IOPS limit) as a FUSE file, which the host is then given as its
// --storage. A host killed while it works through a batch of guest writes is then killed with
// requests in flight (a plain file on this machine answers too fast for that to happen).

import { readFileSync, writeFileSync } from 'node:fs';
import { runStorageDaemon } from './storage-daemon.ts';

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
  const d = await runStorageDaemon(args, {
    binary: opts.binary,
    ready: () => mounted(opts.mountpoint),
    notReady: `did not mount its FUSE export at ${opts.mountpoint}`,
  });
  return { path: opts.mountpoint, stop: d.stop, stderr: d.stderr };
}
