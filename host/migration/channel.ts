// The SET_DEVICE_STATE_FD channel, back-end side: whatever fd the front-end handed over, as a
// byte sink (SAVE) or a byte source (LOAD), without ever blocking the event loop.
//
// - A pipe or a socket is a stream: written to with non-blocking write(2), waiting for POLLOUT on
//   EAGAIN; read to EOF. Closing our end is the end-of-data signal.
// - A regular file (a memfd) is written at offsets from 0 and truncated to the state's length, so
//   a front-end that reads it after CHECK_DEVICE_STATE sees exactly the state; on LOAD it is read
//   from offset 0 up to its size (st_size is the end of data: a file has no writer to wait for).
//
// fd ownership: the channel owns the fd it is given and closes it on end() / abort().

import { native } from '../native/index.ts';
import type { Watcher } from '../native/api.ts';
import type { ByteSink } from './container.ts';
import type { PipeSource } from './section.ts';
import { crc32c } from './checksum.ts';

/**
 * Bytes read from a pipe into their place and checksummed at a time (readPipeCrc): a piece is
 * still in this core's cache (1 MiB of L2 here, 32 MiB of L3) when the checksum reads it, so the
 * bytes are fetched from memory once, by the copy out of the pipe. One piece is a whole state
 * pipe (STATE_PIPE_SIZE): a writer blocked on the full pipe is woken once per piece and refills
 * it while this side checksums. Measured against 256 KiB pieces (docs/BENCHMARKS.md, 2026-12-07
 * direct-pipe): 4x fewer reads and writer wake-ups, 10-15 ms less CPU per 256 MiB on each side.
 */
export const READ_PIECE = 1 << 20;

/**
 * Bytes a transfer moves (and checksums) on the main thread in a row before it lets the event
 * loop turn: with both hosts working at once the pipe is rarely empty or full for long, and
 * without a turn a 256 MiB disk would hold the main thread (the vhost-user messages and the
 * daemon's other devices) for its whole transfer. 8 MiB is 1-2 ms of work here.
 */
export const TURN_BYTES = 8 << 20;

/** Lets the event loop turn once (I/O callbacks run), then resumes. */
export const loopTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Exactly dst.length bytes from the non-blocking pipe `fd` into dst, each read checksummed
 * (CRC-32C) right after it landed. `wait` waits for the pipe to be readable; `ended(got)` is
 * the error for an end of stream after `got` bytes. Returns the CRC continued from `crc`.
 * An empty dst (an empty section or run) is a no-op returning `crc`: the pipe is not read.
 * Every TURN_BYTES it lets the event loop turn through `turn`, which must reject once the
 * channel was closed meanwhile: a closed fd's number can be taken by the next accept or
 * SCM_RIGHTS fd during that turn, and reading it would take another connection's bytes.
 */
export async function readPipeCrc(
  fd: number,
  dst: Uint8Array,
  crc: number,
  wait: () => Promise<void>,
  ended: (got: number) => Error,
  turn: () => Promise<void>,
  turnBytes = TURN_BYTES,
): Promise<number> {
  // Not even a read(2) of 0 bytes: it returns 0, which is how the stream's end reads.
  if (dst.length === 0) return crc;
  let run = 0;
  for (let got = 0; got < dst.length; ) {
    const piece = dst.subarray(got, Math.min(dst.length, got + READ_PIECE));
    const k = native.read(fd, piece);
    if (k === 0) throw ended(got);
    if (k < 0) {
      run = 0;
      await wait();
      continue;
    }
    crc = crc32c(piece.subarray(0, k), crc);
    got += k;
    run += k;
    if (run >= turnBytes) {
      run = 0;
      await turn();
    }
  }
  return crc;
}

/** A write to a state pipe whose reader is gone. */
const READER_GONE = 'the reader closed its end of the state channel (EPIPE): the front-end, or over a direct pipe the destination host';

export type ChannelKind = 'pipe' | 'file';

export function channelKind(fd: number): ChannelKind {
  const st = native.fstat(fd);
  if (st.isFifo || st.isSocket) return 'pipe';
  if (st.isFile) return 'file';
  throw new Error('the state fd is neither a pipe, a socket nor a regular file (memfd)');
}

/**
 * Capacity asked for a state pipe (F_SETPIPE_SZ): the default 64 KiB pipe makes a 1 MiB chunk
 * take 16 wake-ups on each side; 1 MiB is the unprivileged maximum (/proc/sys/fs/pipe-max-size).
 * The host's --state-pipe-size and the migrate tool's option of that name override it (0 leaves
 * the pipe alone). Best effort: a refusal (EPERM over the limit) or an addon without
 * setPipeSize leaves the pipe as it is.
 */
export const STATE_PIPE_SIZE = 1 << 20;

