// The 2023 RFC's shared-memory state protocol, back-end side (experimental extension, off by
// default; wire format in host/protocol/rfc-state-shm.ts, design in docs/migration.md).
//
// The front-end hands over a memfd "state area" (RFC_SET_STATE_AREA with a direction), then moves
// the state through it chunk by chunk:
//   SAVE: RFC_GET_STATE(offset, size) -> we place the next container bytes at area offset 0 and
//         answer {length, remaining};
//   LOAD: RFC_SET_STATE(offset, size) -> we take area[0, size) as the container's next bytes and
//         parse them at once (the same ContainerLoader as SET_DEVICE_STATE_FD: identical checks);
//   end:  RFC_SET_STATE_AREA size 0 / no fd detaches the area, and its reply is the final check
//         (SAVE: every byte was fetched; LOAD: the trailer's CRC matched and every section applied).
// Offsets are stream offsets and must come in order (the container is a checksummed stream); the
// container is produced by the same saveContainer as the fd channel, running ahead of the
// front-end by at most `lookahead` bytes.

import type { Mapping } from '../native/api.ts';
import { native } from '../native/index.ts';
import { errorText } from '../log/logger.ts';
import { ContainerLoader, saveContainer, type ByteSink } from './container.ts';
import { DeviceStateSection, STATE_CHUNK, type TransferContext } from './transfer.ts';

/** The mapped area. Takes the fd (closed once mapped: the mapping keeps the memory). */
export class StateArea {
  readonly size: number;
  private readonly mapping: Mapping;
  readonly bytes: Uint8Array;

  constructor(fd: number, size: number, offset: number, writable: boolean) {
    try {
      if (!Number.isSafeInteger(size) || size <= 0 || size > native.MAX_WINDOW) {
        throw new Error(`state area size ${size} is outside (0, ${native.MAX_WINDOW}]`);
      }
      if (!Number.isSafeInteger(offset) || offset < 0 || offset % 4096 !== 0) throw new Error(`state area offset ${offset} is not a page-aligned offset`);
      const st = native.fstat(fd);
      if (!st.isFile) throw new Error('the state area fd is not a memfd or regular file');
      if (st.size < offset + size) throw new Error(`the state area fd holds ${st.size} bytes, the area needs ${offset + size}`);
      this.mapping = native.mmap(fd, size, offset, writable);
    } finally {
      native.close(fd);
    }
    this.size = size;
    this.bytes = new Uint8Array(this.mapping.window(0, size));
  }

  unmap(): void {
    this.mapping.unmap();
  }
}

/** One RFC-style transfer; shaped like StateTransfer for the session (done, finished, abort, direction). */
export abstract class RfcShmTransfer {
  readonly done: Promise<string | null>;
  protected resolveDone!: (r: string | null) => void;
  private settled = false;
  protected failure: string | null = null;
  stats = { bytes: 0, ms: 0 };
  protected readonly start = performance.now();

  constructor(readonly direction: 'save' | 'load', protected area: StateArea | null) {
    this.done = new Promise((r) => (this.resolveDone = r));
    void this.done.then(() => (this.settled = true));
  }

  get finished(): boolean {
    return this.settled;
  }

  protected releaseArea(): void {
    this.area?.unmap();
    this.area = null;
  }

  protected settle(result: string | null): void {
    this.releaseArea();
    this.resolveDone(result);
  }

  /** Detach: ends the transfer; resolves with its outcome (null = success). */
  abstract detach(): Promise<string | null>;
  abstract abort(reason: string): void;
}

/** A ByteSink that queues container bytes for GET_STATE, holding saveContainer back past `limit`. */
class ChunkQueue implements ByteSink {
  private chunks: Uint8Array[] = [];
  private head = 0; // bytes of chunks[0] already taken
  queued = 0;
  /** Container length, from the header (first write). */
  total = -1;
  produced = 0;
  ended = false;
  error: Error | null = null;
  private producerWaiter: (() => void) | null = null;
  private consumerWaiter: (() => void) | null = null;

  constructor(private readonly limit: number) {}

  // saveContainer hands over fresh buffers it never reuses (worker results, encoded header and
  // trailer), so they are queued without a copy.
  async write(bytes: Uint8Array): Promise<void> {
    if (this.error) throw this.error;
    if (this.total < 0) {
      if (bytes.length < 32) throw new Error('container header shorter than its fixed part');
      this.total = Number(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(24, true));
    }
    this.chunks.push(bytes);
    this.queued += bytes.length;
    this.produced += bytes.length;
    this.wakeConsumer();
    while (this.queued >= this.limit && !this.error) await new Promise<void>((r) => (this.producerWaiter = r));
    if (this.error) throw this.error;
  }

  fail(e: Error): void {
    this.error ??= e;
    this.wakeProducer();
    this.wakeConsumer();
  }

  end(): void {
    this.ended = true;
    this.wakeConsumer();
  }

  private wakeProducer(): void {
    const w = this.producerWaiter;
    this.producerWaiter = null;
    w?.();
  }

  private wakeConsumer(): void {
    const w = this.consumerWaiter;
    this.consumerWaiter = null;
    w?.();
  }

