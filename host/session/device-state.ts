// Device state transfer (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE) and the one transfer a
// connection may run at a time, whichever channel started it (this one, or the experimental
// RFC shm channel in rfc-state-shm.ts). SET_DEVICE_STATE_FD replies at once and the transfer
// runs in the background while the front-end keeps talking to us; CHECK_DEVICE_STATE collects
// the outcome. With stateReturnMemfd a SAVE fills a memfd of our own before replying instead.

import { native } from '../native/index.ts';
import { deviceStateReplyValue, encodeU64Reply } from '../protocol/codec.ts';
import { DeviceStateDirection, DeviceStatePhase } from '../protocol/constants.ts';
import { Req } from '../protocol/requests.ts';
import { StateTransfer, WorkerSectionProxy, type TransferContext } from '../migration/transfer.ts';
import { RfcShmTransfer } from '../migration/rfc-shm.ts';
import { DISK_LOAD_UNFINISHED, DISK_READ_IN, DISK_SPLICED_IN, PrecopyLoadRound, PrecopySaveRound, copyDiskToFile, diskCrc, loadDiskFromFile, loadDiskFromPipe, newPrecopyMark, precopyMarkerSection, type MemoryDiskHandle, type PrecopyMark } from '../migration/precopy.ts';
import { HandoverPhase, PrecopyPhase } from '../protocol/precopy.ts';
import { diskIdentity, handoverSection, type DiskIdentity } from '../migration/disk-handover.ts';
import { STORAGE_SECTION_ID } from '../migration/storage-section.ts';
import { AutoConverge } from '../migration/auto-converge.ts';
import type { DeviceWorker } from '../device/worker-client.ts';
import { errorText, type Logger } from '../log/logger.ts';
import { closeFds } from './fds.ts';
import type { SessionSettings } from './options.ts';

/** SET_DEVICE_STATE_FD error codes (bits 0-7 of the reply; any non-zero value is an error). */
export const DeviceStateError = {
  /** Direction or phase this back-end does not implement. */
  UNSUPPORTED: 1,
  /** Rings still run, or the device is not in a state to transfer. */
  BUSY: 2,
  /** The fd or the device failed before the transfer could start. */
  FAILED: 3,
} as const;

/** Why a transfer cannot start: the error code for the reply, and the text for the log. */
export interface Refusal {
  refuse: number;
  why: string;
}

/** What a transfer channel needs from the session it runs in. */
export interface TransferHost {
  readonly log: Logger;
  readonly settings: SessionSettings;
  /** The device's current worker (a reset may replace it). */
  worker(): DeviceWorker;
  reply(bytes: Uint8Array, fds?: number[]): Promise<void>;
  /** A transfer began (metrics time it until its outcome). */
  transferStarted?(t: AnyTransfer): void;
  /** The device's memory disk, when it has one (pre-copy). */
  memoryDisk?(): MemoryDiskHandle | null;
  /** Whether the front-end negotiated the pre-copy extension (protocol/precopy.ts). */
  precopyNegotiated?(): boolean;
  /**
   * A pre-copy's first round is about to load: a migration is coming in, and the rings start
   * once its FINAL state has. Whatever would make that start faster is done now, while the source
   * still serves (dispatch.ts: the worker's warm-up). Throws when the device cannot serve.
   */
  incomingPrecopy?(): Promise<void>;
  /** Whether the front-end negotiated the disk hand-over (protocol/precopy.ts, bit 61). */
  handoverNegotiated?(): boolean;
  /** Destination: makes `fd` (taken: closed on refusal) the memory disk, not yet served; throws why not. */
  adoptDisk?(fd: number): Promise<void>;
  /** Destination: the DISK_FINAL state applied: the adopted disk may be served (final once a ring starts). */
  adoptedDiskApplied?(): void;
  /** Source: the disk's memfd goes out with a DISK_FD answer (no upgrade or host take-over until the connection ends). */
  diskLent?(): void;
  /** Destination: an adopted disk waits for its DISK_FINAL state (no other LOAD may write it). */
  diskAdoptionPending?(): boolean;
}

/** Whatever runs in the one transfer slot: a container transfer, an RFC shm transfer, a pre-copy round. */
export type AnyTransfer = StateTransfer | RfcShmTransfer | PrecopySaveRound | PrecopyLoadRound;