export function growPipe(fd: number, bytes = STATE_PIPE_SIZE): number | null {
  if (!(bytes > 0) || typeof native.setPipeSize !== 'function') return null;
  try {
    if (!native.fstat(fd).isFifo) return null;
    return native.setPipeSize(fd, bytes);
  } catch {
    return null;
  }
}

class Closable {
  protected closed = false;
  private closeReason: Error | null = null;
  protected watcher: Watcher | null = null;
  protected waiter: { resolve: () => void; reject: (e: Error) => void } | null = null;

  constructor(readonly fd: number) {}

  /** Waits for readiness on our own loop; rejects if the channel is aborted meanwhile. */
  protected wait(events: 'r' | 'w'): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.closed) {
        reject(this.closedError());
        return;
      }
      this.waiter = { resolve, reject };
      this.watcher = native.watch(this.fd, events, () => {
        this.stopWatching();
        const w = this.waiter;
        this.waiter = null;
        w?.resolve();
      });
    });
  }

  /**
   * One turn of the event loop, then a rejection if the channel was closed meanwhile (its fd
   * number may already be someone else's): use it between reads or writes of the fd.
   */
  protected readonly turn = async (): Promise<void> => {
    await loopTurn();
    if (this.closed) throw this.closedError();
  };

  /** What an operation on the closed channel fails with: the close's reason (an abort's) if it gave one. */
  protected closedError(): Error {
    return this.closeReason ?? new Error('state channel closed');
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  /** Closes the fd (idempotent); a pending wait rejects with `reason`. */
  close(reason: Error | null = null): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.stopWatching();
    const w = this.waiter;
    this.waiter = null;
    w?.reject(reason ?? new Error('state channel closed'));
    try {
      native.close(this.fd);
    } catch {
      // Already gone: nothing left to release.
    }
  }
}

/** SAVE: the back-end writes. */
export class StateWriter extends Closable implements ByteSink {
  readonly kind: ChannelKind;
  private offset = 0;

  constructor(fd: number, pipeBytes = STATE_PIPE_SIZE) {
    super(fd);
    this.kind = channelKind(fd);
    if (this.kind === 'pipe') {
      native.setNonBlocking(fd, true);
      growPipe(fd, pipeBytes);
    }
  }

  get written(): number {
    return this.offset;
  }

  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) {
      if (this.closed) throw this.closedError();
      const part = done === 0 ? bytes : bytes.subarray(done);
      let n: number;
      try {
        n = this.kind === 'file' ? native.pwrite(this.fd, part, this.offset) : native.write(this.fd, part);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EPIPE') throw new Error(READER_GONE);
        throw e;
      }
      if (n < 0) {
        await this.wait('w');
        continue;
      }
      done += n;
      this.offset += n;
    }
  }

  /**
   * A pipe: `len` bytes of the file `from` at `offset` go into it by splice(2), without passing
   * through this process (a memory disk's memfd). False when this channel is not a pipe.
   * `aside(spliced, full)`, when given, does a bounded piece of other work before each splice
   * (full false) and once each time the pipe is found full (full true), after which we wait for
   * the reader through the event loop: its wake-up comes once the reader's read has released the
   * pipe. Splicing again at once instead would spin on the pipe's lock for as long as the
   * reader's copy holds it (measured: as much CPU as the checksum, docs/BENCHMARKS.md
   * 2026-12-07 "direct15"). The loop turns at least every TURN_BYTES.
   */
  async spliceFrom(from: number, offset: number, len: number, aside?: (spliced: number, full: boolean) => void): Promise<boolean> {
    if (this.kind !== 'pipe') return false;
    let run = 0;
    for (let done = 0; done < len; ) {
      if (this.closed) throw this.closedError();
      aside?.(done, false);
      let n: number;
      try {
        n = native.splice(from, offset + done, this.fd, -1, len - done);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EPIPE') throw new Error(READER_GONE);
        throw e;
      }
      if (n < 0) {
        aside?.(done, true);
        run = 0;
        await this.wait('w');
      } else if (n === 0) throw new Error(`the file spliced into the state pipe ended at ${offset + done}`);
      else {
        done += n;
        this.offset += n;
        run += n;
        if (run >= TURN_BYTES) {
          run = 0;
          await this.turn();
        }
      }
    }
    return true;
  }

  /**
   * A file: its pages for the whole state are made in one fallocate(2) before the first write
   * (tmpfs, a memfd: otherwise each 4 KiB page is allocated as a write first reaches it).
   * Best effort: a file system without fallocate (EOPNOTSUPP) is written as before, and a real
   * shortage of space shows in the writes themselves.
   */
  expect(totalLength: number): void {
    if (this.kind !== 'file' || this.closed || totalLength <= this.offset) return;
    if (native.fsFallocate(this.fd, 0, this.offset, totalLength - this.offset) === 0) this.allocated = totalLength;
  }

  /** A file: how far expect() made it exist (reserve() then need not, and must not cut it). */
  private allocated = 0;

  /** A file: the next len bytes are written by someone else (a section copying itself in); makes them exist. */
  reserve(len: number): { fd: number; offset: number } | null {
    if (this.kind !== 'file' || this.closed) return null;
    const at = this.offset;
    if (this.allocated < at + len) native.ftruncate(this.fd, at + len);
    this.offset += len;
    return { fd: this.fd, offset: at };
  }

  /** End of data: a file is cut to what was written; then our end closes. */
  end(): void {
    if (this.closed) return;
    if (this.kind === 'file') native.ftruncate(this.fd, this.offset);
    this.close();
  }
}

