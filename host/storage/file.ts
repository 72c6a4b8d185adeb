// A raw image file, opened by the host (O_RDWR, or O_RDONLY for a read-only grant); the
// plugin only ever sees offsets. Synchronous pread/pwrite: they run in the device worker,
// whose whole job is this device, and a request cannot complete before its I/O anyway.
//
// Discard writes zeroes: punching a hole needs fallocate(2), which Node does not expose and
// this module does without native code. Flush is fdatasync(2).
import { closeSync, constants, fdatasyncSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { BackingError, type Backing } from './backing.ts';

const ZEROES = Buffer.alloc(1024 * 1024);

function reason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err?.code) return `${err.code}: ${err.message.replace(/^\w+: /, '')}`;
  return e instanceof Error ? e.message : String(e);
}

export class FileBacking implements Backing {
  readonly size: number;
  private fd: number;
  private scratch = Buffer.alloc(128 * 1024);

  private constructor(fd: number, size: number, readonly readOnly: boolean, readonly describe: string) {
    this.fd = fd;
    this.size = size;
  }

  /** Opens `path`; every way it can fail says which file and why. */
  static open(path: string, readOnly: boolean): FileBacking {
    let fd: number;
    try {
      fd = openSync(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (e) {
      const how = readOnly ? 'reading' : 'reading and writing (give --read-only for a read-only disk)';
      throw new BackingError(`--storage ${path}: cannot open for ${how}: ${reason(e)}`);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new BackingError(`--storage ${path}: not a regular file (only raw image files are supported)`);
      return new FileBacking(fd, st.size, readOnly, path);
    } catch (e) {
      closeSync(fd);
      throw e instanceof BackingError ? e : new BackingError(`--storage ${path}: ${reason(e)}`);
    }
  }

  private fail(op: string, offset: number, len: number, e: unknown): never {
    throw new BackingError(`${this.describe}: ${op} of ${len} bytes at ${offset} failed: ${reason(e)}`);
  }

  read(offset: number, len: number): Uint8Array {
    if (this.scratch.length < len) this.scratch = Buffer.alloc(len);
    const out = this.scratch.subarray(0, len);
    let done = 0;
    try {
      while (done < len) {
        const n = readSync(this.fd, out, done, len - done, offset + done);
        // The file shrank under us (someone else truncated it): not data we can vouch for.
        if (n === 0) throw new Error(`unexpected end of file at ${offset + done}`);
        done += n;
      }
    } catch (e) {
      this.fail('read', offset, len, e);
    }
    return out;
  }

  write(offset: number, data: Uint8Array): void {
    try {
      for (let done = 0; done < data.length; ) {
        done += writeSync(this.fd, data, done, data.length - done, offset + done);
      }
    } catch (e) {
      this.fail('write', offset, data.length, e);
    }
  }

  flush(): void {
    try {
      fdatasyncSync(this.fd);
    } catch (e) {
      this.fail('flush', 0, 0, e);
    }
  }

  discard(offset: number, len: number): void {
    this.writeZeroes(offset, len);
  }

  writeZeroes(offset: number, len: number): void {
    for (let done = 0; done < len; ) {
      const n = Math.min(ZEROES.length, len - done);
      this.write(offset + done, ZEROES.subarray(0, n));
      done += n;
    }
  }

  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
  }
}
