// Reading one received payload and its fds with checks whose errors name the message and
// the defect ("SET_MEM_TABLE (5): carries 2 fds for 3 regions; ..."). Used by the request
// table's codecs and by the reply decoders.

import { ProtocolError } from './errors.ts';
import { view, type Layout } from './layout.ts';

export class PayloadReader {
  readonly dv: DataView;
  constructor(readonly name: string, readonly code: number, readonly payload: Uint8Array, readonly fds: number[]) {
    this.dv = view(payload);
  }

  fail(what: string): never {
    throw new ProtocolError(`${this.name}: ${what}`, this.code);
  }

  size(expected: number, layout: string): void {
    const n = this.payload.length;
    if (n < expected) this.fail(`payload is ${n} bytes, shorter than its ${expected}-byte ${layout}`);
    if (n > expected) this.fail(`payload is ${n} bytes, longer than its ${expected}-byte ${layout}`);
  }

  atLeast(min: number, layout: string): void {
    const n = this.payload.length;
    if (n < min) this.fail(`payload is ${n} bytes, shorter than the ${min}-byte minimum of its ${layout}`);
  }

  /** Checks the size against the layout, then reads it. */
  read<T>(layout: Layout<T>): T {
    this.size(layout.size, layout.name);
    return layout.read(this.dv, 0);
  }

  fdCount(expected: number, why = ''): void {
    const n = this.fds.length;
    if (n === expected) return;
    const want = expected === 0 ? 'none' : `exactly ${expected}`;
    this.fail(`carries ${n} fd${n === 1 ? '' : 's'}, expects ${want}${why}`);
  }

  fdRange(min: number, max: number): void {
    const n = this.fds.length;
    if (n < min || n > max) this.fail(`carries ${n} fds, expects ${min} to ${max}`);
  }
}
