// A device as the server sees it: where it comes from, and the worker currently running it.
// A worker that died (watchdog, plugin crash) is replaced by a fresh one the next time a
// front-end connects or resets the device, so one bad request costs a reset, not the daemon.
// A memory:SIZE disk is the slot's too (a memfd every queue thread maps): it outlives workers.

import { close, fstatSync } from 'node:fs';
import { DeviceWorker } from '../device/worker-client.ts';
import { createMemoryDisk, isStorageSpec } from '../storage/index.ts';
import { preallocateMemoryDisk, type PageMaking } from '../storage/prealloc.ts';
import { DirtyBlocks } from '../storage/dirty-blocks.ts';
import { native, type Mapping } from '../native/index.ts';
import type { DeviceSource } from '../device/rpc.ts';
import type { DeviceInfo } from '../device/device.ts';
import { DeviceMeter } from '../metrics/device-meter.ts';
import { NO_THROTTLE, TokenBucket } from '../limits/token-bucket.ts';
import { sharedModules } from '../plugin/compiled-modules.ts';
import { DEFAULT_MEMORY_LIMIT } from '../plugin/load.ts';
import { hostSwitch, type DeviceLink } from '../net/switch.ts';
import type { NetStats } from '../net/link.ts';
import { releaseForDevice, reserveForDevice } from '../resources/fd-budget.ts';
import { errorText } from '../log/logger.ts';
import { makeDiskViews, type DiskCondition, type MemoryDiskHandle } from '../migration/precopy.ts';
import { newMappedReadsStop } from '../io/mapped-reads.ts';
import { ADOPTION_UNCONFIRMED, DISK_GIVEN_AWAY, HANDOVER_UNFINISHED } from '../migration/disk-handover.ts';

/**
 * A worker that failed to start is not started again before this wait, doubling per failure in
 * a row: a front-end that reconnects every second (QEMU's reconnect=1) would otherwise rebuild a
 * worker (a plugin load: tens of ms of CPU and its memory) every second, forever. Connections
 * meanwhile are closed at once. device-del, set-limits and a plugin-upgrade (which replaces the
 * plugin of a device with no worker once the new build passed its checks: plugin-upgrade.ts)
 * end the wait.
 */
export const START_BACKOFF_FIRST_MS = 1000;

/** How long after a disk hand-over became final the destination's own disk is closed (commitAdoptedDisk). */
const RETIRE_DISK_AFTER_MS = 1000;
export const START_BACKOFF_MAX_MS = 60_000;

/** A device whose worker failed to start and is not started again before `until` (performance.now()). */
export interface StartBackoff {
  /** Failed starts in a row. */
  failures: number;
  /** The wait after the last one. */
  waitMs: number;
  until: number;
}

export interface DeviceSlotOptions {
  label: string;
  callDeadlineMs: number;
  /** Deadline for the device's own code while it is built (see DeviceWorkerOptions). */
  loadDeadlineMs?: number;
  /** --queue-threads (see DeviceWorkerOptions.queueThreads). */
  queueThreads?: number;
  /** --poll-max-ns (see DeviceWorkerOptions.pollMaxNs). */
  pollMaxNs?: number;
  /** The I/O throttle (the device's own or its group's), kept across workers. */
  throttle?: TokenBucket;
  /** --network: the names of the networks the device joins, in grant order. */
  networks?: readonly string[];
  /** --network-rate: a limit on what the device sends on its networks. */
  networkRate?: TokenBucket;
}

