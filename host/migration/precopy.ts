// Pre-copy of a memory disk between two vhost-wasm hosts (docs/migration.md, "Pre-copy"): an
// extension of SET_DEVICE_STATE_FD that only our own front-end (`vhost-wasm migrate`) uses,
// negotiated with protocol feature bit PRECOPY_PROTOCOL_FEATURE. The vhost-user protocol moves
// device state only with the rings stopped; QEMU never sends these phases.
//
// A round moves blocks of the disk through a pipe while the guest runs: the first round all of
// them (and dirty tracking starts), each next round the blocks written since the round before.
// The last round runs with the rings stopped, and then the usual container (phase
// PRECOPY_FINAL) carries the device's own bytes and a small `precopy` section naming the
// last round in place of the disk: the destination applies it only if it holds every round of
// that pre-copy, so a lost, truncated or corrupted round fails the migration (the source goes on).
//
// The disk's bytes are never copied into JavaScript's heap. The source copies each window of a run
// from the disk's mapping into a staging memfd of its own, checksumming in the same pass (a
// snapshot the guest cannot change under the checksum), and splices the staged pages into the
// pipe; the destination reads the pipe straight into its disk's mapping when that is resident
// (prealloc=on), checksumming each piece while it is in the cache, or else splices it into the
// disk's memfd and checksums what landed.
//
// Checksums are CRC-32C (host/migration/checksum.ts) since version 2; version 1 carried CRC-32.
// Both hosts of one migration run the same vhost-wasm, so a round of another version is refused
// by its version number before any checksum is judged.
//
// Round stream (little-endian):
//   header, 64 bytes: magic "VHWPRECP", version u32 (2), flags u32 (bit 0: first round, all
//     blocks), token 16 bytes (one pre-copy), round u32, run count u32, disk size u64, data
//     bytes u64, CRC-32C of the table u32, CRC-32C of bytes 0..59 u32
//   table: run count x { offset u64, length u64 } (4 KiB aligned, in order, inside the disk)
//   data: the runs' bytes one after another
//   trailer, 12 bytes: CRC-32C of the data u32, magic "VHWPEND\0"

import { randomBytes } from 'node:crypto';
import { copyCrc32c, crc32c } from './checksum.ts';
import { native, type Mapping } from '../native/index.ts';
import { mapFdRange } from '../memory/fd-mapping.ts';
import { DIRTY_BLOCK, type DirtyBlocks } from '../storage/dirty-blocks.ts';
import type { TokenBucket } from '../limits/token-bucket.ts';
import { SectionId, type PipeSource, type StateSection } from './section.ts';
import { growPipe, loopTurn, readPipeCrc, STATE_PIPE_SIZE } from './channel.ts';
import { VhostWasmError } from '../errors.ts';

export const PRECOPY_MAGIC = Buffer.from('VHWPRECP');
export const PRECOPY_END_MAGIC = Buffer.from('VHWPEND\0');
export const PRECOPY_VERSION = 2;
export const PRECOPY_HEADER = 64;
export const PRECOPY_TRAILER = 12;
const FLAG_FIRST = 1;
/** Bytes staged (copied out of the disk) and spliced at a time. */
const WINDOW = 8 << 20;
/** The container section that stands for the disk after a pre-copy. */
export const PRECOPY_SECTION_ID = SectionId.HOST_BASE + 1;
const MARKER_BYTES = 24;

/**
 * Whether a memory disk's bytes may be served. A full (STOPPED) LOAD writes the disk as its
 * section arrives, before the container's trailer checksum can be checked: checking first would
 * take a second copy of the disk (a staging area as big as it, kept until the trailer), and out
 * of a pipe the bytes cannot be read twice. So a LOAD that fails after it began writing (the
 * stream corrupt, cut short, or refused) leaves the disk part old, part a state that did not
 * check out: `unusable` says so from the first byte written until a LOAD that checks out, and
 * meanwhile no ring starts (dispatch.ts, SET_VRING_KICK), no SAVE reads it and no host handover
 * passes it on. Owned by the device slot: it outlives a connection and a device reset.
 */
export interface DiskCondition {
  unusable: string | null;
  /** Its memfd went to another host by a disk hand-over (disk-handover.ts): not even a LOAD may write it. */
  givenAway?: boolean;
}

/** What `unusable` says once a LOAD began writing the disk (cleared only if it checks out). */
export const DISK_LOAD_UNFINISHED =
  'a device state LOAD began overwriting the memory disk and did not complete with a state that checks out (corrupt, cut short or refused): its bytes are part old, part that state';

/** What `unusable` says while pre-copy rounds write a destination's disk (cleared by the FINAL state). */
export const PRECOPY_UNFINISHED =
  'pre-copy rounds are writing the memory disk and no FINAL device state has completed that migration yet: its bytes are part old, part a migration in progress';