  /** Waits for `want` bytes (or the end), then copies up to `want` into dst; returns the count. */
  async take(dst: Uint8Array, want: number): Promise<number> {
    while (this.queued < want && !this.ended && !this.error) await new Promise<void>((r) => (this.consumerWaiter = r));
    if (this.error) throw this.error;
    let n = 0;
    while (n < want && this.chunks.length > 0) {
      const c = this.chunks[0];
      const k = Math.min(want - n, c.length - this.head);
      dst.set(c.subarray(this.head, this.head + k), n);
      n += k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    this.queued -= n;
    if (this.queued < this.limit) this.wakeProducer();
    return n;
  }
}

export class RfcShmSave extends RfcShmTransfer {
  private readonly queue: ChunkQueue;
  private consumed = 0;
  private readonly producer: Promise<void>;
  private busy = false;

  constructor(area: StateArea, ctx: TransferContext, lookahead = Math.max(area.size, 4 * STATE_CHUNK)) {
    super('save', area);
    this.queue = new ChunkQueue(lookahead);
    const sections = [new DeviceStateSection(ctx.worker), ...(ctx.extraSections ?? [])];
    this.producer = saveContainer(this.queue, ctx.identity, sections, { chunkSize: STATE_CHUNK }).then(
      () => this.queue.end(),
      (e: unknown) => {
        const err = e instanceof Error ? e : new Error(String(e));
        this.failure ??= errorText(err);
        this.queue.fail(err);
      },
    );
  }

  /** GET_STATE: the container's bytes [offset, offset+n) at area offset 0; n and what remains after. */
  async getState(offset: number, size: number): Promise<{ length: number; remaining: number }> {
    if (this.area === null || this.finished) throw new Error('no state area is attached');
    if (this.busy) throw new Error('GET_STATE while another one runs');
    if (this.failure) throw new Error(this.failure);
    if (offset !== this.consumed) throw new Error(`GET_STATE at offset ${offset}: the state is a stream, the next offset is ${this.consumed}`);
    if (!Number.isSafeInteger(size) || size <= 0 || size > this.area.size) throw new Error(`GET_STATE size ${size} is outside (0, ${this.area.size}] (the area's size)`);
    this.busy = true;
    try {
      const n = await this.queue.take(this.area.bytes, size);
      this.consumed += n;
      return { length: n, remaining: this.queue.total - this.consumed };
    } finally {
      this.busy = false;
    }
  }

  async detach(): Promise<string | null> {
    if (this.finished) return this.done;
    if (this.failure === null && (this.queue.total < 0 || this.consumed < this.queue.total)) {
      this.failure = `the area was detached after ${this.consumed} of ${this.queue.total < 0 ? '?' : this.queue.total} state bytes`;
      this.queue.fail(new Error(this.failure));
    }
    await this.producer;
    this.stats = { bytes: this.consumed, ms: performance.now() - this.start };
    this.settle(this.failure);
    return this.done;
  }

  abort(reason: string): void {
    if (this.finished) return;
    this.failure ??= reason;
    this.queue.fail(new Error(reason));
    void this.producer.then(() => this.settle(this.failure));
  }
}

export class RfcShmLoad extends RfcShmTransfer {
  private readonly loader: ContainerLoader;
  private received = 0;
  private busy = false;

  constructor(area: StateArea, ctx: TransferContext) {
    super('load', area);
    this.loader = new ContainerLoader({
      identity: ctx.identity,
      sections: [new DeviceStateSection(ctx.worker), ...(ctx.extraSections ?? [])],
      warn: (m) => ctx.log.warn(m),
    });
  }

  /** SET_STATE: area[0, size) are the container's bytes [offset, offset+size); parsed before the reply. */
  async setState(offset: number, size: number): Promise<void> {
    if (this.area === null || this.finished) throw new Error('no state area is attached');
    if (this.busy) throw new Error('SET_STATE while another one runs');
    if (this.failure) throw new Error(this.failure);
    if (offset !== this.received) throw new Error(`SET_STATE at offset ${offset}: the state is a stream, the next offset is ${this.received}`);
    if (!Number.isSafeInteger(size) || size <= 0 || size > this.area.size) throw new Error(`SET_STATE size ${size} is outside (0, ${this.area.size}] (the area's size)`);
    this.busy = true;
    try {
      // The front-end reuses the area once we reply: the loader gets its own copy.
      await this.loader.feed(this.area.bytes.slice(0, size));
      this.received += size;
    } catch (e) {
      this.failure ??= errorText(e);
      throw e;
    } finally {
      this.busy = false;
    }
  }

  async detach(): Promise<string | null> {
    if (this.finished) return this.done;
    if (this.failure === null) {
      try {
        await this.loader.end();
      } catch (e) {
        this.failure = errorText(e);
      }
    } else {
      await this.loader.abort(new Error(this.failure)).catch(() => {});
    }
    this.stats = { bytes: this.received, ms: performance.now() - this.start };
    this.settle(this.failure);
    return this.done;
  }

  abort(reason: string): void {
    if (this.finished) return;
    this.failure ??= reason;
    void this.loader.abort(new Error(reason)).catch(() => {}).then(() => this.settle(this.failure));
  }
}