export class DeviceSlot {
  private worker: DeviceWorker | null = null;
  private starting: Promise<DeviceWorker> | null = null;
  /** Workers that were terminated but whose thread has not exited (blocked in a system call). */
  private readonly stuck = new Set<DeviceWorker>();
  private closed = false;
  /** Workers started for this device (the first, then one per restart after a failure). */
  private starts = 0;
  /** Why the last worker that died stopped (watchdog, crash), for device-stats. */
  private lastFailure: string | null = null;
  /** Where workers come from; a live upgrade (replaceWorker) points it at the new plugin. */
  source: DeviceSource;
  /** A plugin-upgrade in progress: a second one is refused. */
  private upgrading = false;
  /** Sessions that lent the memory disk to another host (DISK_FD SAVE) and have not ended. */
  private diskLends = 0;
  /** An upgrade with no front-end connected: a front-end arriving meanwhile waits for its outcome. */
  private idleUpgrade: Promise<unknown> | null = null;
  /** The memory disk's memfd (--storage memory:SIZE), or null. */
  private memoryDisk: number | null = null;
  /** Its dirty-block map, shared with every thread that writes it (pre-copy, docs/migration.md). */
  private memoryDiskDirty: DirtyBlocks | null = null;
  /**
   * Pre-copy's auto-converge throttle for a writable memory disk (migration/auto-converge.ts):
   * unlimited except while a pre-copy that does not converge runs; kept across workers.
   */
  private converge: TokenBucket | null = null;
  /** The disk mapped in this (the main) thread, made on first use by a pre-copy and kept: a mapping per round would fault every page in again. */
  private memoryDiskMapping: Mapping | null = null;
  /** memoryDiskMapping is prealloc=on's, populated writable at start (a LOAD from a pipe may read straight into it). */
  private memoryDiskResident = false;
  /** prealloc=on page making under way (prealloc.ts), or null. */
  private pageMaking: PageMaking | null = null;
  /** Settles when the memory disk's pages exist (at once without prealloc=on); rejects in words. */
  private pagesReady: Promise<void> = Promise.resolve();
  /** Whether the memory disk's bytes may be served (a LOAD that failed after it wrote them: not). */
  private readonly memoryDiskCondition: DiskCondition = { unusable: null };
  /**
   * Disk hand-over (destination, disk-handover.ts): while an adopted memfd waits for its
   * DISK_FINAL state, the slot's own disk and its condition then, to go back to if the migration
   * does not complete.
   */
  private ownDisk: { fd: number; unusable: string | null } | null = null;
  /** The own disk a completed hand-over replaced, until it is closed (commitAdoptedDisk). */
  private retiredDisk: number | null = null;
  /** What the device has done (metrics): kept across its workers and connections. */
  readonly meter = new DeviceMeter();
  /** The tmpfs mapped reads' stop cell of every worker this device runs (startWorker). */
  private readonly mappedReadsStop = newMappedReadsStop();
  /** Its ports on the host's switch (--network), kept across its workers: port numbers stay. */
  private readonly link: DeviceLink | null;
  /**
   * The fds kept out of the share budget for this device (reserveForDevice), once a worker has
   * started and its queue count is known: a device that starts on its first connection reserves
   * then, and one never connected holds none.
   */
  private reserved: { queues: number; threads: number } | null = null;
  /** Set while a failed start is not retried (START_BACKOFF_FIRST_MS). */
  private backoff: StartBackoff | null = null;
  /** A worker has served this device at some point (false: never, e.g. one that starts on connect and had no front-end yet). */
  private everStarted = false;
  /** What the last worker that served the device described (kept after it died: a repair must keep the device the same). */
  private served: DeviceInfo | null = null;

  constructor(
    source: DeviceSource,
    readonly opts: DeviceSlotOptions,
  ) {
    // The network first: a grant that cannot be served throws before anything else is made.
    this.link = opts.networks && opts.networks.length > 0 ? hostSwitch().attach(opts.label, opts.networks, opts.networkRate) : null;
    const storage = source.kind === 'plugin' ? source.options?.storage : undefined;
    if (isStorageSpec(storage) && storage.kind === 'memory' && storage.size > 0) {
      // A memfd given with the spec is one a host handover brought (takeover.ts): this slot owns
      // it from now on, as if it had made it, so that the next handover passes it on again.
      this.memoryDisk = storage.fd ?? createMemoryDisk(storage.size);
      if (storage.prealloc) {
        let making;
        try {
          // The memory check throws now; the pages themselves are made off the main thread
          // (prealloc.ts), and mapped in this thread (a LOAD, a SAVE and pre-copy use this mapping)
          // in one MADV_POPULATE_WRITE: nothing the disk does later waits for a page to be made.
          making = preallocateMemoryDisk(this.memoryDisk, storage.size);
        } catch (e) {
          // A handed-over memfd is this slot's from the start too (main.ts).
          native.close(this.memoryDisk);
          this.memoryDisk = null;
          this.link?.close();
          throw e;
        }
        this.pageMaking = making;
        this.pagesReady = making.done.then(
          (mapping) => {
            this.pageMaking = null;
            // Removed while its pages were made: the work's mapping is nobody's.
            if (this.closed) mapping.unmap();
            else {
              this.memoryDiskMapping = mapping;
              this.memoryDiskResident = true;
              makeDiskViews(mapping);
            }
          },
          (e: unknown) => {
            this.pageMaking = null;
            throw e;
          },
        );
        // Awaited by prepared(); a slot closed before anyone asked must not crash the process.
        this.pagesReady.catch(() => {});
      }
      this.memoryDiskDirty = storage.readOnly ? null : DirtyBlocks.create(storage.size);
      this.converge = storage.readOnly ? null : TokenBucket.create(NO_THROTTLE);
      const dirty = this.memoryDiskDirty?.buffer;
      source = { ...source, options: { ...source.options, storage: { ...storage, fd: this.memoryDisk, ...(dirty ? { dirty } : {}) } } };
    }
    this.source = source;
  }