export interface MemoryDiskHandle {
  /** The disk's memfd (borrowed). */
  fd: number;
  /** Whether its bytes may be served (the slot's, shared by every handle). */
  condition: DiskCondition;
  size: number;
  dirty: DirtyBlocks;
  /** The disk mapped writable in this thread, kept by its owner between rounds (borrowed: never unmapped here). */
  mapping(): Mapping;
  /**
   * mapping() has every page of the disk made and mapped writable already (prealloc=on): a LOAD
   * from a pipe then reads into it directly, one copy into pages that exist, each piece
   * checksummed while it is still in the cache. Otherwise the pipe is spliced into the memfd
   * (the kernel makes the pages without mapping them: reading into the mapping would fault each
   * 4 KiB page in, about twice the CPU measured here).
   */
  resident?: boolean;
  /**
   * The device's auto-converge throttle (auto-converge.ts), which its runner charges with the
   * bytes guest requests carry to the device; absent: a pre-copy never throttles the guest.
   */
  converge?: TokenBucket;
}

/** A pre-copy as one side knows it: which one (token) and the last round completed. */
export interface PrecopyMark {
  token: Buffer;
  round: number;
}

/**
 * Views of a mapping at any offset: one window per GiB, made once (a window per 4 KiB run costs
 * more than checksumming it). A range crossing a GiB boundary comes as two views.
 */
export class MappedViews {
  private readonly windows: Uint8Array[] = [];
  private readonly span: number;

  constructor(private readonly mapping: Mapping) {
    this.span = native.MAX_WINDOW;
  }

  /** The views of [off, off + len): one, or two across a GiB boundary. */
  views(off: number, len: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    this.each(off, len, (v) => out.push(v));
    return out;
  }

  each(off: number, len: number, fn: (view: Uint8Array) => void): void {
    for (let done = 0; done < len; ) {
      const at = off + done;
      const w = Math.floor(at / this.span);
      const base = w * this.span;
      let win = this.windows[w];
      if (win === undefined) win = this.windows[w] = new Uint8Array(this.mapping.window(base, Math.min(this.span, this.mapping.size - base)));
      const n = Math.min(len - done, base + this.span - at);
      fn(win.subarray(at - base, at - base + n));
      done += n;
    }
  }

}

/**
 * What rounds on one disk reuse, kept as long as its mapping: its views, and the 8 MiB buffers
 * small runs are gathered into. Made per round, each round added a 256 MiB window and 8 MiB
 * buffers to what V8 counts as external memory, and V8 answers that growth with a full garbage
 * collection (10-30 ms measured), which then fell into the round run with the rings stopped.
 * One round at a time per disk (the device's transfer slot), so one set per mapping suffices.
 */
interface DiskScratch {
  views: MappedViews;
  buffers: Partial<Record<'save' | 'load', Buffer>>;
}

const scratchOf = new WeakMap<Mapping, DiskScratch>();

function scratchFor(m: Mapping): DiskScratch {
  let s = scratchOf.get(m);
  if (s === undefined) scratchOf.set(m, (s = { views: new MappedViews(m), buffers: {} }));
  return s;
}

function diskScratch(disk: MemoryDiskHandle): DiskScratch {
  return scratchFor(disk.mapping());
}

/**
 * Makes the views of a disk's mapping now, for a mapping made at start (a resident disk): made in
 * the first transfer instead, their 256 MiB (per 256 MiB of disk) of new external memory had V8
 * run a full collection in the middle of it (DiskScratch), 10-30 ms more on each side of the
 * first migration a host takes part in (docs/BENCHMARKS.md, 2026-12-07 "direct15").
 */
export function makeDiskViews(m: Mapping): void {
  scratchFor(m).views.each(0, m.size, () => {});
}

/** The disk's views (made once per mapping: see DiskScratch). */
export function diskViews(disk: MemoryDiskHandle): MappedViews {
  return diskScratch(disk).views;
}

/** A WINDOW-byte buffer of this disk's for one direction, reused round after round. */
function diskBuffer(disk: MemoryDiskHandle, dir: 'save' | 'load'): Buffer {
  const s = diskScratch(disk);
  return (s.buffers[dir] ??= Buffer.allocUnsafe(WINDOW));
}

/** Pieces smaller than this are gathered into one buffer and written; larger ones staged in a memfd and spliced. */
const SMALL_PIECE = 64 << 10;

/** A pre-copy round that is not what it claims (truncated, corrupted, out of order): the round is refused, the source serves on. */
export class PrecopyStreamError extends VhostWasmError {
  static override readonly code = 'ERR_PRECOPY_STREAM';
  override name = 'PrecopyStreamError';
}