export class DeviceStateTransfers {
  /**
   * The transfer SET_DEVICE_STATE_FD started, until CHECK_DEVICE_STATE collects it; or the RFC
   * shm transfer RFC_SET_STATE_AREA started, until the area is detached.
   */
  private transfer: AnyTransfer | null = null;
  /** Source: the pre-copy under way and its last round that went out whole (null: none). */
  private precopySent: PrecopyMark | null = null;
  /** Destination: the pre-copy whose rounds all arrived and checked out, up to which round. */
  private precopyHeld: PrecopyMark | null = null;
  /** Source: throttles the guest's writes while live rounds do not shrink (made on the first pre-copy of a disk that has the bucket). */
  private converge: AutoConverge | null = null;
  /** Source of a disk hand-over: the disk's memfd went out with a DISK_FD answer (null: not). */
  private lent: DiskIdentity | null = null;
  /** Source: a DISK_FINAL state naming it was saved and no ring started since: the disk is the destination's. */
  private lentSaved = false;
  /** Destination: the memfd a DISK_FD LOAD adopted, until a DISK_FINAL state applied. */
  private adopted: DiskIdentity | null = null;

  constructor(private readonly host: TransferHost) {}

  /** A ring starts: a source that saved a DISK_FINAL state serves its disk on (the migration did not complete). */
  ringStarting(): void {
    this.lentSaved = false;
  }

  /** Source: a DISK_FINAL state went out and no ring started after it: the disk is another host's now. */
  get diskGivenAway(): boolean {
    return this.lentSaved;
  }

  get current(): AnyTransfer | null {
    return this.transfer;
  }

  /** A transfer begin() cleared the way for takes the slot. */
  adopt(t: AnyTransfer): void {
    this.transfer = t;
    this.host.transferStarted?.(t);
  }

  /** The transfer's outcome was collected: the slot is free. */
  collected(): void {
    this.transfer = null;
  }

  /** A transfer still moves bytes: rings must not start meanwhile. */
  get running(): boolean {
    return this.transfer !== null && !this.transfer.finished;
  }

  /** Stops the transfer in progress (reset, disconnect); settle() waits for it. */
  abort(reason: string): void {
    this.transfer?.abort(reason);
    this.forgetPrecopy();
  }

  /** A reset, a disconnect or a full save: a pre-copy cannot be continued. */
  private forgetPrecopy(): void {
    if (this.precopySent !== null) this.host.memoryDisk?.()?.dirty.stop();
    this.converge?.release('the pre-copy ended');
    this.precopySent = null;
    this.precopyHeld = null;
  }

  /** Waits for the transfer in progress to let go of the worker and its fd, and forgets it. */
  async settle(): Promise<void> {
    if (this.transfer === null) return;
    await this.transfer.done;
    this.transfer = null;
  }

  /**
   * Checks and the transfer context shared by every channel (SET_DEVICE_STATE_FD, the RFC shm
   * area), or why it cannot start. `handoverFinal`: the DISK_FINAL LOAD, the one LOAD an adoption
   * waiting for its final state takes.
   */
  async begin(what: string, dir: 'save' | 'load', handoverFinal = false): Promise<TransferContext | Refusal> {
    const early = this.handoverRefusal(dir, handoverFinal);
    if (early !== null) return early;
    await this.clearSlot(what);
    // Checked again: the slot's old transfer settled meanwhile, and a disconnect may have moved on.
    return this.handoverRefusal(dir, handoverFinal) ?? this.context();
  }

  /**
   * What no channel may do to a disk that is not this host's to write or serve: LOAD into a disk
   * handed over (the other host's now) or into one whose adoption waits for its DISK_FINAL state
   * (still the source's), or SAVE a disk that is not served (its bytes are not the device's).
   */
  private handoverRefusal(dir: 'save' | 'load', handoverFinal: boolean): Refusal | null {
    const disk = this.host.memoryDisk?.() ?? null;
    const gone = this.diskGoneRefusal(dir, disk);
    if (gone !== null) return gone;
    if (dir === 'load' && !handoverFinal && this.host.diskAdoptionPending?.()) {
      return { refuse: DeviceStateError.BUSY, why: 'a disk hand-over waits for its DISK_FINAL state: only that LOAD is taken now (disconnect to give the adopted disk back)' };
    }
    if (dir === 'save' && disk !== null && disk.condition.unusable !== null) {
      return { refuse: DeviceStateError.FAILED, why: `the memory disk is not saved: ${disk.condition.unusable}; LOAD a state that checks out first` };
    }
    return null;
  }