  /** What the device's network ports carried (null without a network grant). */
  netStats(): NetStats | null {
    return this.link?.stats() ?? null;
  }

  /**
   * The memory disk as the main thread sees it (its memfd, borrowed, and its dirty-block map):
   * a pre-copy moves its blocks with the kernel's copy, not through the worker. Null without a
   * writable memory disk.
   */
  get memoryDiskHandle(): MemoryDiskHandle | null {
    const fd = this.memoryDisk;
    const dirty = this.memoryDiskDirty;
    if (fd === null || dirty === null) return null;
    return {
      fd,
      condition: this.memoryDiskCondition,
      size: dirty.diskSize,
      dirty,
      mapping: () => (this.memoryDiskMapping ??= native.mmap(fd, dirty.diskSize, 0, true)),
      resident: this.memoryDiskResident,
      ...(this.converge ? { converge: this.converge } : {}),
    };
  }

  /**
   * The running worker, starting a fresh one if there is none or the last one died.
   * `forConnection`: for a front-end that just connected, which is refused at once while a
   * failed start waits (START_BACKOFF_FIRST_MS); a connected front-end's RESET_DEVICE is not
   * (it is one front-end's own retry, answered with the start's own error).
   */
  async acquire(forConnection = false): Promise<DeviceWorker> {
    if (this.closed) throw new Error(`device ${this.opts.label}: the host is shutting down`);
    // No worker maps a prealloc=on disk before its pages exist.
    await this.prepared();
    // A front-end connecting while the idle device is upgraded gets the worker the upgrade leaves.
    while (this.idleUpgrade) await this.idleUpgrade.catch(() => {});
    if (this.worker && !this.worker.dead) return this.worker;
    if (this.worker) {
      const old = this.worker;
      this.worker = null;
      this.lastFailure = old.dead;
      // A dead worker's thread normally exits at once; one that does not is left behind (and
      // reported at shutdown) so that the device can be served again by a fresh one.
      if (!(await old.exitedWithin())) this.keepStuck(old);
    }
    if (!this.starting) {
      const b = this.backoff;
      if (forConnection && b !== null && performance.now() < b.until) {
        const left = Math.ceil((b.until - performance.now()) / 1000);
        throw new Error(
          `device ${this.opts.label}: its worker failed to start ${b.failures} time(s) in a row (${this.lastFailure ?? 'unknown'}); not retried for another ${left} s (waits double up to ${START_BACKOFF_MAX_MS / 1000} s); set-limits (any limit), or device-del and device-add, retry at once`,
        );
      }
      this.starts++;
      this.meter.workerStarts++;
      this.starting = this.startWorker(this.source)
        .then((w) => {
          this.reserve(w);
          this.backoff = null;
          return w;
        })
        .catch((e: unknown) => {
          // device-stats says why (a plugin that traps in its start, on a device started on connect).
          this.lastFailure = `did not start: ${errorText(e)}`;
          this.meter.fault('start-failed');
          const failures = (this.backoff?.failures ?? 0) + 1;
          const waitMs = Math.min(START_BACKOFF_MAX_MS, START_BACKOFF_FIRST_MS * 2 ** Math.min(failures - 1, 16));
          this.backoff = { failures, waitMs, until: performance.now() + waitMs };
          throw e;
        })
        .finally(() => {
          this.starting = null;
        });
    }
    const w = await this.starting;
    if (this.closed) {
      // Shutdown began while it loaded: it is nobody's to serve.
      void w.terminate();
      throw new Error(`device ${this.opts.label}: the host is shutting down`);
    }
    this.install(w);
    this.everStarted = true;
    return w;
  }