function waitFd(fd: number, events: 'r' | 'w', aborted: () => Error | null): Promise<void> {
  return new Promise((resolve, reject) => {
    const a = aborted();
    if (a) return reject(a);
    const w = native.watch(fd, events, () => {
      w.close();
      const e = aborted();
      if (e) reject(e);
      else resolve();
    });
  });
}

/** A round's move through one pipe: waits run on this thread's loop; abort() ends them. */
abstract class PipeRound {
  private abortReason: Error | null = null;
  private settled = false;
  readonly done: Promise<string | null>;
  bytes = 0;

  constructor(
    readonly direction: 'save' | 'load',
    protected readonly fd: number,
  ) {
    native.setNonBlocking(fd, true);
    // After the subclass's constructor has set its fields.
    this.done = Promise.resolve().then(() => this.run()).then(
      () => null,
      (e: unknown) => (this.abortReason ?? (e as Error)).message,
    ).finally(() => {
      this.settled = true;
      this.cleanup();
      native.close(this.fd);
    });
  }

  get finished(): boolean {
    return this.settled;
  }

  abort(reason: string): void {
    this.abortReason ??= new Error(reason);
  }

  protected aborted = (): Error | null => this.abortReason;

  /** What the round holds beyond its fd, let go when it settles. */
  protected cleanup(): void {}

  protected abstract run(): Promise<void>;

  protected async writeAll(b: Uint8Array): Promise<void> {
    for (let done = 0; done < b.length; ) {
      const n = native.write(this.fd, b.subarray(done));
      if (n < 0) await waitFd(this.fd, 'w', this.aborted);
      else done += n;
    }
    this.bytes += b.length;
  }

  /** Exactly len bytes, or PrecopyStreamError at EOF. */
  protected async readExactly(len: number, what: string): Promise<Buffer> {
    const b = Buffer.alloc(len);
    for (let got = 0; got < len; ) {
      const n = native.read(this.fd, b.subarray(got));
      if (n === 0) throw new PrecopyStreamError(`the pre-copy stream ends inside the ${what} (${got} of ${len} bytes)`);
      if (n < 0) await waitFd(this.fd, 'r', this.aborted);
      else got += n;
    }
    this.bytes += len;
    return b;
  }
}

function encodeHeader(first: boolean, mark: PrecopyMark, diskSize: number, runs: readonly [number, number][]): Buffer {
  const table = Buffer.alloc(runs.length * 16);
  let data = 0;
  runs.forEach(([off, len], i) => {
    table.writeBigUInt64LE(BigInt(off), i * 16);
    table.writeBigUInt64LE(BigInt(len), i * 16 + 8);
    data += len;
  });
  const h = Buffer.alloc(PRECOPY_HEADER);
  PRECOPY_MAGIC.copy(h, 0);
  h.writeUInt32LE(PRECOPY_VERSION, 8);
  h.writeUInt32LE(first ? FLAG_FIRST : 0, 12);
  mark.token.copy(h, 16);
  h.writeUInt32LE(mark.round, 32);
  h.writeUInt32LE(runs.length, 36);
  h.writeBigUInt64LE(BigInt(diskSize), 40);
  h.writeBigUInt64LE(BigInt(data), 48);
  h.writeUInt32LE(crc32c(table), 56);
  h.writeUInt32LE(crc32c(h.subarray(0, 60)), 60);
  return Buffer.concat([h, table]);
}

interface RoundHeader {
  first: boolean;
  mark: PrecopyMark;
  runCount: number;
  dataBytes: number;
  tableCrc: number;
}

function decodeHeader(h: Buffer, diskSize: number): RoundHeader {
  if (!h.subarray(0, 8).equals(PRECOPY_MAGIC)) throw new PrecopyStreamError('not a pre-copy round (bad magic)');
  // The version first: another version's header need not checksum the same way.
  const version = h.readUInt32LE(8);
  if (version !== PRECOPY_VERSION) {
    throw new PrecopyStreamError(`pre-copy round of version ${version}${version === 1 ? ' (CRC-32)' : ''}; this host reads version ${PRECOPY_VERSION} (CRC-32C) only: run the same vhost-wasm on both hosts, or migrate without pre-copy`);
  }
  if (crc32c(h.subarray(0, 60)) !== h.readUInt32LE(60)) throw new PrecopyStreamError('the pre-copy header is corrupted (its CRC does not match)');
  const flags = h.readUInt32LE(12);
  if ((flags & ~FLAG_FIRST) !== 0) throw new PrecopyStreamError(`unknown pre-copy flags 0x${flags.toString(16)}`);
  const size = Number(h.readBigUInt64LE(40));
  if (size !== diskSize) throw new PrecopyStreamError(`the source's disk is ${size} bytes, this one ${diskSize}`);
  const runCount = h.readUInt32LE(36);
  if (runCount > Math.ceil(diskSize / DIRTY_BLOCK)) throw new PrecopyStreamError(`${runCount} runs for a disk of ${Math.ceil(diskSize / DIRTY_BLOCK)} blocks`);
  const dataBytes = Number(h.readBigUInt64LE(48));
  if (dataBytes > diskSize) throw new PrecopyStreamError(`${dataBytes} data bytes for a ${diskSize}-byte disk`);
  return { first: (flags & FLAG_FIRST) !== 0, mark: { token: Buffer.from(h.subarray(16, 32)), round: h.readUInt32LE(32) }, runCount, dataBytes, tableCrc: h.readUInt32LE(56) };
}

