// Disk hand-over (docs/migration.md, "Disk hand-over"): a STOPPED migration between two hosts
// on one machine in which the memory disk is not copied: the destination adopts the source's
// memfd (sent by reference over the vhost-user sockets, as QEMU's cpr-transfer hands guest RAM
// to a new process), and only the container without the disk streams. This module holds what
// both sides agree on: the checks a memfd from another process passes before it is served, and
// the container section that names the memfd the state goes with, so that a destination
// refuses a state whose disk is not the one it adopted.

import { fstatSync, readFileSync } from 'node:fs';
import { native } from '../native/index.ts';
import { SectionId, type StateSection } from './section.ts';
import { VhostWasmError } from '../errors.ts';
import { F_SEAL_FUTURE_WRITE, F_SEAL_SHRINK, F_SEAL_WRITE, TMPFS_MAGIC } from '../memory/memory-fd.ts';

/** The container section that stands for the disk after a hand-over. */
export const HANDOVER_SECTION_ID = SectionId.HOST_BASE + 2;
const IDENTITY_BYTES = 24;

/** A memfd offered as a disk that this host will not serve; its own disk stays as it was. */
export class DiskHandoverRefused extends VhostWasmError {
  static override readonly code = 'ERR_DISK_HANDOVER_REFUSED';
  override name = 'DiskHandoverRefused';
}

/** Which file a memfd is (the same for every process holding it). */
export interface DiskIdentity {
  dev: bigint;
  ino: bigint;
  size: number;
}

export function diskIdentity(fd: number): DiskIdentity {
  const st = fstatSync(fd, { bigint: true });
  return { dev: st.dev, ino: st.ino, size: Number(st.size) };
}

/**
 * Checks a memfd another process sent as this host's new disk, as hostile input: a memfd
 * (shmem, not a pipe, a file on disk or a socket), exactly `size` bytes, sealed against
 * shrinking (every vhost-wasm memory disk is: nobody can pull pages from under our mappings),
 * and not sealed against writes (the guest writes it). Throws DiskHandoverRefused saying which.
 */
export function checkHandedDisk(fd: number, size: number): DiskIdentity {
  const kind = native.fdKind(fd);
  if (kind !== 'memfd') throw new DiskHandoverRefused(`the disk handed over is a ${kind}, not a memfd (a memory disk of a vhost-wasm host on this machine)`);
  // One fstat + F_GET_SEALS + fstatfs of the fd for the checks below.
  const info = native.memoryFdInfo(fd);
  // Shmem (a memfd's filesystem reports tmpfs): a hugetlbfs memfd is not a memory disk here.
  if (info.fsType !== TMPFS_MAGIC) throw new DiskHandoverRefused(notShmemText(info.fsType));
  // Opened read-write: the guest writes it, and a read-only one would fail only once the worker
  // maps it, after the own disk's mapping was already let go.
  const access = accessMode(fd);
  if (access !== O_RDWR) throw new DiskHandoverRefused(`the disk handed over is open ${access === 0 ? 'read-only' : access === 1 ? 'write-only' : `with access mode ${access}`}, not read-write: the guest could not write it`);
  if (info.type !== 'file') throw new DiskHandoverRefused(`the disk handed over is not a regular file (${info.type})`);
  if (info.size !== size) throw new DiskHandoverRefused(`the disk handed over is ${info.size} bytes; this device's memory disk is ${size}: give both hosts the same memory:SIZE`);
  if (info.seals < 0 || (info.seals & F_SEAL_SHRINK) === 0) throw new DiskHandoverRefused('the disk handed over is not sealed against shrinking (every vhost-wasm memory disk is): its pages could be pulled from under the guest');
  if ((info.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) !== 0) throw new DiskHandoverRefused(`the disk handed over is sealed against writes (seals 0x${info.seals.toString(16)}): the guest could not write it`);
  return diskIdentity(fd);
}

/**
 * Why a handed memfd whose fstatfs type (memoryFdInfo's fsType, -1 when fstatfs failed) is not
 * tmpfs/shmem is refused: the type in hex, or that it could not be read ("type 0x-1" said
 * neither).
 */