  /**
   * Resolves once what the device needs before it may serve exists: a prealloc=on memory
   * disk's pages (made off the main thread: other devices are served meanwhile). Rejects with
   * the page making's error, or if the slot was closed meanwhile.
   */
  async prepared(): Promise<void> {
    await this.pagesReady;
    if (this.closed) throw new Error(`device ${this.opts.label}: removed while its memory disk's pages were being made`);
  }

  /**
   * The device is not to be served (removed while it was being added): page making under way
   * stops, and prepared()/acquire() fail; close() (the add's own cleanup) releases the rest.
   */
  abandon(): void {
    this.closed = true;
    this.pageMaking?.cancel();
  }

  /** Its prealloc=on memory disk's pages are being made (the device does not serve yet). */
  get preparing(): boolean {
    return this.pageMaking !== null;
  }

  /**
   * While its prealloc=on memory disk's pages are being made: the disk's size and the bytes of
   * pages its memfd holds so far (what the kernel counts, read now), for device-stats; else null.
   */
  pageProgress(): { diskBytes: number; madeBytes: number } | null {
    const disk = this.memoryDiskFd;
    if (this.pageMaking === null || disk === null) return null;
    let made = 0;
    try {
      made = fstatSync(disk.fd).blocks * 512;
    } catch {
      // closed by a removal meanwhile: nothing made that counts
    }
    return { diskBytes: disk.size, madeBytes: Math.min(made, disk.size) };
  }

  /** The first worker's queues and threads are kept out of the fd budget; later ones are the same device. */
  private reserve(w: DeviceWorker): void {
    if (this.reserved !== null || this.closed) return;
    reserveForDevice(w.info.numQueues, w.threadCount);
    this.reserved = { queues: w.info.numQueues, threads: w.threadCount };
  }

  /** No worker has served this device yet (it starts on its first connection). */
  get neverStarted(): boolean {
    return !this.everStarted && this.worker === null;
  }

  /**
   * The source with the plugin's core modules compiled once for the process (compiled-modules.ts),
   * so every device and queue thread of one plugin shares its machine code.
   */
  private async withSharedModules(s: DeviceSource): Promise<DeviceSource> {
    if (s.kind !== 'plugin') return s;
    const o = s.options ?? {};
    const limit = typeof o.memoryLimitBytes === 'number' ? o.memoryLimitBytes : DEFAULT_MEMORY_LIMIT;
    const modules = await sharedModules(s.path, limit, typeof o.cacheDir === 'string' ? o.cacheDir : undefined);
    return modules ? { ...s, options: { ...o, compiledModules: modules } } : s;
  }

  /** A worker from `source` with this device's limits (not made the slot's: see replaceWorker). */
  async startWorker(source: DeviceSource): Promise<DeviceWorker> {
    const link = this.link;
    let generation = 0;
    const w = await DeviceWorker.start(await this.withSharedModules(source), {
      label: this.opts.label,
      callDeadlineMs: this.opts.callDeadlineMs,
      loadDeadlineMs: this.opts.loadDeadlineMs,
      queueThreads: this.opts.queueThreads,
      pollMaxNs: this.opts.pollMaxNs,
      // One for the device, not per worker: a plugin upgrade's new instance must see a hole
      // the old one punched (host/io/mapped-reads.ts).
      mappedReadsStop: this.mappedReadsStop,
      meterCells: (thread) => this.meter.cellsFor(thread),
      throttle: this.opts.throttle?.buffer,
      ...(this.converge ? { converge: this.converge.buffer } : {}),
      ...(link
        ? {
            net: () => {
              const init = link.connect();
              generation = link.generation;
              return init;
            },
          }
        : {}),
    });
    if (link) {
      // A worker killed by the watchdog or crashed takes no frames: they count as "not running", not as a full inbox.
      this.linkGenerations.set(w, generation);
      void w.exited.then(() => link.workerGone(generation));
    }
    return w;
  }