/**
 * A received run table: run i is [at[2i], +at[2i+1]). One Float64Array (16 bytes a run; offsets
 * and lengths are below 2^53, exact in a double), not an array of pairs: a hostile source may
 * claim a run per 4 KiB block, a million runs for a 4 GiB disk, and pairs would cost ~64 bytes
 * each on the main thread's heap.
 */
interface RunTable {
  count: number;
  at: Float64Array;
}

function decodeTable(t: Buffer, h: RoundHeader, diskSize: number): RunTable {
  if (crc32c(t) !== h.tableCrc) throw new PrecopyStreamError('the pre-copy run table is corrupted (its CRC does not match)');
  const at = new Float64Array(h.runCount * 2);
  let end = 0;
  let sum = 0;
  for (let i = 0; i < h.runCount; i++) {
    const off = Number(t.readBigUInt64LE(i * 16));
    const len = Number(t.readBigUInt64LE(i * 16 + 8));
    if (off % DIRTY_BLOCK !== 0 || len <= 0 || off < end || off + len > diskSize) {
      throw new PrecopyStreamError(`pre-copy run ${i} [${off}, +${len}) is not 4 KiB aligned, in order and inside the ${diskSize}-byte disk`);
    }
    end = off + len;
    sum += len;
    at[2 * i] = off;
    at[2 * i + 1] = len;
  }
  if (sum !== h.dataBytes) throw new PrecopyStreamError(`the runs hold ${sum} bytes, the header says ${h.dataBytes}`);
  return { count: h.runCount, at };
}

/** The source's side of one round: the blocks to send were taken from the dirty map already. */
export class PrecopySaveRound extends PipeRound {
  constructor(
    fd: number,
    private readonly disk: MemoryDiskHandle,
    private readonly mark: PrecopyMark,
    private readonly first: boolean,
    private readonly runs: [number, number][],
    /** The rings are stopped: nothing writes the disk, so its pages go into the pipe as they are. */
    private readonly quiet: boolean,
    /** The pipe's capacity to ask for (F_SETPIPE_SZ; the host's --state-pipe-size). */
    pipeBytes: number = STATE_PIPE_SIZE,
  ) {
    super('save', fd);
    const cap = quiet ? null : growPipe(fd, Math.min(pipeBytes, WINDOW));
    this.stages = new Stages(cap !== null && cap <= WINDOW);
  }

  private readonly stages: Stages;

  protected async run(): Promise<void> {
    await this.writeAll(encodeHeader(this.first, this.mark, this.disk.size, this.runs));
    let crc = 0;
    if (this.quiet) crc = await this.sendQuiet();
    else crc = await this.sendStaged();
    const t = Buffer.alloc(PRECOPY_TRAILER);
    t.writeUInt32LE(crc >>> 0, 0);
    PRECOPY_END_MAGIC.copy(t, 4);
    await this.writeAll(t);
  }

  /**
   * Rings stopped: each run is checksummed in place and spliced from the disk's memfd, no copy
   * on this side. (Should the migration fail and the source resume, the pipe is dropped unread.)
   */
  private async sendQuiet(): Promise<number> {
    let crc = 0;
    if (this.runs.length === 0) return crc;
    const m = diskViews(this.disk);
    {
      for (const [off, len] of this.runs) {
        // Window by window: a window's checksum overlaps the destination's draining of the last.
        for (let at = 0; at < len; at += SPLICE_WINDOW) {
          const n = Math.min(SPLICE_WINDOW, len - at);
          m.each(off + at, n, (v) => {
            crc = crc32c(v, crc);
          });
          for (let done = 0; done < n; ) {
            const s = native.splice(this.disk.fd, off + at + done, this.fd, -1, n - done);
            if (s < 0) await waitFd(this.fd, 'w', this.aborted);
            else if (s === 0) throw new Error(`the disk's memfd ended at ${off + at + done}`);
            else done += s;
          }
        }
        this.bytes += len;
      }
    }
    return crc;
  }

  private async sendStaged(): Promise<number> {
    let crc = 0;
    // Small pieces are copied from a mapping of the disk (a system call each would cost more).
    this.diskViews = this.runs.some(([, len]) => len < SMALL_PIECE) ? diskViews(this.disk) : null;
    return this.sendBatches(crc);
  }