/** LOAD: the back-end reads. */
export class StateReader extends Closable implements PipeSource {
  readonly kind: ChannelKind;
  private offset = 0;
  private readonly size: number;
  private slab = Buffer.alloc(0);
  private slabUsed = 0;

  /** `turnBytes`: see readPipeCrc (smaller in tests, to reach a turn with a pipe of normal size). */
  constructor(fd: number, private readonly chunkSize = 1 << 20, pipeBytes = STATE_PIPE_SIZE, private readonly turnBytes = TURN_BYTES) {
    super(fd);
    this.kind = channelKind(fd);
    this.size = this.kind === 'file' ? native.fstat(fd).size : -1;
    if (this.kind === 'pipe') {
      native.setNonBlocking(fd, true);
      growPipe(fd, pipeBytes);
    }
  }

  /** A file: where the next read starts. */
  get position(): number {
    return this.offset;
  }

  /** A file: bytes left to its end (as it was when the transfer began). */
  get remaining(): number {
    return this.kind === 'file' ? Math.max(0, this.size - this.offset) : 0;
  }

  /** A file: the next n bytes were consumed by someone else (a section copying itself out). */
  skip(n: number): void {
    if (this.kind !== 'file') throw new Error('a stream cannot be skipped');
    this.offset += n;
  }

  /**
   * A pipe: the next `len` bytes go by splice(2) into the file `out` at outOffset (a memory
   * disk's memfd), without passing through this process. Nothing may have been read past them.
   */
  async spliceTo(out: number, outOffset: number, len: number): Promise<void> {
    if (this.kind !== 'pipe') throw new Error('spliceTo: the state channel is not a pipe');
    for (let done = 0; done < len; ) {
      if (this.closed) throw this.closedError();
      const n = native.splice(this.fd, -1, out, outOffset + done, len - done);
      if (n === 0) throw new Error(`truncated state: the stream ended ${len - done} bytes before the end of a section`);
      if (n < 0) await this.wait('r');
      else {
        done += n;
        this.offset += n;
      }
    }
  }

  /**
   * A pipe: the next dst.length bytes read straight into dst (a memory disk's mapping),
   * checksummed piece by piece as they land (readPipeCrc). Nothing may have been read past them.
   */
  async readCrc(dst: Uint8Array, crc: number): Promise<number> {
    if (this.kind !== 'pipe') throw new Error('readCrc: the state channel is not a pipe');
    if (this.closed) throw this.closedError();
    const c = await readPipeCrc(this.fd, dst, crc, () => this.wait('r'), (got) => new Error(`truncated state: the stream ended ${dst.length - got} bytes before the end of a section`), this.turn, this.turnBytes);
    this.offset += dst.length;
    return c;
  }

  /**
   * Next bytes, or null at end of data. Each result is a fresh buffer the caller owns. A read is
   * at most `max` bytes (at least 1), so a caller can cut reads where its data is cut.
   */
  async read(max = this.chunkSize): Promise<Uint8Array | null> {
    for (;;) {
      if (this.closed) throw this.closedError();
      if (this.kind === 'file') {
        const left = this.size - this.offset;
        if (left <= 0) return null;
        const buf = Buffer.allocUnsafe(Math.min(this.chunkSize, Math.max(1, max), left));
        const n = native.pread(this.fd, buf, this.offset);
        if (n <= 0) return null; // shrank under us: the end is where the data ends
        this.offset += n;
        return buf.subarray(0, n);
      }
      // Reads from a pipe are at most its capacity (64 KiB by default): carve them out of a
      // slab rather than allocating chunkSize per read.
      if (this.slab.length - this.slabUsed < 65536) {
        this.slab = Buffer.allocUnsafe(this.chunkSize);
        this.slabUsed = 0;
      }
      const view = this.slab.subarray(this.slabUsed, this.slabUsed + Math.max(1, max));
      const n = native.read(this.fd, view);
      if (n === 0) return null;
      if (n < 0) {
        await this.wait('r');
        continue;
      }
      this.slabUsed += n;
      this.offset += n;
      return view.subarray(0, n);
    }
  }
}