  /** Which of the link's connections each worker has (workers started beside a running one get their own). */
  private readonly linkGenerations = new WeakMap<DeviceWorker, number>();

  /** `w` serves the device now: its frames go to it (a worker started beside it does not take them before). */
  private install(w: DeviceWorker): void {
    this.worker = w;
    this.served = w.info;
    const g = this.linkGenerations.get(w);
    if (g !== undefined) this.link?.activate(g);
  }

  /**
   * Runs a plugin-upgrade: refused while another runs or a worker is being started. `idle`: no
   * front-end is connected, and acquire() waits for the outcome. `run` ends with replaceWorker
   * or leaves the slot as it was.
   */
  async upgrade<T>(idle: boolean, run: () => Promise<T>): Promise<T> {
    if (this.closed) throw new Error(`device ${this.opts.label}: the host is shutting down`);
    if (this.upgrading) throw new Error(`device ${this.opts.label}: an upgrade is already running; wait for its answer`);
    if (this.starting) throw new Error(`device ${this.opts.label}: its worker is being started; retry in a moment`);
    const handover = this.diskHandoverUnderWay;
    if (handover !== null) throw new Error(`device ${this.opts.label}: ${handover}; upgrade once it has ended`);
    this.upgrading = true;
    const p = run();
    if (idle) this.idleUpgrade = p;
    try {
      return await p;
    } finally {
      this.upgrading = false;
      if (idle) this.idleUpgrade = null;
    }
  }

  /** A plugin-upgrade runs: a disk hand-over into this device waits for its answer. */
  get upgradeRunning(): boolean {
    return this.upgrading;
  }

  /** A session lent the memory disk to another host (DISK_FD SAVE); the returned call ends that (the session ended). */
  lendDisk(): () => void {
    this.diskLends++;
    let done = false;
    return () => {
      if (!done) this.diskLends--;
      done = true;
    };
  }

  /**
   * Why a plugin-upgrade or a host take-over must wait (null: neither waits): a disk hand-over
   * into this device (an adopted memfd not yet final), or out of it (its memfd lent to another
   * host by a connection still open): either would move or restart the worker under it.
   */
  get diskHandoverUnderWay(): string | null {
    if (this.ownDisk !== null) return 'a disk hand-over into this device is under way (an adopted memfd waits for its migration to complete)';
    if (this.diskLends > 0) return 'a disk hand-over out of this device is under way (its memory disk was lent to another host by the connected front-end; it ends with that connection)';
    return null;
  }

  /** Why the memory disk must not be served (a LOAD failed after it began writing it), or null. */
  get memoryDiskUnusable(): string | null {
    return this.memoryDiskCondition.unusable;
  }

  /** The memory disk went to another host by a disk hand-over: nothing here may serve, save or load it. */
  get memoryDiskGivenAway(): boolean {
    return this.memoryDiskCondition.givenAway === true;
  }

  /** The memory disk (--storage memory:SIZE) this slot made: its memfd and size, for a host handover. */
  get memoryDiskFd(): { fd: number; size: number } | null {
    if (this.memoryDisk === null) return null;
    const st = this.source.kind === 'plugin' ? this.source.options?.storage : undefined;
    return isStorageSpec(st) && st.kind === 'memory' ? { fd: this.memoryDisk, size: st.size } : null;
  }

  /**
   * Disk hand-over, destination: `fd` (checked by the caller, owned by the slot from now on)
   * becomes the memory disk, not served until commitAdoptedDisk; the slot's own is kept for
   * revertAdoptedDisk. Workers started from now on map `fd`; the caller ends the one that maps
   * the old disk. The main thread's mapping of the old disk (and the views made of it) goes:
   * the new one is mapped when first used.
   */
  adoptMemoryDisk(fd: number): void {
    if (this.memoryDisk === null || this.memoryDiskDirty === null) throw new Error(`device ${this.opts.label} has no writable memory disk to replace`);
    if (this.ownDisk !== null) throw new Error('a disk hand-over is already waiting for its DISK_FINAL state');
    if (this.pageMaking !== null) throw new Error('the memory disk\'s pages are still being made (prealloc=on): retry once the device serves');
    this.ownDisk = { fd: this.memoryDisk, unusable: this.memoryDiskCondition.unusable };
    this.installDisk(fd);
    this.memoryDiskCondition.unusable = HANDOVER_UNFINISHED;
  }