  private diskViews: MappedViews | null = null;

  private async sendBatches(crc: number): Promise<number> {
    // Runs go in batches of up to WINDOW bytes (a long run in WINDOW pieces): a round after the
    // first is mostly scattered 4 KiB blocks, and one staging file per block would cost more
    // system calls than the copy.
    let batch: [number, number][] = [];
    let batchBytes = 0;
    for (const [off, len] of this.runs) {
      for (let at = 0; at < len; ) {
        const n = Math.min(WINDOW - batchBytes, len - at);
        batch.push([off + at, n]);
        batchBytes += n;
        at += n;
        if (batchBytes === WINDOW) {
          crc = await this.sendBatch(batch, batchBytes, crc);
          batch = [];
          batchBytes = 0;
        }
      }
    }
    if (batchBytes > 0) crc = await this.sendBatch(batch, batchBytes, crc);
    return crc;
  }

  /** Pieces of the disk, one after another: staged, checksummed, sent. Returns the CRC continued. */
  private async sendBatch(pieces: readonly [number, number][], total: number, crc: number): Promise<number> {
    if (this.diskViews && pieces.every(([, n]) => n < SMALL_PIECE)) {
      // Scattered blocks: gathered from the disk's mapping into one reused buffer and written.
      // Staging files would fault in, zero and free a fresh page per block.
      // (The buffer is the disk's, reused: fresh pages per batch cost more than the copy.)
      const buf = diskBuffer(this.disk, 'save').subarray(0, total);
      // Copied and checksummed in one pass over each block.
      let at = 0;
      for (const [off, n] of pieces) {
        this.diskViews.each(off, n, (v) => {
          crc = copyCrc32c(buf.subarray(at), v, crc);
          at += v.length;
        });
      }
      await this.writeAll(buf);
      return crc;
    }
    // A staging memfd: what is checksummed is what goes, whatever the guest writes to the disk
    // meanwhile (that block is marked again). The pipe holds references to its pages until the
    // destination reads them, so a staging file is written again only once they are out (Stages).
    const { fd: stage, view, release } = this.stages.next(total);
    try {
      // Copied from the disk's mapping and checksummed in one pass (each byte read once; a
      // kernel copy, then a checksum of the staged pages, read them twice).
      const staged = view.subarray(0, total);
      const views = (this.diskViews ??= diskViews(this.disk));
      let pos = 0;
      for (const [off, n] of pieces) {
        // Mapped in one call, not a fault per 4 KiB (a no-op once mapped: the mapping is kept).
        if (n >= SMALL_PIECE) this.disk.mapping().populate(off, n, false);
        views.each(off, n, (v) => {
          crc = copyCrc32c(staged.subarray(pos), v, crc);
          pos += v.length;
        });
      }
      for (let done = 0; done < total; ) {
        const s = native.splice(stage, done, this.fd, -1, total - done);
        if (s < 0) await waitFd(this.fd, 'w', this.aborted);
        else if (s === 0) throw new Error('the staging memfd ended early');
        else done += s;
      }
      this.bytes += total;
    } finally {
      release();
    }
    return crc;
  }

  /** Ended with the round (see PipeRound.done). */
  protected override cleanup(): void {
    this.stages.close();
  }
}

/**
 * The staging memfds of one save round. Two, written in turn, when the round's pipe holds at most
 * one batch (its capacity, set here, is at most WINDOW): batches other than the last are WINDOW
 * bytes, so once batch k+1 is all in the pipe none of batch k's pages are there any more, and
 * batch k+2 may overwrite them. Made fresh per batch, each 8 MiB was 2048 pages faulted in,
 * zeroed and freed, most of a full round's source-side time. A pipe whose capacity is not known
 * to be that small (the addon cannot set it, or the front-end asked for more) gets a fresh
 * staging memfd per batch. (Should the destination grow the pipe behind our back, pages it has
 * not read yet may be overwritten: its own round then fails its checksum, nothing else.)
 */
class Stages {
  private readonly pool: { fd: number; map: Mapping; view: Uint8Array }[] = [];
  private turn = 0;

  constructor(private readonly reuse: boolean) {}

  next(total: number): { fd: number; view: Uint8Array; release: () => void } {
    if (!this.reuse) {
      const s = Stages.make(total);
      return { fd: s.fd, view: s.view, release: () => Stages.drop(s) };
    }
    const k = this.turn++ % 2;
    this.pool[k] ??= Stages.make(WINDOW);
    return { fd: this.pool[k].fd, view: this.pool[k].view, release: () => {} };
  }

  close(): void {
    for (const s of this.pool.splice(0)) Stages.drop(s);
  }

