// One device-state transfer, run in the background while the session keeps answering messages:
// SAVE pulls the device's state from its worker chunk by chunk into the container and out through
// the channel; LOAD reads the channel, parses the container as bytes arrive and pushes the device
// section into the worker. `done` settles with null (success) or the reason it failed, which is
// what CHECK_DEVICE_STATE reports.

import type { DeviceWorker } from '../device/worker-client.ts';
import { errorText, type Logger } from '../log/logger.ts';
import { native } from '../native/index.ts';
import { ownCopy } from '../device/typed-rpc.ts';
import { StateReader, StateWriter } from './channel.ts';
import { ContainerLoader, saveContainer, type StateIdentity } from './container.ts';
import { SectionId, type StateSection } from './section.ts';

export const STATE_CHUNK = 1 << 20;

/**
 * A chunk the RPC can move to the worker instead of cloning. A view that does not own its whole
 * buffer (a pipe read carved from a 1 MiB slab, a section's bytes after the header in the same
 * read) would be cloned with ALL of its buffer: structured clone copies the whole ArrayBuffer
 * behind a view, so a 64 KiB read cost a 1 MiB copy on each side. One copy of just its bytes
 * into a buffer of their own is cheaper, and that buffer is then transferred.
 */
function movable(chunk: Uint8Array): Uint8Array {
  return chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength ? chunk : ownCopy(chunk);
}

/** The device's own bytes, through the worker's stateRead/stateWrite ops. */
export class DeviceStateSection implements StateSection {
  readonly id = SectionId.DEVICE;
  readonly name = 'device';
  private total = -1;
  private first: Uint8Array | null = null;
  private inflight: Promise<void>[] = [];
  private inflightBytes = 0;
  private writeError: Error | null = null;

  constructor(
    private readonly worker: DeviceWorker,
    private readonly chunkSize = STATE_CHUNK,
    /** LOAD: bytes posted to the worker before waiting for it to catch up. */
    private readonly window = 8 << 20,
  ) {}

  async size(): Promise<number> {
    const r = await this.worker.stateRead(0, this.chunkSize);
    this.total = r.bytes.length + r.remaining;
    this.first = r.bytes;
    return this.total;
  }

  async read(offset: number, len: number): Promise<Uint8Array> {
    if (offset === 0 && this.first !== null && this.first.length === len) {
      const b = this.first;
      this.first = null;
      return b;
    }
    this.first = null;
    const r = await this.worker.stateRead(offset, len);
    if (offset + r.bytes.length + r.remaining !== this.total) {
      throw new Error(`the device's state changed size during the save: ${this.total} bytes, now ${offset + r.bytes.length + r.remaining}`);
    }
    return r.bytes;
  }

  async beginLoad(size: number): Promise<void> {
    this.total = size;
  }

  async write(offset: number, chunk: Uint8Array): Promise<void> {
    if (this.writeError) throw this.writeError;
    const n = chunk.length;
    const p = this.worker.stateWrite(offset, movable(chunk)).then(
      () => {
        this.inflightBytes -= n;
      },
      (e: unknown) => {
        this.inflightBytes -= n;
        this.writeError ??= new Error(`the device refused state bytes at offset ${offset}: ${errorText(e)}`);
      },
    );
    this.inflight.push(p);
    this.inflightBytes += n;
    while (this.inflightBytes > this.window && this.inflight.length > 0) await this.inflight.shift();
    if (this.writeError) throw this.writeError;
  }

  private async drain(): Promise<void> {
    await Promise.all(this.inflight.splice(0));
    if (this.writeError) throw this.writeError;
  }

  async finish(): Promise<string | null> {
    await this.drain();
    return this.worker.stateFinish();
  }

  async abort(): Promise<void> {
    await Promise.all(this.inflight.splice(0));
    if (!this.worker.dead) await this.worker.stateAbort();
  }
}

/**
 * Read size for worker-held sections (a memory disk): a quarter of the round trips and channel
 * writes of 1 MiB reads, still small next to the disk.
 */
export const WORKER_SECTION_CHUNK = 4 << 20;

/** A section that lives in the device worker (WorkerStateSection), reached through the RPC. */
export class WorkerSectionProxy implements StateSection {
  readonly readSize = WORKER_SECTION_CHUNK;
  private inflight: Promise<void>[] = [];
  private writeError: Error | null = null;

  constructor(
    private readonly worker: DeviceWorker,
    readonly id: number,
    readonly name: string,
    /** Size reported by stateBegin (SAVE). */
    private readonly total: number,
  ) {}

  async size(): Promise<number> {
    return this.total;
  }

  async read(offset: number, len: number): Promise<Uint8Array> {
    const r = await this.worker.stateRead(offset, len, this.id);
    return r.bytes;
  }

  /** Set by the session for the memory disk (its memfd, on the main thread): see StateSection. */
  spliceSource?: StateSection['spliceSource'];

  // A state file (memfd): the worker maps it and copies the section in or out itself.
  copyToFile(fd: number, fileOffset: number, len: number, crc: number): Promise<number> {
    return this.worker.stateSectionToFile(this.id, fd, fileOffset, len, crc);
  }

  /** Set by the session for the memory disk: see StateSection. */
  copyFromPipe?: StateSection['copyFromPipe'];

  /** Set by the session for the memory disk (it becomes servable): see StateSection. */
  commit?: StateSection['commit'];

