// Guest memory fixtures shared by the split and the packed virtqueue tests: both put a ring and
// its buffers into one ArrayBuffer of guest RAM at GPA 0, and check a broken queue the same way.
import type { ExecutionContext } from 'ava';
import { GuestMemory, arrayBufferBacking, type RegionSpec } from '../../host/memory/guest-memory.ts';
import { DirtyLog } from '../../host/memory/dirty-log.ts';
import { QueueFault } from '../../host/virtqueue/chain.ts';

export const MEM = 0x100000; // 1 MiB at GPA 0
export const RING = 0x10000;
export const DATA = 0x40000;
export const Q = 3; // queue index that every message must name

export function region(gpa: number, buf: ArrayBuffer, uva = 0x7f0000000000 + gpa): RegionSpec {
  return { guestPhysAddr: gpa, size: buf.byteLength, userspaceAddr: uva, mmapOffset: 0, backing: arrayBufferBacking(buf) };
}

/** MEM bytes of guest RAM at GPA 0 (`buf`), followed by the `extra` regions. */
export function guestRam(extra: RegionSpec[] = []): { buf: ArrayBuffer; mem: GuestMemory } {
  const buf = new ArrayBuffer(MEM);
  return { buf, mem: new GuestMemory([region(0, buf), ...extra]) };
}

/** `len` bytes of guest RAM at `gpa`, as the guest sees them. */
export const bytes = (p: { buf: ArrayBuffer }, gpa: number, len: number) => new Uint8Array(p.buf, gpa, len);

/** A dirty log covering all of MEM, and its bitmap. */
export function dirtyLog(): { log: DirtyLog; logArea: ArrayBuffer } {
  const logArea = new ArrayBuffer(MEM / 4096 / 8);
  return { log: new DirtyLog(arrayBufferBacking(logArea)), logArea };
}

export const page = (gpa: number) => Math.floor(gpa / 4096);

interface FaultingQueue {
  pop(): unknown;
  pushUsed(head: number, writtenLen: number): void;
  readonly broken: boolean;
  readonly fault: QueueFault | undefined;
}

/** pop() breaks the queue with a fault matching `re`; the queue then refuses pop and pushUsed too. */
export function popFaults(t: ExecutionContext, q: FaultingQueue, re: RegExp): QueueFault {
  const e = t.throws(() => q.pop(), { instanceOf: QueueFault })!;
  t.regex(e.message, /^virtqueue 3: /);
  t.regex(e.message, re);
  t.is(e.queue, Q);
  t.true(q.broken);
  t.is(q.fault, e);
  t.throws(() => q.pop(), { instanceOf: QueueFault, message: /virtqueue 3: queue is broken/ });
  t.throws(() => q.pushUsed(0, 0), { instanceOf: QueueFault });
  return e;
}