  private static make(bytes: number): { fd: number; map: Mapping; view: Uint8Array } {
    const fd = native.memfdCreate('vhost-wasm-precopy', false);
    try {
      native.ftruncate(fd, bytes);
      const map = native.mmap(fd, bytes, 0, true);
      return { fd, map, view: new Uint8Array(map.window(0, bytes)) };
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  private static drop(s: { fd: number; map: Mapping }): void {
    s.map.unmap();
    native.close(s.fd);
  }
}

/** How a LOAD took a disk's bytes out of a pipe (logged: which path a migration took). */
export const DISK_READ_IN = 'read into its resident pages';
export const DISK_SPLICED_IN = 'spliced into its memfd';

/** The destination's side of one round: checks the stream and reads or splices its runs into the disk. */
export class PrecopyLoadRound extends PipeRound {
  /** The round this stream turned out to be, once its trailer checked out. */
  applied: { first: boolean; mark: PrecopyMark } | null = null;
  /** How its big runs came in (DISK_READ_IN, DISK_SPLICED_IN), or null: none, or only small ones. */
  took: string | null = null;

  constructor(
    fd: number,
    private readonly disk: MemoryDiskHandle,
    /** What this side holds already (null: nothing, only a first round can start). */
    private readonly have: PrecopyMark | null,
  ) {
    super('load', fd);
  }

  protected async run(): Promise<void> {
    const h = decodeHeader(await this.readExactly(PRECOPY_HEADER, 'header'), this.disk.size);
    if (!h.first) {
      if (this.have === null) throw new PrecopyStreamError(`round ${h.mark.round} of a pre-copy this host did not start (no first round arrived)`);
      if (!h.mark.token.equals(this.have.token)) throw new PrecopyStreamError('a round of another pre-copy (its token differs)');
      if (h.mark.round !== this.have.round + 1) throw new PrecopyStreamError(`round ${h.mark.round} arrived after round ${this.have.round}`);
    } else if (h.mark.round !== 0) throw new PrecopyStreamError(`a first round numbered ${h.mark.round}`);
    const runs = decodeTable(await this.readExactly(h.runCount * 16, 'run table'), h, this.disk.size);
    let crc = 0;
    if (runs.count > 0) {
      // A destination's disk in the middle of a pre-copy: not served until the FINAL state applies.
      this.disk.condition.unusable = PRECOPY_UNFINISHED;
      const m = diskViews(this.disk);
      {
        // Mostly small runs (the blocks written since the last round): the data is spliced in
        // big pieces into a staging file and copied run by run between mappings; a system call
        // per 4 KiB run would cost more than its copy. Big runs: spliced into the disk itself.
        crc = h.dataBytes / runs.count < SMALL_PIECE ? await this.takeStaged(runs, h.dataBytes, m) : await this.takeDirect(runs, m);
      }
    }
    const t = await this.readExactly(PRECOPY_TRAILER, 'trailer');
    if (!t.subarray(4).equals(PRECOPY_END_MAGIC)) throw new PrecopyStreamError('the pre-copy trailer is corrupted (bad end magic)');
    if (t.readUInt32LE(0) !== crc >>> 0) throw new PrecopyStreamError('the pre-copy data is corrupted (its CRC does not match)');
    const extra = Buffer.alloc(1);
    for (;;) {
      const n = native.read(this.fd, extra);
      if (n === 0) break;
      if (n > 0) throw new PrecopyStreamError('bytes follow the pre-copy trailer');
      await waitFd(this.fd, 'r', this.aborted);
    }
    this.applied = { first: h.first, mark: h.mark };
  }

  private readonly pipe = {
    fd: this.fd,
    wait: () => waitFd(this.fd, 'r', this.aborted),
    // The fd stays open until the round settles, but an abort is noticed at the turn, not only at the next wait.
    turn: async () => {
      await loopTurn();
      const e = this.aborted();
      if (e) throw e;
    },
  };

  private async takeDirect(runs: RunTable, disk: MappedViews): Promise<number> {
    let crc = 0;
    for (let i = 0; i < runs.count; i++) {
      const off = runs.at[2 * i];
      const len = runs.at[2 * i + 1];
      this.took = this.disk.resident ? DISK_READ_IN : DISK_SPLICED_IN;
      if (this.disk.resident) {
        // Pages made and mapped at start: read straight into them (see loadDiskFromPipe).
        for (const v of disk.views(off, len)) {
          crc = await readPipeCrc(this.fd, v, crc, this.pipe.wait, (got) => new PrecopyStreamError(`the pre-copy stream ends inside the run at ${off} (${got} of ${v.length} bytes)`), this.pipe.turn);
          this.bytes += v.length;
        }
        continue;
      }
      // Window by window (round 0 is one 256 MiB run): a window's checksum overlaps the source's
      // filling of the pipe with the next; its pages are mapped here in one call.
      for (let at = 0; at < len; at += SPLICE_WINDOW) {
        const n = Math.min(SPLICE_WINDOW, len - at);
        await spliceIn(this.pipe, this.disk.fd, off + at, n, `the run at ${off}`);
        this.bytes += n;
        this.disk.mapping().populate(off + at, n, false);
        disk.each(off + at, n, (v) => {
          crc = crc32c(v, crc);
        });
      }
    }
    return crc;
  }

  private async takeStaged(runs: RunTable, total: number, disk: MappedViews): Promise<number> {
    let crc = 0;
    let r = 0;
    let rAt = 0;
    // One reused buffer: read(2) from the pipe, then copied run by run into the disk's mapping.
    const buf = diskBuffer(this.disk, 'load');
    for (let base = 0; base < total; base += WINDOW) {
      const n = Math.min(WINDOW, total - base);
      const staged = buf.subarray(0, n);
      for (let got = 0; got < n; ) {
        const k = native.read(this.fd, staged.subarray(got));
        if (k === 0) throw new PrecopyStreamError(`the pre-copy stream ends inside the round's data (${base + got} of ${total} bytes)`);
        if (k < 0) await waitFd(this.fd, 'r', this.aborted);
        else got += k;
      }
      this.bytes += n;
      // Hand the bytes out to the runs they belong to (a run may span two reads), checksummed in
      // the same pass as the copy; in order, so the CRC is that of `staged`. (The blocks land
      // before the trailer is checked, as with the splices: a bad round voids the pre-copy.)
      for (let pos = 0; pos < n; ) {
        const off = runs.at[2 * r];
        const len = runs.at[2 * r + 1];
        const k = Math.min(len - rAt, n - pos);
        let from = pos;
        disk.each(off + rAt, k, (v) => {
          crc = copyCrc32c(v, staged.subarray(from, from + v.length), crc);
          from += v.length;
        });
        pos += k;
        rAt += k;
        if (rAt === len) {
          r++;
          rAt = 0;
        }
      }
    }
    return crc;
  }
}


/** The destination's ways of taking a round's data (see PrecopyLoadRound.run). */
async function spliceIn(round: { fd: number; wait: () => Promise<void> }, out: number, outOff: number, len: number, what: string): Promise<void> {
  for (let done = 0; done < len; ) {
    const s = native.splice(round.fd, -1, out, outOff + done, len - done);
    if (s === 0) throw new PrecopyStreamError(`the pre-copy stream ends inside ${what} (${done} of ${len} bytes)`);
    if (s < 0) await round.wait();
    else done += s;
  }
}

export function newPrecopyMark(): PrecopyMark {
  return { token: randomBytes(16), round: 0 };
}

function encodeMarker(m: PrecopyMark): Buffer {
  const b = Buffer.alloc(MARKER_BYTES);
  m.token.copy(b, 0);
  b.writeUInt32LE(m.round, 16);
  return b;
}

/**
 * The container section (phase PRECOPY_FINAL) that stands for the disk: the pre-copy and its last
 * round. SAVE: `mark` is the source's. LOAD: the destination refuses unless it matches what it
 * holds (`have`).
 */
export function precopyMarkerSection(mark: PrecopyMark | null, have: PrecopyMark | null, onApplied: () => void): StateSection {
  let got: Buffer | null = null;
  return {
    id: PRECOPY_SECTION_ID,
    name: 'precopy',
    size: async () => MARKER_BYTES,
    read: async (offset, len) => encodeMarker(mark!).subarray(offset, offset + len),
    beginLoad: async (size) => {
      if (size !== MARKER_BYTES) throw new Error(`the precopy section is ${size} bytes, not ${MARKER_BYTES}`);
      got = Buffer.alloc(0);
    },
    write: async (_offset, chunk) => {
      got = Buffer.concat([got ?? Buffer.alloc(0), chunk]);
    },
    finish: async () => {
      if (got === null || got.length !== MARKER_BYTES) return 'the precopy section is incomplete';
      if (have === null) return 'this host holds no pre-copied disk: the disk has to come in full (phase STOPPED)';
      if (!got.subarray(0, 16).equals(have.token)) return 'the state names another pre-copy than the one this host received';
      const round = got.readUInt32LE(16);
      if (round !== have.round) return `the source's last pre-copy round is ${round}, this host has round ${have.round}: a round was lost`;
      return null;
    },
    // Only once the whole FINAL state applied (the device's own section too): see StateSection.commit.
    commit: onApplied,
    abort: async () => {
      got = null;
    },
  };
}

/**
 * A full (STOPPED) save of the disk into a state file (a memfd channel), on this thread: the
 * file's range is mapped, both mappings are populated in one call each (no page fault per
 * 4 KiB), and each byte is copied and checksummed in one pass (copyCrc32c). The rings are
 * stopped, so nothing writes the disk meanwhile. A front-end that shrinks the file meanwhile
 * makes the mapping fault: the guard contains it and this refuses. Returns the CRC-32C
 * continued from `crc`.
 */
export function copyDiskToFile(disk: MemoryDiskHandle, fd: number, fileOffset: number, len: number, crc: number): number {
  if (len !== disk.size) throw new Error(`storage section: ${len} bytes asked of a ${disk.size}-byte disk`);
  return copyDiskFile(disk, fd, fileOffset, len, crc, true);
}

/** The disk <-> [fileOffset, +len) of the state file fd, copied and checksummed in one pass. */
function copyDiskFile(disk: MemoryDiskHandle, fd: number, fileOffset: number, len: number, crc: number, toFile: boolean): number {
  if (len === 0) return crc;
  disk.mapping().populate(0, disk.size, !toFile);
  const { backing, mapping } = mapFdRange(fd, len, fileOffset, toFile);
  try {
    mapping.populate(0, mapping.size, toFile);
    const views = diskViews(disk);
    for (let at = 0; at < len; at += native.MAX_WINDOW) {
      const n = Math.min(native.MAX_WINDOW, len - at);
      const file = new Uint8Array(backing.window(at, n));
      let from = 0;
      views.each(at, n, (v) => {
        const f = file.subarray(from, from + v.length);
        crc = toFile ? copyCrc32c(f, v, crc) : copyCrc32c(v, f, crc);
        from += v.length;
      });
    }
    if (mapping.faults() > 0) throw new Error(`the state file was shrunk while the disk was ${toFile ? 'saved into' : 'loaded from'} it (its bytes are not all there)`);
  } finally {
    mapping.unmap();
  }
  return crc;
}

/** CRC-32C of the disk's bytes [at, at + len) (whole by default), from its mapping populated in one call first, continued from `crc`. */
export function diskCrc(disk: MemoryDiskHandle, crc: number, at = 0, len = disk.size - at): number {
  if (len === 0) return crc;
  // A resident disk is mapped already; otherwise its range is mapped in one call, not a fault per 4 KiB.
  if (!disk.resident) disk.mapping().populate(at, len, false);
  // The disk's views, made once per mapping (DiskScratch): a window made per call is external
  // memory to V8, which answers its growth with collections.
  diskViews(disk).each(at, len, (v) => {
    crc = crc32c(v, crc);
  });
  return crc;
}

/**
 * A full (STOPPED) LOAD of the disk from a state file (a memfd channel), on this thread, the
 * way copyDiskToFile saves it. The worker's own section is not involved (it only validated the
 * size in beginLoad); the worker sees the bytes through its mapping of the same memfd. Returns
 * the CRC-32C continued from `crc`. Marks the disk unusable (DiskCondition): the caller clears
 * that once the container's trailer checked out.
 */
export function loadDiskFromFile(disk: MemoryDiskHandle, fd: number, fileOffset: number, len: number, crc: number): number {
  if (len !== disk.size) throw new Error(`storage section: ${len} bytes for a ${disk.size}-byte disk`);
  // Written before the trailer is checked (DiskCondition): not served until it checks out.
  disk.condition.unusable = DISK_LOAD_UNFINISHED;
  return copyDiskFile(disk, fd, fileOffset, len, crc, false);
}

/**
 * A full (STOPPED) LOAD of the disk from a pipe, one kernel copy of each byte: into a resident
 * disk (prealloc=on) read straight into its mapping, each piece checksummed while it is in the
 * cache; otherwise spliced into the disk's memfd (the kernel makes the pages) and checksummed
 * from this thread's mapping. Returns the CRC-32C continued from `crc`. Marks the disk unusable
 * (DiskCondition): the caller clears that once the container's trailer checked out.
 */
export async function loadDiskFromPipe(disk: MemoryDiskHandle, pipe: PipeSource, len: number, crc: number): Promise<number> {
  if (len !== disk.size) throw new Error(`storage section: ${len} bytes for a ${disk.size}-byte disk`);
  // Written before the trailer is checked (DiskCondition): not served until it checks out.
  disk.condition.unusable = DISK_LOAD_UNFINISHED;
  if (disk.resident) {
    for (const v of diskViews(disk).views(0, len)) crc = await pipe.readCrc(v, crc);
    return crc;
  }
  // Window by window: each window's checksum overlaps the source's filling of the pipe with the
  // next (the pages are made by the splice itself: making them all first would hold the
  // pipe's reader up for as long as that takes).
  for (let at = 0; at < len; at += SPLICE_WINDOW) {
    const n = Math.min(SPLICE_WINDOW, len - at);
    await pipe.spliceTo(disk.fd, at, n);
    crc = diskCrc(disk, crc, at, n);
  }
  return crc;
}

/** Bytes spliced out of a pipe and then checksummed at a time. */
const SPLICE_WINDOW = 8 << 20;