  /** The disk went to another host (given away), or is about to (a DISK_FINAL SAVE went out): a LOAD would write the other host's disk. */
  private diskGoneRefusal(dir: 'save' | 'load', disk: MemoryDiskHandle | null): Refusal | null {
    if (disk?.condition.givenAway) return { refuse: DeviceStateError.FAILED, why: disk.condition.unusable ?? 'the memory disk was handed over' };
    if (dir === 'load' && this.lentSaved) {
      return { refuse: DeviceStateError.BUSY, why: 'this host saved a DISK_FINAL state: its disk is the destination\'s unless a ring restarts here (start a ring to resume this host, or disconnect)' };
    }
    return null;
  }

  /** A LOAD that checked out makes the disk servable again, unless it is not this host's (handed over, or an adoption unfinished). */
  private loadedWhole(disk: MemoryDiskHandle): void {
    if (disk.condition.givenAway || this.host.diskAdoptionPending?.()) return;
    disk.condition.unusable = null;
  }

  /** A transfer that was never collected gives way to a new one. */
  private async clearSlot(what: string): Promise<void> {
    const { log } = this.host;
    if (this.transfer !== null) {
      // A front-end that gave up on a transfer without CHECK_DEVICE_STATE starts another one.
      const old = this.transfer;
      this.transfer = null;
      if (!old.finished) {
        log.warn(`a new ${what} replaces a ${old.direction} still in progress: aborting it`);
        old.abort(`replaced by a new ${what}`);
      }
      await old.done;
    }
  }

  private async context(): Promise<TransferContext | Refusal> {
    const { log } = this.host;
    const worker = this.host.worker();
    let begin;
    try {
      begin = await worker.stateBegin();
    } catch (e) {
      return { refuse: DeviceStateError.FAILED, why: `the device is not available: ${errorText(e)}` };
    }
    if (begin.started.length > 0) {
      return { refuse: DeviceStateError.BUSY, why: `ring(s) ${begin.started.join(', ')} still run: rings must be stopped with GET_VRING_BASE first` };
    }
    return {
      worker,
      identity: { deviceId: worker.info.deviceId, name: begin.name, version: begin.version },
      extraSections: [
        ...begin.sections.map((s) => this.workerSection(worker, s)),
        ...(this.host.settings.stateSections?.() ?? []),
      ],
      log,
      pipeBytes: this.host.settings.statePipeBytes,
    };
  }