export function notShmemText(fsType: number): string {
  if (fsType < 0) return 'the disk handed over is a memfd whose filesystem type could not be read (fstatfs failed), so it cannot be told to be tmpfs/shmem';
  return `the disk handed over is a memfd on another filesystem (type 0x${fsType.toString(16)}, not tmpfs/shmem; a hugetlbfs memfd is not a vhost-wasm memory disk)`;
}

const O_ACCMODE = 3;
const O_RDWR = 2;

/** fcntl(F_GETFL) & O_ACCMODE of fd, as the kernel shows it in /proc/self/fdinfo (octal "flags:"). */
function accessMode(fd: number): number {
  const m = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (m === null) throw new DiskHandoverRefused(`cannot tell how the disk handed over was opened (/proc/self/fdinfo/${fd} has no flags)`);
  return parseInt(m[1], 8) & O_ACCMODE;
}

function encodeIdentity(d: DiskIdentity): Buffer {
  const b = Buffer.alloc(IDENTITY_BYTES);
  b.writeBigUInt64LE(d.dev, 0);
  b.writeBigUInt64LE(d.ino, 8);
  b.writeBigUInt64LE(BigInt(d.size), 16);
  return b;
}

/**
 * The container section (phase DISK_FINAL) that stands for the disk: the identity of the memfd
 * handed over. SAVE: `lent` is the source's disk. LOAD: refused unless it is the memfd this
 * destination adopted (`adopted`), so a state cannot go with another disk than its own.
 */
export function handoverSection(lent: DiskIdentity | null, adopted: DiskIdentity | null, onApplied: () => void): StateSection {
  let got: Buffer | null = null;
  return {
    id: HANDOVER_SECTION_ID,
    name: 'disk-handover',
    size: async () => IDENTITY_BYTES,
    read: async (offset, len) => encodeIdentity(lent!).subarray(offset, offset + len),
    beginLoad: async (size) => {
      if (size !== IDENTITY_BYTES) throw new Error(`the disk-handover section is ${size} bytes, not ${IDENTITY_BYTES}`);
      got = Buffer.alloc(0);
    },
    write: async (_offset, chunk) => {
      got = Buffer.concat([got ?? Buffer.alloc(0), chunk]);
    },
    finish: async () => {
      if (got === null || got.length !== IDENTITY_BYTES) return 'the disk-handover section is incomplete';
      if (adopted === null) return 'this host adopted no disk (phase DISK_FD LOAD first): the disk has to come in full (phase STOPPED)';
      if (!got.equals(encodeIdentity(adopted))) return 'the state goes with another memory disk than the one this host adopted';
      return null;
    },
    commit: onApplied,
    abort: async () => {
      got = null;
    },
  };
}

/** What a destination's disk condition says between the adoption and the DISK_FINAL state. */
export const HANDOVER_UNFINISHED =
  'the memory disk is a memfd handed over by a migration that has not completed (no DISK_FINAL state applied yet): it is still the source host\'s';

/** What a source's disk condition says once its disk went to another host. */
export const DISK_GIVEN_AWAY =
  'this device\'s memory disk was handed over to another host by a migration (its memfd is that host\'s now): remove the device (device-del) or restart the host';

/** What an operator does with a destination whose adopted disk is not trusted (ADOPTION_UNCONFIRMED). */
export const ADOPTION_UNCONFIRMED_ADVICE =
  'see the source host\'s log: without "memory disk handed over to another host" the source serves the disk on; with it, neither host serves it (docs/migration.md, "Not covered")';

/** What a destination's disk condition says once a front-end left it with rings started and not stopped in order. */
export const ADOPTION_UNCONFIRMED =
  'this device\'s memory disk is a memfd adopted by a disk hand-over whose front-end went away while the destination\'s rings were started and not stopped in order: the migration may have failed and its source resumed on the same memfd, so this host serves it no more: remove the device (device-del) or restart the host';
