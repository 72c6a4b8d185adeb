// The null test device (null-device.ts) with a lock handoff section, as the fs plugin's share has
// (host/fs/lock-handoff-section.ts), for what a host handover does with it: the section names
// this process's fds 0, 1 and 2 as the descriptions a guest's locks live on, and the old host's
// worker duplicates each of them for the new host (host/fs/lock-carry-wire.ts). On the section's
// second read (the first is the size check before the rings stop, the second is the carry
// itself), the worker thread exits from a microtask: after the duplicates were made and before
// the reply that would hand them to the main thread. (A worker killed there by the watchdog or a
// crash is the case this stands for; nothing in the real fs plugin can be told to die there.)
import nullDevice from './null-device.ts';
import type { DeviceFactory } from '../../host/device/device.ts';
import type { WorkerStateSection } from '../../host/migration/section.ts';
import { SectionId } from '../../host/migration/section.ts';

// host/fs/lock-handoff.ts's id and format, written out here: that module brings the native addon
// with it, which a bundled device module cannot load.
const LOCK_HANDOFF_SECTION_ID = SectionId.HOST_BASE + 1;

function encodeLockHandoff(h: object): Uint8Array {
  const body = Buffer.from(JSON.stringify(h, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)));
  return Buffer.concat([Buffer.from('VFSL', 'latin1'), Buffer.from([1, 1, 0, 0]), body]);
}

const factory: DeviceFactory = (raw) => {
  const dev = nullDevice(raw);
  let reads = 0;
  const bytes = () =>
    encodeLockHandoff({
      pid: process.pid,
      files: [{ id: 1n, inode: '1:1', acc: 2, fd: 0 }],
      owners: [1, 2].map((fd) => ({ fd, inode: '1:1', owner: BigInt(fd), file: 1n, ranges: [{ start: 0n, end: 0n, kind: 1, pid: 1 }], forgot: false })),
      flocked: [1n],
    });
  const section: WorkerStateSection = {
    id: LOCK_HANDOFF_SECTION_ID,
    name: 'fs-locks',
    size: () => bytes().length,
    read(offset, len) {
      if (++reads === 2) queueMicrotask(() => process.exit(1));
      return bytes().subarray(offset, offset + len);
    },
    beginLoad() {
      throw new Error('lock-carry-test takes no locks');
    },
    write() {},
    finish: () => null,
    abort() {},
  };
  return Object.assign(dev, { upgradeSections: () => [section] });
};

export default factory;