  /**
   * A worker-held section as the transfer sees it. The memory disk's SAVE is the kernel's copy
   * from its memfd here (into a state file: copy_file_range; into a pipe: splice), not reads
   * through the worker (rings are stopped: nothing writes the disk); all else goes through it.
   */
  private workerSection(worker: DeviceWorker, s: { id: number; name: string; size: number }): WorkerSectionProxy {
    const proxy = new WorkerSectionProxy(worker, s.id, s.name, s.size);
    const disk = s.id === STORAGE_SECTION_ID ? (this.host.memoryDisk?.() ?? null) : null;
    if (disk !== null && disk.size === s.size) {
      proxy.copyToFile = async (fd, fileOffset, len, crc) => copyDiskToFile(disk, fd, fileOffset, len, crc);
      // A pipe: the disk's pages are spliced into it. A front-end reads the state to EOF before
      // CHECK_DEVICE_STATE, and the rings restart only after that, so the pages do not change
      // while the pipe still holds them.
      proxy.spliceSource = () => ({ fd: disk.fd, offset: 0, crc: (seed, at, len) => diskCrc(disk, seed, at, len) });
      // LOAD: the disk's bytes go from the channel into its memfd here too (a state file: copied
      // and checksummed in one pass between two populated mappings; a pipe: spliced), never
      // through the worker, whose section only checked the size in beginLoad. Its finish would
      // count no bytes, so a disk loaded here finishes here.
      let loadedHere = false;
      const finish = proxy.finish.bind(proxy);
      const abort = proxy.abort.bind(proxy);
      proxy.copyFromFile = async (fd, fileOffset, len, crc) => {
        const c = loadDiskFromFile(disk, fd, fileOffset, len, crc);
        loadedHere = true;
        return c;
      };
      proxy.copyFromPipe = async (pipe, len, crc) => {
        const c = await loadDiskFromPipe(disk, pipe, len, crc);
        this.host.log.info(`memory disk section loaded from the pipe: ${disk.resident ? DISK_READ_IN : DISK_SPLICED_IN}`);
        loadedHere = true;
        return c;
      };
      // Whichever way its bytes come (here, or chunks through the worker for a format-1 state or
      // the RFC shm channel), they land in the disk before the trailer is checked: from the
      // section's start the disk is not served, until the LOAD as a whole succeeded (commit:
      // the trailer's checksum matched and every section, not only this one, applied; a
      // device whose own section refused is not the source's, whole disk or not). precopy.ts,
      // DiskCondition.
      const beginLoad = proxy.beginLoad.bind(proxy);
      proxy.beginLoad = async (size) => {
        if (disk.condition.givenAway || this.host.diskAdoptionPending?.()) throw new Error(disk.condition.unusable ?? 'the memory disk is not this host\'s to write');
        await beginLoad(size);
        disk.condition.unusable = DISK_LOAD_UNFINISHED;
      };
      proxy.finish = async () => (loadedHere ? null : await finish());
      proxy.commit = () => this.loadedWhole(disk);
      proxy.abort = async () => {
        loadedHere = false;
        await abort();
      };
    }
    return proxy;
  }

  private async replyDeviceState(error: number, fd: number | null = null): Promise<void> {
    const value = deviceStateReplyValue(error, fd !== null);
    try {
      await this.host.reply(encodeU64Reply(Req.SET_DEVICE_STATE_FD, value), fd === null ? [] : [fd]);
    } finally {
      closeFds([fd], this.host.log);
    }
  }

