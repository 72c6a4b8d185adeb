// An open file of a virtio-fs share as an IoBacking (host/io/backing-table.ts): what the
// executors run FUSE_READ's backing-read pieces and FUSE_WRITE's transfers against. The fd
// belongs to the share (host/fs/share.ts); host/fs/file-backings.ts takes the entry out of the
// table before the share closes it.
import { BackingError } from '../storage/backing.ts';
import type { IoBacking } from '../io/backing-table.ts';
import { native } from '../native/index.ts';
import { constants as os } from 'node:os';

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

function fail(describe: string, op: string, len: number, offset: number, errno: number): never {
  const name = Object.entries(os.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
  throw new BackingError(`${describe}: ${op} of ${len} bytes at ${offset} failed: ${name}`, { details: { errno } });
}

export function fileIoBacking(fd: number, readOnly: boolean, describe: string): IoBacking {
  const stat = new Float64Array(16);
  return {
    describe,
    readOnly,
    growable: true,
    get size(): number {
      const r = native.fsStat(fd, stat);
      return r < 0 ? 0 : stat[7];
    },
    readInto(offset, into) {
      let at = offset;
      let total = 0;
      let eof = false;
      for (const v of into) {
        if (eof) {
          v.fill(0);
          continue;
        }
        let done = 0;
        while (done < v.length) {
          const r = native.fsPread(fd, v.subarray(done), at);
          if (r < 0) fail(describe, 'read', v.length - done, at, -r);
          if (r === 0) break;
          done += r;
          at += r;
        }
        total += done;
        if (done < v.length) {
          // End of file: the rest reads as zeroes, and the used length stops here.
          v.fill(0, done);
          eof = true;
        }
      }
      return total;
    },
    writeFrom(offset, from) {
      let at = offset;
      for (const v of from) {
        let done = 0;
        while (done < v.length) {
          const r = native.fsPwrite(fd, v.subarray(done), at);
          if (r < 0) fail(describe, 'write', v.length - done, at, -r);
          // A write that moves nothing would loop forever: the WIT calls a short write ENOSPC.
          if (r === 0) fail(describe, 'write', v.length - done, at, os.errno.ENOSPC);
          done += r;
          at += r;
        }
      }
    },
    flush() {
      const r = native.fsFsync(fd, true);
      if (r < 0) fail(describe, 'flush', 0, 0, -r);
    },
    discard(offset, len) {
      const r = native.fsFallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
      if (r < 0) fail(describe, 'discard', len, offset, -r);
    },
    writeZeroes(offset, len) {
      const r = native.fsFallocate(fd, FALLOC_FL_ZERO_RANGE, offset, len);
      if (r < 0) fail(describe, 'write-zeroes', len, offset, -r);
    },
  };
}
