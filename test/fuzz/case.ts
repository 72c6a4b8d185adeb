// What a fuzz case is on disk: a concrete, self-contained list of operations (raw vhost-user
// messages with descriptions of the fds to attach, ring writes, blk requests), so a reproducer
// replays exactly what was sent, whatever later changes to the generator do to its seed.

/** Format tag of a saved case; bump when the op shapes change incompatibly. */
export const CASE_FORMAT = 'vhost-wasm-fuzz-case/1';

/**
 * An fd to attach to a message. The executor creates it, sends it, and closes its own copy.
 * `ram` is the guest RAM memfd, `kick`/`call`/`err` the ring's own eventfds (kept by the executor).
 */
export type FdSpec =
  | { kind: 'ram' }
  | { kind: 'kick' }
  | { kind: 'call' }
  | { kind: 'err' }
  | { kind: 'eventfd' }
  /** A memfd of `size` bytes (smaller than a region claims: the SIGBUS class). */
  | { kind: 'memfd'; size: number }
  /** The write end of a pipe, filled until a write would block when `full`. */
  | { kind: 'pipe'; full: boolean }
  /** The read end of a pipe nobody writes. */
  | { kind: 'pipe-read' }
  | { kind: 'socket' }
  | { kind: 'devnull' }
  | { kind: 'devzero' }
  | { kind: 'dir' }
  | { kind: 'file'; size: number };

export interface MsgOp {
  t: 'msg';
  code: number;
  flags: number;
  /** Payload bytes, hex. */
  payload: string;
  /** Header size field when it lies about the payload length (absent: the real length). */
  size?: number;
  fds: FdSpec[];
  /** Mutation classes that made this op what it is (absent: as QEMU would send it). */
  cls?: string[];
}

/** A descriptor as the ring holds it; addr as hex so 64-bit values survive JSON. */
export interface RawDesc {
  addr: string;
  len: number;
  flags: number;
  next: number;
}

/** Hostile ring contents: descriptors at given slots, an optional indirect table, heads published. */
export interface RingOp {
  t: 'ring';
  /** [slot, descriptor] pairs written into the descriptor table. */
  descs: [number, RawDesc][];
  /** Descriptors written at GPA `gpa` (an indirect table, inside the fuzz scratch area). */
  table?: { gpa: number; descs: RawDesc[] };
  /** Heads written into the avail ring from its current idx on. */
  heads: number[];
  /** Added to avail idx on top of heads.length (an avail index jump). */
  jump: number;
  /** Bytes written into scratch memory first (request headers, data), hex at GPA. */
  poke?: { gpa: number; hex: string }[];
  cls?: string[];
}

export interface BlkReq {
  type: 'read' | 'write' | 'flush' | 'get-id';
  sector: number;
  sectors: number;
  /** Seed of the bytes written. */
  fill: number;
  segments: number;
  indirect: boolean;
}

/** Valid virtio-blk requests submitted together through the driver ring and awaited. */
export interface BlkOp {
  t: 'blk';
  reqs: BlkReq[];
  /** true: every request must complete (the session is valid); false: best effort. */
  must: boolean;
}

/** GET_FEATURES and wait for its reply: everything sent before has been handled. */
export interface SyncOp {
  t: 'sync';
}

export interface KickOp {
  t: 'kick';
}

export type Op = MsgOp | RingOp | BlkOp | SyncOp | KickOp;

export interface FuzzCase {
  format: typeof CASE_FORMAT;
  /** "<run seed>:<case number>": regenerates the case with the generator of this format. */
  seed: string;
  /** Mutation classes of its ops (what the KNOWN_OPEN switches name): classesOf(ops). */
  classes: string[];
  /** Queue 0's ring: size, EVENT_IDX, indirect entries per head (0 = none). */
  queue: { size: number; eventIdx: boolean; indirect: number };
  ops: Op[];
}

export interface Finding {
  /** Which oracle failed: host-died, bystander-unserved, target-unserved, stack-trace, fd-leak, data-mismatch, guard-written, valid-unanswered. */
  oracle: string;
  detail: string;
}

/** A saved reproducer: the case, what failed, and the command that replays it. */
export interface Reproducer {
  case: FuzzCase;
  finding: Finding;
  /** The log lines around the failure (for the reader; replay does not use them). */
  log: string[];
  replay: string;
  /**
   * Set by hand after triage: the mutation class whose bug this is when the case reached it
   * through another mutation (a bit flip that moved an mmap offset past the file's end is the
   * short-memfd bug). The suite treats the reproducer as open while that class is KNOWN_OPEN.
   */
  rootCause?: string;
}

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
export const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

/** Every class some op of `ops` carries, sorted: a shrunk case keeps only the classes it still has. */
export function classesOf(ops: Op[]): string[] {
  const all = new Set<string>();
  for (const op of ops) if ((op.t === 'msg' || op.t === 'ring') && op.cls) for (const c of op.cls) all.add(c);
  return [...all].sort();
}