  /** A disk hand-over waits for its DISK_FINAL state. */
  get adoptingDisk(): boolean {
    return this.ownDisk !== null;
  }

  /**
   * The DISK_FINAL state applied: the adopted disk may be served (rings may start), but the
   * adoption stays undoable until one does (commitAdoptedDisk): a migration that fails after
   * the LOAD (the destination's ring start) resumes the source on the same memfd, and this
   * host must not keep serving it then.
   */
  adoptedDiskLoaded(): void {
    if (this.ownDisk !== null) this.memoryDiskCondition.unusable = null;
  }

  /**
   * A ring starts on the adopted disk: it is this device's for good; the slot's own disk is
   * closed (the worker that mapped it was ended at the adoption).
   */
  commitAdoptedDisk(warn: (message: string) => void): void {
    if (this.ownDisk === null) return;
    // The last reference to a disk whose pages exist frees them all in close(2), ~40 ms of CPU
    // for 256 MiB measured: on this thread it fell inside the stopped rings, and in libuv's pool
    // right away it took a core from the ring start (two cores here). So a second later, off
    // this thread. One still waiting (a second hand-over within that second) goes now.
    const retire = (fd: number) =>
      close(fd, (e) => {
        // Not closed again another way: by now the number may be another fd's.
        if (e) warn(`the memory disk a hand-over replaced (fd ${fd}) did not close: ${errorText(e)}`);
      });
    if (this.retiredDisk !== null) retire(this.retiredDisk);
    const own = this.ownDisk.fd;
    this.retiredDisk = own;
    setTimeout(() => {
      if (this.retiredDisk !== own) return;
      this.retiredDisk = null;
      retire(own);
    }, RETIRE_DISK_AFTER_MS).unref();
    this.ownDisk = null;
    this.memoryDiskCondition.unusable = null;
  }

  /**
   * The migration did not complete (its front-end went away): the worker that maps the adopted
   * memfd is ended, the slot's own disk comes back as it was, and the adopted memfd is closed
   * (it stays the source's: nothing here wrote it, no ring started on it). The next connection
   * starts a worker on the own disk. `endWorker` false: the slot's worker still maps the own
   * disk (the adoption failed before a worker on the new one served).
   */
  async revertAdoptedDisk(endWorker = true): Promise<void> {
    const own = this.ownDisk;
    if (own === null) return;
    if (endWorker) {
      const w = this.worker;
      this.worker = null;
      if (w !== null) await w.terminate();
    }
    const adopted = this.memoryDisk;
    this.installDisk(own.fd);
    this.ownDisk = null;
    this.memoryDiskCondition.unusable = own.unusable;
    if (adopted !== null) native.close(adopted);
  }

  /**
   * Disk hand-over, source: the disk went to another host (a DISK_FINAL state was saved and its
   * front-end left without restarting a ring here). Its memfd is that host's now: nothing here
   * may serve, save, load or hand it over again.
   */
  giveAwayMemoryDisk(): void {
    this.memoryDiskCondition.unusable = DISK_GIVEN_AWAY;
    this.memoryDiskCondition.givenAway = true;
  }

  /**
   * Disk hand-over, destination: the adopting front-end went away with the adopted disk's rings
   * started and not stopped in order (dispatch.ts, release()): its source may serve the same
   * memfd again, so nothing here serves, saves, loads or hands it over any more.
   */
  distrustAdoptedDisk(): void {
    this.memoryDiskCondition.unusable = ADOPTION_UNCONFIRMED;
    this.memoryDiskCondition.givenAway = true;
  }

  /** `fd` is the memory disk from now on (the previous one is the caller's). */
  private installDisk(fd: number): void {
    this.memoryDiskMapping?.unmap();
    this.memoryDiskMapping = null;
    // Its pages are the source's; mapped here on first use, not populated at start.
    this.memoryDiskResident = false;
    this.memoryDisk = fd;
    if (this.source.kind === 'plugin') {
      const storage = this.source.options?.storage;
      if (isStorageSpec(storage) && storage.kind === 'memory') this.source = { ...this.source, options: { ...this.source.options, storage: { ...storage, fd } } };
    }
  }

