// Framing of a host handover's message (format version 2, takeover.ts): a record of any size and
// any number of fds over one connected Unix stream socket.
//
//   "VHWH" u32 length (LE) | the record (JSON, `length` bytes, no fds) |
//   one 1-byte message per batch of up to FD_BATCH fds, the fds attached to that byte
//
// The receiver reads exactly as many bytes as the frame it is in has left, never more: the
// kernel attaches SCM_RIGHTS fds to the bytes they were sent with, so reading each batch's one
// byte on its own keeps each batch's fds with it, and a record larger than a socket buffer
// arrives in pieces without fds. A session with 509 memory regions sends about 530 fds: three
// batches (SCM_MAX_FD is 253 per message; the addon's sendMsg/recvMsg take as many).

import { native } from '../native/index.ts';
import { errorText } from '../log/logger.ts';

export const FRAME_MAGIC = Buffer.from('VHWH', 'ascii');
export const PREFIX_BYTES = 8;
/** Fds per SCM_RIGHTS message (the kernel's SCM_MAX_FD is 253). */
export const FD_BATCH = 250;
/** Bounds for a received record and its fds: 509 regions and 1024 rings' worth, with room. */
export const MAX_RECORD_BYTES = 1 << 20;
export const MAX_FDS_TOTAL = 4096;

/** Writes `bytes` whole to the non-blocking socket `fd`, `fds` on its first byte, waiting while it is full. */
export async function sendAll(fd: number, bytes: Uint8Array, fds: number[] = [], deadlineMs = 10_000): Promise<void> {
  let off = 0;
  let pending = fds;
  const until = Date.now() + deadlineMs;
  while (off < bytes.length) {
    const n = native.sendMsg(fd, bytes.subarray(off), pending);
    if (n > 0) {
      off += n;
      pending = [];
      continue;
    }
    if (Date.now() > until) throw new Error(`the peer did not read the handover message within ${deadlineMs / 1000} s`);
    await ready(fd, 'w', until - Date.now());
  }
}

/** Resolves once `fd` is ready for `events`, or after `ms` (the caller looks at the fd again either way). */
function ready(fd: number, events: 'r' | 'w', ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      w.close();
      resolve();
    }, Math.max(1, ms));
    const w = native.watch(fd, events, () => {
      clearTimeout(timer);
      w.close();
      resolve();
    });
  });
}

/** Sends a version-2 handover message: the record, then `fds` in batches. */
export async function sendFramed(fd: number, record: unknown, fds: number[]): Promise<void> {
  const json = Buffer.from(JSON.stringify(record));
  const prefix = Buffer.alloc(PREFIX_BYTES);
  FRAME_MAGIC.copy(prefix, 0);
  prefix.writeUInt32LE(json.length, 4);
  await sendAll(fd, Buffer.concat([prefix, json]));
  for (let i = 0; i < fds.length; i += FD_BATCH) await sendAll(fd, Buffer.from('F'), fds.slice(i, i + FD_BATCH));
}

/**
 * Reads exact byte counts from a non-blocking socket, collecting the fds that come with them.
 * Every fd received is the reader's until taken (take()); close() closes the rest.
 */
export class FdReader {
  private readonly got: number[] = [];

  constructor(
    readonly fd: number,
    private readonly deadline: number,
  ) {}

  /** Fds received so far, handed to the caller (no longer closed by close()). */
  take(): number[] {
    return this.got.splice(0);
  }

  get fdCount(): number {
    return this.got.length;
  }

  close(): void {
    for (const f of this.got.splice(0)) native.close(f);
  }

  /** Exactly `n` bytes (fewer only at EOF, which throws), accepting up to `maxFds` new fds with them. */
  read(n: number, maxFds: number, what: string): Promise<Buffer> {
    const buf = Buffer.alloc(n);
    let have = 0;
    const start = this.got.length;
    return new Promise((resolve, reject) => {
      let w: { close(): void } | null = null;
      const timer = setTimeout(() => done(new Error(`no ${what} within ${Math.round((this.deadline - Date.now()) / 1000 + 0.5)} s`)), Math.max(1, this.deadline - Date.now()));
      const done = (e: Error | null) => {
        clearTimeout(timer);
        w?.close();
        if (e) reject(e);
        else resolve(buf);
      };
      const step = (): boolean => {
        while (have < n) {
          let r;
          try {
            r = native.recvMsg(this.fd, buf.subarray(have), Math.min(253, Math.max(0, maxFds - (this.got.length - start))));
          } catch (e) {
            done(new Error(`reading the ${what}: ${errorText(e)}`));
            return true;
          }
          if (r === null) return false;
          this.got.push(...r.fds);
          if (r.fdsTruncated || this.got.length - start > maxFds) {
            done(new Error(`more fds came with the ${what} than the message may carry (${maxFds})`));
            return true;
          }
          if (r.bytes === 0) {
            done(new Error(`the old host closed the connection in the middle of the ${what} (${have} of ${n} bytes)`));
            return true;
          }
          have += r.bytes;
        }
        done(null);
        return true;
      };
      if (step()) return;
      w = native.watch(this.fd, 'r', () => {
        step();
      });
    });
  }
}

/**
 * Short text lines both ways on the handover socket ("session", "ready", "go", "serving", or a
 * failure's reason), on the same non-blocking fd the frames use. Reads only while next() waits
 * (one watcher on the fd at a time: a frame is never sent while a line is awaited), and only
 * when the peer sends nothing else until it gets an answer, so reading ahead loses nothing.
 * close() closes the fd.
 */
export class LineChannel {
  private buf = '';
  private eof = false;
  private closed = false;
  /** Whether the last next() ended at its deadline (its answer then is the timeout's text). */
  timedOut = false;

  constructor(readonly fd: number) {}

  /** The next line (without its newline, at most 1000 characters), null at EOF, or a timeout's text. */
  async next(deadlineMs: number): Promise<string | null> {
    const until = Date.now() + deadlineMs;
    this.timedOut = false;
    for (;;) {
      const nl = this.buf.indexOf('\n');
      if (nl >= 0) {
        const line = this.buf.slice(0, nl).slice(0, 1000);
        this.buf = this.buf.slice(nl + 1);
        return line;
      }
      if (this.buf.length > 4096) return 'an answer line longer than 4 KiB';
      if (this.eof || this.closed) return null;
      if (Date.now() >= until) {
        this.timedOut = true;
        return `no answer within ${Math.round(deadlineMs / 1000)} s`;
      }
      await ready(this.fd, 'r', until - Date.now());
      this.readSome();
    }
  }

  private readSome(): void {
    const b = Buffer.alloc(4096);
    for (;;) {
      let r;
      try {
        r = native.recvMsg(this.fd, b, 0);
      } catch {
        this.eof = true; // ECONNRESET and the like: the peer is gone
        return;
      }
      if (r === null) return;
      for (const f of r.fds) native.close(f);
      if (r.bytes === 0) {
        this.eof = true;
        return;
      }
      this.buf += b.subarray(0, r.bytes).toString('utf8');
      if (r.fdsTruncated) return;
    }
  }

  /** Sends a short line (best effort: a peer that went away just misses it). */
  write(s: string): void {
    if (this.closed) return;
    try {
      native.sendMsg(this.fd, Buffer.from(s), []);
    } catch {
      // gone
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.close(this.fd);
  }
}