  /** SET_DEVICE_STATE_FD: checks, then starts the transfer (see the top of this file). */
  async setFd(direction: number, phase: number, fd: number): Promise<void> {
    const { log } = this.host;
    const refuse = (code: number, why: string) => {
      closeFds([fd], log);
      log.error(`SET_DEVICE_STATE_FD refused: ${why}`);
      return this.replyDeviceState(code);
    };
    if (direction !== DeviceStateDirection.SAVE && direction !== DeviceStateDirection.LOAD) {
      return refuse(DeviceStateError.UNSUPPORTED, `direction ${direction} is neither SAVE (0) nor LOAD (1)`);
    }
    const dir = direction === DeviceStateDirection.SAVE ? 'save' : 'load';
    if (phase === HandoverPhase.DISK_FD || phase === HandoverPhase.DISK_FINAL) return this.handover(dir, phase, fd, refuse);
    // Checked here too (begin() checks again) because a pre-copy round does not go through begin().
    const early = this.handoverRefusal(dir, false);
    if (early !== null) return refuse(early.refuse, early.why);
    const precopy = phase === PrecopyPhase.ROUND || phase === PrecopyPhase.START || phase === PrecopyPhase.FINAL;
    if (phase !== DeviceStatePhase.STOPPED && !(precopy && this.host.precopyNegotiated?.())) {
      return refuse(DeviceStateError.UNSUPPORTED, `phase ${phase} is not STOPPED (0), the only phase this back-end implements`);
    }
    const disk = precopy ? (this.host.memoryDisk?.() ?? null) : null;
    if (precopy && disk === null) return refuse(DeviceStateError.UNSUPPORTED, `phase 0x${phase.toString(16)} (pre-copy) needs a memory disk; this device has none`);
    if (phase !== PrecopyPhase.FINAL && precopy) return this.precopyRound(dir, fd, disk!, phase === PrecopyPhase.START);
    const ctx = await this.begin('SET_DEVICE_STATE_FD', dir);
    if ('refuse' in ctx) return refuse(ctx.refuse, ctx.why);
    if (phase === PrecopyPhase.FINAL) {
      // The disk arrived in the rounds: the container carries a marker naming the last one instead.
      if (dir === 'save') {
        const dirty = disk!.dirty.count();
        if (this.precopySent === null) return refuse(DeviceStateError.FAILED, 'no pre-copy round went out whole: the disk has to go in full (phase STOPPED)');
        if (dirty > 0) return refuse(DeviceStateError.FAILED, `${dirty} block(s) were written since the last pre-copy round: send a round with the rings stopped first`);
      }
      const sent = this.precopySent;
      ctx.extraSections = [
        ...(ctx.extraSections ?? []).filter((s) => s.id !== STORAGE_SECTION_ID),
        precopyMarkerSection(sent, this.precopyHeld, () => {
          this.precopyHeld = null;
          // Every block came in the rounds (the first one is the whole disk) and checked out,
          // and every section of this FINAL state applied (called at its commit).
          this.loadedWhole(disk!);
        }),
      ];
      if (dir === 'save') {
        const t = StateTransfer.save(fd, ctx);
        this.adopt(t);
        void t.done.then((err) => {
          if (err !== null) log.error(`device state save (pre-copy final) failed: ${err}`);
          // Whatever the outcome, the next migration starts a pre-copy afresh.
          this.forgetPrecopy();
        });
        return this.replyDeviceState(0);
      }
    } else if (dir === 'save') {
      // A full save: a pre-copy in progress is over.
      this.forgetPrecopy();
    }
    // Not silent: what the device holds that a migration's state does not carry (a virtio-fs
    // guest's file locks, which are this host's: docs/virtio-fs.md, "Locks across ...").
    if (dir === 'save') {
      void this.host
        .worker()
        .status()
        .then((s) => s.processBound !== null && log.warn(`device state saved for a migration without it: ${s.processBound}; the destination starts without them`))
        .catch(() => {});
    }
    if (dir === 'save' && this.host.settings.stateReturnMemfd) {
      // Our own channel: a memfd filled before the reply, so the front-end can read it to EOF at
      // once; the front-end's fd is not used.
      closeFds([fd], log);
      let memfd: number;
      let transfer: StateTransfer;
      try {
        memfd = native.memfdCreate('vhost-wasm-device-state', false);
        transfer = StateTransfer.save(native.dup(memfd), ctx);
      } catch (e) {
        return refuse(DeviceStateError.FAILED, errorText(e));
      }
      this.adopt(transfer);
      const err = await transfer.done;
      if (err !== null) {
        closeFds([memfd], log);
        log.error(`device state save failed: ${err}`);
        return this.replyDeviceState(DeviceStateError.FAILED);
      }
      return this.replyDeviceState(0, memfd);
    }
    return this.startTransfer(dir, fd, ctx, `${ctx.identity.name} ${ctx.identity.version}`);
  }

  /** A container SAVE or LOAD through fd, collected by CHECK_DEVICE_STATE; `onSaved` after a SAVE that went through. */
  private startTransfer(dir: 'save' | 'load', fd: number, ctx: TransferContext, about: string, onSaved?: () => void): Promise<void> {
    const { log } = this.host;
    let transfer: StateTransfer;
    try {
      transfer = dir === 'save' ? StateTransfer.save(fd, ctx) : StateTransfer.load(fd, ctx);
    } catch (e) {
      // save()/load() closed fd.
      log.error(`SET_DEVICE_STATE_FD refused: ${errorText(e)}`);
      return this.replyDeviceState(DeviceStateError.FAILED);
    }
    this.adopt(transfer);
    void transfer.done.then((err) => {
      if (err !== null) log.error(`device state ${dir} failed: ${err} (${about})`);
      else if (dir === 'save') onSaved?.();
    });
    log.info(`device state ${dir} started (${about})`);
    return this.replyDeviceState(0);
  }