  /** The worker serving now, if it runs (an idle upgrade replaces it). */
  get current(): DeviceWorker | null {
    return this.worker && !this.worker.dead ? this.worker : null;
  }

  /** The upgrade's new worker serves from now on, and later workers come from `source`. */
  replaceWorker(w: DeviceWorker, source: DeviceSource): void {
    if (this.closed) {
      void w.terminate();
      throw new Error(`device ${this.opts.label}: the host is shutting down`);
    }
    // A worker that died is replaced here rather than by acquire() (an upgrade repairing the
    // device): the same bookkeeping. A live one is the upgrade's to end.
    const prev = this.worker;
    if (prev !== null && prev !== w && prev.dead !== null) {
      this.lastFailure = prev.dead;
      void prev.exitedWithin().then((exited) => {
        if (!exited) this.keepStuck(prev);
      });
    }
    this.install(w);
    this.source = source;
    this.backoff = null;
    this.starts++;
    this.meter.workerStarts++;
    this.everStarted = true;
    this.reserve(w);
  }

  /**
   * An upgrade of a device with no worker: later workers come from `source`, none runs now. What
   * failed before was the old build's: the device waits for its next connection as one never started.
   */
  replaceSource(source: DeviceSource): void {
    if (this.closed) throw new Error(`device ${this.opts.label}: the host is shutting down`);
    this.source = source;
    this.backoff = null;
    this.lastFailure = null;
  }

  /** What the last worker that served this device described, or null if none has. */
  get lastInfo(): DeviceInfo | null {
    return this.served;
  }

  /** The next connection starts a worker at once, whatever failed before (set-limits: the operator changed something). */
  endStartBackoff(): void {
    this.backoff = null;
  }

  private keepStuck(w: DeviceWorker): void {
    this.stuck.add(w);
    void w.exited.then(() => this.stuck.delete(w));
  }

  /**
   * Workers started, and why the device last failed (null: never, or it is failed now: see
   * running); startBackoff: failed starts in a row and the seconds left before the next try (0: the next connection tries).
   */
  stats(): { workerStarts: number; running: boolean; failure: string | null; startBackoff: { failures: number; retryInSeconds: number } | null } {
    const w = this.worker;
    const b = this.backoff;
    const startBackoff = b === null ? null : { failures: b.failures, retryInSeconds: Math.max(0, Math.ceil((b.until - performance.now()) / 1000)) };
    return { workerStarts: this.starts, running: w !== null && w.dead === null, failure: w?.dead ?? this.lastFailure, startBackoff };
  }

  /** The call deadline of the running worker, and of every worker started after it. */
  setCallDeadline(ms: number): void {
    this.opts.callDeadlineMs = ms;
    this.worker?.setCallDeadline(ms);
  }

  /** The Linux thread ids of the running worker (none while it starts or after it died). */
  threadIds(): number[] {
    return this.current?.threadIds ?? [];
  }

  get info(): DeviceInfo | null {
    return this.worker?.info ?? null;
  }

  /** Worker threads of this device still alive (the running one, or stuck ones): shutdown reports them. */
  get liveThreads(): number {
    return [...this.stuck, ...(this.worker ? [this.worker] : [])].filter((w) => !w.hasExited).length;
  }

  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    if (w) {
      // Stays the slot's worker until it has exited, so a stuck one is still counted by liveThreads.
      await w.terminate();
    }
    this.worker = null;
    this.link?.close();
    // Page making still under way stops at its next chunk and unmaps its own mapping; it holds
    // its own dup of the memfd, so closing ours below frees the pages once it has let go.
    this.pageMaking?.cancel();
    if (this.reserved !== null) releaseForDevice(this.reserved.queues, this.reserved.threads);
    this.reserved = null;
    // A mapping keeps the pages of a worker that has not exited; the fd is no longer needed.
    this.memoryDiskMapping?.unmap();
    this.memoryDiskMapping = null;
    this.memoryDiskResident = false;
    if (this.memoryDisk !== null) native.close(this.memoryDisk);
    this.memoryDisk = null;
    if (this.ownDisk !== null) native.close(this.ownDisk.fd);
    this.ownDisk = null;
    if (this.retiredDisk !== null) native.close(this.retiredDisk);
    this.retiredDisk = null;
    this.memoryDiskDirty = null;
  }
}
