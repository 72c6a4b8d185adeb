// Maps [offset, offset+size) of a front-end's fd (guest memory region, dirty log) as a Backing.
// mmap needs a page-aligned offset; the front-end's need not be, so the mapping starts at the
// page below and windows are shifted by the difference.

import { native } from '../native/index.ts';
import type { Mapping } from '../native/api.ts';
import type { Backing } from './guest-memory.ts';

const PAGE = 4096;

export interface FdMapping {
  backing: Backing;
  mapping: Mapping;
}

export function mapFdRange(fd: number, size: number, offset: number, writable: boolean): FdMapping {
  const delta = offset % PAGE;
  const mapping = native.mmap(fd, size + delta, offset - delta, writable);
  const backing: Backing =
    delta === 0
      ? mapping
      : { size, window: (o: number, l: number) => mapping.window(o + delta, l), faults: () => mapping.faults() };
  return { backing, mapping };
}