  async copyFromFile(fd: number, fileOffset: number, len: number, crc: number): Promise<number> {
    await Promise.all(this.inflight.splice(0));
    if (this.writeError) throw this.writeError;
    return this.worker.stateSectionFromFile(this.id, fd, fileOffset, len, crc);
  }

  beginLoad(size: number): Promise<void> {
    return this.worker.stateBeginLoad(this.id, size);
  }

  async write(offset: number, chunk: Uint8Array): Promise<void> {
    if (this.writeError) throw this.writeError;
    this.inflight.push(
      this.worker.stateWrite(offset, movable(chunk), this.id).catch((e: unknown) => {
        this.writeError ??= new Error(`section ${this.name} refused bytes at offset ${offset}: ${errorText(e)}`);
      }),
    );
    if (this.inflight.length > 8) await this.inflight.shift();
    if (this.writeError) throw this.writeError;
  }

  async finish(): Promise<string | null> {
    await Promise.all(this.inflight.splice(0));
    if (this.writeError) throw this.writeError;
    return this.worker.stateFinish(this.id);
  }

  async abort(): Promise<void> {
    await Promise.all(this.inflight.splice(0));
    if (!this.worker.dead) await this.worker.stateAbort(this.id);
  }
}

export interface TransferContext {
  worker: DeviceWorker;
  identity: StateIdentity;
  /** Host-held resources saved next to the device's bytes (none yet). */
  extraSections?: StateSection[];
  log: Logger;
  /** Capacity asked for a state pipe (F_SETPIPE_SZ; 0 leaves it alone); default STATE_PIPE_SIZE. */
  pipeBytes?: number;
}

export interface TransferStats {
  bytes: number;
  ms: number;
}

export class StateTransfer {
  readonly done: Promise<string | null>;
  private settled = false;
  private abortReason: Error | null = null;
  private channel: StateWriter | StateReader | null = null;
  private loader: ContainerLoader | null = null;
  stats: TransferStats = { bytes: 0, ms: 0 };

  private constructor(readonly direction: 'save' | 'load', run: (t: StateTransfer) => Promise<void>) {
    this.done = run(this).then(
      () => null,
      (e: unknown) => (this.abortReason ? errorText(this.abortReason) : errorText(e)),
    ).finally(() => {
      this.settled = true;
    });
  }

  get finished(): boolean {
    return this.settled;
  }

  /** Stops a running transfer (disconnect, replaced); `done` then settles with the reason. */
  abort(reason: string): void {
    if (this.settled || this.abortReason) return;
    this.abortReason = new Error(reason);
    this.channel?.close(this.abortReason);
    void this.loader?.abort(this.abortReason);
  }

  /** SAVE into the front-end's fd (pipe: streamed; memfd/file: written at offsets, then cut). Takes fd. */
  static save(fd: number, ctx: TransferContext): StateTransfer {
    let writer: StateWriter;
    try {
      writer = new StateWriter(fd, ctx.pipeBytes);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    return new StateTransfer('save', async (t) => {
      t.channel = writer;
      const start = performance.now();
      try {
        const sections = [new DeviceStateSection(ctx.worker), ...(ctx.extraSections ?? [])];
        const r = await saveContainer(writer, ctx.identity, sections, { chunkSize: STATE_CHUNK });
        writer.end();
        t.stats = { bytes: r.totalLength, ms: performance.now() - start };
        ctx.log.info(`device state saved: ${r.totalLength} bytes (${r.sections.map((s) => `${s.name} ${s.length}`).join(', ')}) through a ${writer.kind} in ${t.stats.ms.toFixed(1)} ms`);
      } finally {
        writer.close();
      }
    });
  }

  /** LOAD from the front-end's fd. Takes fd. */
  static load(fd: number, ctx: TransferContext): StateTransfer {
    let reader: StateReader;
    try {
      reader = new StateReader(fd, STATE_CHUNK, ctx.pipeBytes);
    } catch (e) {
      native.close(fd);
      throw e;
    }
    return new StateTransfer('load', async (t) => {
      t.channel = reader;
      const start = performance.now();
      const loader = new ContainerLoader({
        identity: ctx.identity,
        sections: [new DeviceStateSection(ctx.worker), ...(ctx.extraSections ?? [])],
        warn: (m) => ctx.log.warn(m),
      });
      t.loader = loader;
      try {
        for (;;) {
          // A file: a section that can take its bytes straight from it does (no copies through
          // this thread), and reads are sized to what the parser wants next (a pipe's too), so
          // a section's chunks are buffers of their own that move to the worker without a copy.
          if (reader.kind === 'file') {
            const d = loader.directSection();
            if (d !== null && reader.remaining >= d.length) {
              await loader.takeDirect(reader.fd, reader.position);
              reader.skip(d.length);
              continue;
            }
          }
          // A pipe: a section that splices its bytes out of it itself (the memory disk) does;
          // reads are sized to what the parser wants, so none of its bytes were read before.
          if (reader.kind === 'pipe' && loader.directSection('pipe') !== null) {
            await loader.takeDirect(reader);
            continue;
          }
          const chunk = await reader.read(loader.wants());
          if (chunk === null) break;
          await loader.feed(chunk);
        }
        await loader.end();
        t.stats = { bytes: loader.bytesReceived, ms: performance.now() - start };
        ctx.log.info(`device state loaded: ${loader.bytesReceived} bytes through a ${reader.kind} in ${t.stats.ms.toFixed(1)} ms`);
      } catch (e) {
        await loader.abort(e instanceof Error ? e : new Error(String(e)));
        throw e;
      } finally {
        reader.close();
      }
    });
  }
}
