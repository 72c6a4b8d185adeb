// The guest memory the front-end lent this connection: the region fds (SET_MEM_TABLE,
// ADD_MEM_REG, REM_MEM_REG) and the dirty log area (SET_LOG_BASE, SET_LOG_FD). Each fd is
// checked to cover what it claims before the worker maps it; a region that can still shrink
// under us is left to the fault guard, which ends the connection if it happens (docs/security.md,
// "Front-ends"; the worker reports it as a 'memory-fault' event).

import type { DeviceWorker } from '../device/worker-client.ts';
import type { RegionMsg } from '../device/rpc.ts';
import type { MemoryRegion } from '../protocol/messages.ts';
import { errorText, type Logger } from '../log/logger.ts';
import { checkMemoryFd } from '../memory/memory-fd.ts';
import { closeFds } from './fds.ts';
import { giveMemoryRegionFds, MEM_REGIONS_RESERVED, takeMemoryRegionFds } from '../resources/fd-budget.ts';
import { RequestError, toNumber } from './request-error.ts';

/** Bytes of guest memory one byte of dirty log covers (one bit per 4 KiB page). */
const LOG_BYTE_COVERS = 8 * 4096;

function regionMsg(r: MemoryRegion & { fd: number }): RegionMsg {
  return {
    guestPhysAddr: toNumber(r.guestPhysAddr, 'guest physical address'),
    size: toNumber(r.memorySize, 'region size'),
    userspaceAddr: toNumber(r.userspaceAddr, 'userspace address'),
    mmapOffset: toNumber(r.mmapOffset, 'mmap offset'),
    fd: r.fd,
  };
}

const gpaText = (r: RegionMsg) => `GPA 0x${r.guestPhysAddr.toString(16)}`;

export class MemoryTable {
  /** The regions the worker maps; their fds are ours until replaced, removed or released. */
  private regions: RegionMsg[] = [];
  /** SET_LOG_FD's eventfd (kept, never signalled: QEMU reads the log on its own schedule). */
  private logFd: number | null = null;

  /** Region fds past MEM_REGIONS_RESERVED kept out of the process fd budget (fd-budget.ts). */
  private extraFds = 0;

  constructor(private readonly log: Logger) {}

  /**
   * Makes the budget cover `count` region fds: the device's own reserve covers the first
   * MEM_REGIONS_RESERVED, more are taken as they arrive. Throws (the front-end's message
   * fails, nothing else) when the budget has not that many free.
   */
  private account(count: number): void {
    const want = Math.max(0, count - MEM_REGIONS_RESERVED);
    if (want > this.extraFds) {
      const n = want - this.extraFds;
      if (!takeMemoryRegionFds(n)) {
        throw new RequestError(
          `memory region ${count} refused: the host's fd budget has no room for it (regions past ${MEM_REGIONS_RESERVED} each take an fd from the budget all devices share); remove regions or raise the host's RLIMIT_NOFILE`,
        );
      }
    } else if (want < this.extraFds) {
      giveMemoryRegionFds(this.extraFds - want);
    }
    this.extraFds = want;
  }

  /** The table as the worker has it: what a fresh worker is given after a restart. */
  get current(): RegionMsg[] {
    return this.regions;
  }

  /**
   * Each region's fd must be a file covering the region (else the first access past its end
   * would SIGBUS). Says which regions can still shrink under us.
   */
  private checkRegionFds(msgs: RegionMsg[], names: string[]): void {
    const unsealed: string[] = [];
    msgs.forEach((r, i) => {
      if (!checkMemoryFd(r.fd, r.mmapOffset, r.size, names[i]).sealed) unsealed.push(names[i]);
    });
    if (unsealed.length > 0) {
      this.log.info(`${unsealed.join(', ')}: not sealed against shrinking (F_SEAL_SHRINK); if the front-end shrinks ${unsealed.length > 1 ? 'them' : 'it'}, this connection is closed`);
    }
  }

  /** SET_MEM_TABLE: the worker maps the new table, then the old regions' fds go. */
  async set(worker: DeviceWorker, regions: (MemoryRegion & { fd: number })[]): Promise<void> {
    let msgs: RegionMsg[];
    try {
      msgs = regions.map(regionMsg);
      for (const r of msgs) if (r.size === 0) throw new RequestError(`region at ${gpaText(r)} has size 0`);
      this.checkRegionFds(msgs, msgs.map((r, i) => `memory region ${i} (${gpaText(r)})`));
      await worker.setMemTable(msgs);
    } catch (e) {
      closeFds(regions.map((r) => r.fd), this.log);
      throw e;
    }
    this.closeRegions();
    this.regions = msgs;
    this.account(msgs.length);
  }

  async add(worker: DeviceWorker, region: MemoryRegion & { fd: number }): Promise<void> {
    try {
      const msg = regionMsg(region);
      if (msg.size === 0) throw new RequestError('ADD_MEM_REG region has size 0');
      this.checkRegionFds([msg], [`added memory region (${gpaText(msg)})`]);
      this.account(this.regions.length + 1);
      await worker.addMemRegion(msg);
      this.regions.push(msg);
    } catch (e) {
      this.account(this.regions.length);
      closeFds([region.fd], this.log);
      throw e;
    }
  }

  async remove(worker: DeviceWorker, region: MemoryRegion): Promise<void> {
    const gpa = toNumber(region.guestPhysAddr, 'guest physical address');
    const size = toNumber(region.memorySize, 'region size');
    const uva = toNumber(region.userspaceAddr, 'userspace address');
    await worker.removeMemRegion(gpa, size, uva);
    const i = this.regions.findIndex((r) => r.guestPhysAddr === gpa && r.size === size && r.userspaceAddr === uva);
    if (i >= 0) {
      closeFds([this.regions[i].fd], this.log);
      this.regions.splice(i, 1);
      this.account(this.regions.length);
    }
  }

  /** SET_LOG_BASE (LOG_SHMFD form): the worker maps the area. Whether it did (the reply's u64). */
  async setLogBase(worker: DeviceWorker, size: bigint, offset: bigint, fd: number): Promise<boolean> {
    try {
      const sz = toNumber(size, 'log size');
      const off = toNumber(offset, 'log offset');
      if (sz === 0) throw new RequestError('log size is 0');
      const { sealed } = checkMemoryFd(fd, off, sz, 'dirty log area');
      if (!sealed) this.log.info('dirty log area: not sealed against shrinking (F_SEAL_SHRINK); if the front-end shrinks it, this connection is closed');
      await worker.setLogBase(fd, sz, off);
      this.log.info(`dirty log area: ${sz} bytes at offset ${off} (covers ${(sz * LOG_BYTE_COVERS) / 2 ** 20} MiB of guest memory)`);
      return true;
    } catch (e) {
      this.log.error(`SET_LOG_BASE failed: ${errorText(e)}`);
      return false;
    } finally {
      // The worker's mapping keeps the area alive; the fd itself is no longer needed.
      closeFds([fd], this.log);
    }
  }

  /** SET_LOG_FD's eventfd (a host handover passes it on). */
  get logEventFd(): number | null {
    return this.logFd;
  }

  setLogFd(fd: number | null): void {
    this.closeLogFd();
    this.logFd = fd;
  }

  closeLogFd(): void {
    closeFds([this.logFd], this.log);
    this.logFd = null;
  }

  /** Closes every region fd; the worker must have unmapped them (or be gone). */
  closeRegions(): void {
    closeFds(this.regions.map((r) => r.fd), this.log);
    this.regions = [];
    this.account(0);
  }
}