  /**
   * SET_DEVICE_STATE_FD phases DISK_FD and DISK_FINAL (disk-handover.ts). DISK_FD SAVE answers
   * with the disk's memfd (rings may run: the destination serves nothing until DISK_FINAL);
   * DISK_FD LOAD adopts the message's memfd. DISK_FINAL moves the container with the disk's
   * identity in place of its bytes, like a pre-copy's FINAL.
   */
  private async handover(dir: 'save' | 'load', phase: number, fd: number, refuse: (code: number, why: string) => Promise<void>): Promise<void> {
    const { log } = this.host;
    if (!this.host.handoverNegotiated?.()) return refuse(DeviceStateError.UNSUPPORTED, `phase 0x${phase.toString(16)} (disk hand-over) needs protocol feature 61, not negotiated`);
    const disk = this.host.memoryDisk?.() ?? null;
    if (disk === null) return refuse(DeviceStateError.UNSUPPORTED, `phase 0x${phase.toString(16)} (disk hand-over) needs a writable memory disk; this device has none`);
    const gone = this.diskGoneRefusal(dir, disk);
    if (gone !== null) return refuse(gone.refuse, gone.why);
    if (phase === HandoverPhase.DISK_FD) {
      await this.clearSlot('disk hand-over');
      if (dir === 'save') {
        closeFds([fd], log);
        if (disk.condition.unusable !== null) return refuse(DeviceStateError.FAILED, `the memory disk is not handed over: ${disk.condition.unusable}`);
        let mine: number;
        try {
          mine = native.dup(disk.fd);
          this.lent = diskIdentity(mine);
        } catch (e) {
          return refuse(DeviceStateError.FAILED, errorText(e));
        }
        this.host.diskLent?.();
        log.info('memory disk lent for a hand-over: its memfd goes to the destination (this host serves it until a DISK_FINAL state goes out)');
        return this.replyDeviceState(0, mine);
      }
      let started: number[];
      try {
        started = (await this.host.worker().stateBegin()).started;
      } catch (e) {
        return refuse(DeviceStateError.FAILED, `the device is not available: ${errorText(e)}`);
      }
      if (started.length > 0) return refuse(DeviceStateError.BUSY, `ring(s) ${started.join(', ')} run on this device: a disk is not handed over under a guest`);
      if (!this.host.adoptDisk) return refuse(DeviceStateError.UNSUPPORTED, 'this host cannot adopt a disk');
      try {
        const id = diskIdentity(fd);
        // Takes fd: the slot's from now on, or closed with the refusal.
        await this.host.adoptDisk(fd);
        this.adopted = id;
      } catch (e) {
        log.error(`SET_DEVICE_STATE_FD refused: disk hand-over: ${errorText(e)}; this device's own disk is untouched`);
        return this.replyDeviceState(DeviceStateError.FAILED);
      }
      return this.replyDeviceState(0);
    }
    // DISK_FINAL.
    if (dir === 'save' && disk.condition.unusable !== null) return refuse(DeviceStateError.FAILED, `the memory disk is not saved: ${disk.condition.unusable}`);
    if (dir === 'save' && this.lent === null) return refuse(DeviceStateError.FAILED, 'no DISK_FD answer lent the disk: it has to go in full (phase STOPPED)');
    if (dir === 'load' && this.adopted === null) return refuse(DeviceStateError.FAILED, 'this host adopted no disk (DISK_FD LOAD first): the disk has to come in full (phase STOPPED)');
    const ctx = await this.begin('SET_DEVICE_STATE_FD', dir, dir === 'load');
    if ('refuse' in ctx) return refuse(ctx.refuse, ctx.why);
    ctx.extraSections = [
      ...(ctx.extraSections ?? []).filter((s) => s.id !== STORAGE_SECTION_ID),
      handoverSection(this.lent, this.adopted, () => {
        this.adopted = null;
        this.host.adoptedDiskApplied?.();
      }),
    ];
    return this.startTransfer(dir, fd, ctx, "disk hand-over final: the disk's bytes are not in it", () => {
      this.lentSaved = true;
    });
  }

  /** SET_DEVICE_STATE_FD phase ROUND: one pre-copy round through a pipe, rings running or not. */
  private async precopyRound(dir: 'save' | 'load', fd: number, disk: MemoryDiskHandle, restart: boolean): Promise<void> {
    const { log } = this.host;
    if (!native.fstat(fd).isFifo) {
      closeFds([fd], log);
      log.error('SET_DEVICE_STATE_FD refused: a pre-copy round travels through a pipe');
      return this.replyDeviceState(DeviceStateError.UNSUPPORTED);
    }
    if (dir === 'load') {
      // A round writes the disk in place: with a ring running, the guest would read (and write
      // under) a disk part old, part a migration in progress. A destination's rings start only
      // after the FINAL state (and while the disk is marked, SET_VRING_KICK refuses them).
      let started: number[];
      try {
        started = (await this.host.worker().stateBegin()).started;
      } catch (e) {
        closeFds([fd], log);
        log.error(`SET_DEVICE_STATE_FD refused: the device is not available: ${errorText(e)}`);
        return this.replyDeviceState(DeviceStateError.FAILED);
      }
      if (started.length > 0) {
        closeFds([fd], log);
        log.error(`SET_DEVICE_STATE_FD refused: a pre-copy round is not loaded into a disk being served: ring(s) ${started.join(', ')} run (stop them with GET_VRING_BASE first)`);
        return this.replyDeviceState(DeviceStateError.BUSY);
      }
    }
    if (dir === 'load' && this.precopyHeld === null && this.host.incomingPrecopy) {
      try {
        await this.host.incomingPrecopy();
      } catch (e) {
        closeFds([fd], log);
        log.error(`SET_DEVICE_STATE_FD refused: ${errorText(e)}`);
        return this.replyDeviceState(DeviceStateError.FAILED);
      }
    }
    await this.clearSlot('pre-copy round');
    let round: PrecopySaveRound | PrecopyLoadRound;
    if (dir === 'save') {
      const first = restart || this.precopySent === null;
      let mark: PrecopyMark;
      let runs: [number, number][];
      if (first) {
        // Tracking starts before the copy: a write during it is sent again next round.
        disk.dirty.start();
        mark = newPrecopyMark();
        runs = disk.size > 0 ? [[0, disk.size]] : [];
        if (disk.converge) (this.converge ??= new AutoConverge(disk.converge, log)).start();
      } else {
        mark = { token: this.precopySent!.token, round: this.precopySent!.round + 1 };
        runs = disk.dirty.take();
      }
      // Until this round is out whole the pre-copy cannot go on: the blocks it took are in it.
      this.precopySent = null;
      // With every ring stopped nothing writes the disk: its pages can go without a snapshot.
      const quiet = await this.host
        .worker()
        .stateBegin()
        .then((b) => b.started.length === 0, () => false);
      // A live round that does not shrink enough throttles the guest's writes (auto-converge.ts).
      if (!first && !quiet) this.converge?.roundTaken(runs.reduce((n, [, len]) => n + len, 0));
      const r = new PrecopySaveRound(fd, disk, mark, first, runs, quiet, this.host.settings.statePipeBytes);
      round = r;
      void r.done.then((err) => {
        if (err === null) {
          this.precopySent = mark;
          this.converge?.roundDone();
        } else {
          log.error(`pre-copy round ${mark.round} (save) failed: ${err}; the next round sends the whole disk`);
          this.converge?.release(`round ${mark.round} failed`);
        }
        if (err === null) log.info(`pre-copy round ${mark.round} sent: ${runs.length} run(s), ${r.bytes} bytes`);
      });
    } else {
      const r = new PrecopyLoadRound(fd, disk, this.precopyHeld);
      this.precopyHeld = null;
      round = r;
      void r.done.then((err) => {
        if (err === null && r.applied) {
          this.precopyHeld = r.applied.mark;
          log.info(`pre-copy round ${r.applied.mark.round} loaded: ${r.bytes} bytes${r.took ? ` (${r.took})` : ''}`);
        } else log.error(`pre-copy round (load) failed: ${err}`);
      });
    }
    this.adopt(round);
    return this.replyDeviceState(0);
  }

  /** CHECK_DEVICE_STATE: answers once the outcome is known, 0 when the transfer (and on LOAD, the apply) succeeded. */
  async check(): Promise<void> {
    const { log } = this.host;
    const answer = (v: number) => this.host.reply(encodeU64Reply(Req.CHECK_DEVICE_STATE, v));
    const t = this.transfer;
    if (t instanceof RfcShmTransfer) {
      log.error('CHECK_DEVICE_STATE during an RFC shm transfer: its outcome is the answer to the detach (RFC_SET_STATE_AREA size 0); reporting failure');
      return answer(1);
    }
    if (t === null) {
      log.error('CHECK_DEVICE_STATE without a transfer (no SET_DEVICE_STATE_FD before it): reporting failure');
      return answer(1);
    }
    const err = await t.done;
    this.transfer = null;
    if (err !== null) log.error(`CHECK_DEVICE_STATE: the ${t.direction} failed: ${err}`);
    return answer(err === null ? 0 : 1);
  }
}
