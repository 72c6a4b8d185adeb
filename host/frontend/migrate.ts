// Device-state migration, front-end side: what QEMU 8.2+ does for a vhost-user device whose
// back-end supports DEVICE_STATE (vhost_save_backend_state / vhost_load_backend_state), with our
// front-end driver standing in for the VM:
//
//   1. connect to the destination back-end and initialise it (features, protocol features,
//      owner) without starting it;
//   2. stop every ring on the source (GET_VRING_BASE), remembering the bases;
//   3. SAVE on the source and LOAD on the destination through the state channel, in 1 MiB
//      chunks (pipe: streamed source -> us -> destination; direct-pipe: one pipe, its write
//      end to the source and its read end to the destination, both hosts on this machine,
//      nothing passes through here; memfd: the source fills it, the destination reads the
//      very same memfd, nothing is copied here);
//   4. CHECK_DEVICE_STATE on both: source first (did it write everything), then destination
//      (did it parse and apply it);
//   5. start the destination: features, memory table (the same memfds: guest RAM stays where it
//      is), every ring at the source's base with the same kick/call eventfds, DRIVER_OK (with
//      pre-copy, the features and memory table go before the first round, see migrate());
//   6. close the source connection.
//
// Channel `rfc-shm` (experimental, both back-ends must offer protocol feature 63, host flag
// --experimental-rfc-state-shm): step 3 goes through the 2023 RFC's shared-memory protocol
// instead: one memfd area attached to BOTH back-ends (SAVE on the source, LOAD on the
// destination), then RFC_GET_STATE on the source / RFC_SET_STATE on the destination in turn,
// chunk by chunk, until the source answers remaining = 0; step 4 is detaching the area on both
// (its reply is the final check). The front-end never copies a byte: both map the same memfd.
//
// Channel `handover` (vhost-wasm hosts with a memory disk on one machine, protocol feature 61,
// host/migration/disk-handover.ts): before step 2, while the source still serves, the source
// answers SET_DEVICE_STATE_FD phase DISK_FD with its disk's memfd and the destination adopts it
// (phase DISK_FD LOAD: checked, then a fresh worker that maps it); step 3 is phase DISK_FINAL
// through one pipe from host to host: the container without the disk, which names the memfd.
// The disk's bytes are never copied: both hosts map the same pages.
//
// Abort path: any failure before step 5 completes closes the destination connection and
// restarts the source's rings at their bases, so the "guest" goes on with the source.

import { native } from '../native/index.ts';
import { DeviceStateDirection, DeviceStatePhase, ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, featureBit } from '../protocol/constants.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE } from '../protocol/rfc-state-shm.ts';
import { DISK_HANDOVER_PROTOCOL_FEATURE, HandoverPhase, PRECOPY_PROTOCOL_FEATURE, PrecopyPhase } from '../protocol/precopy.ts';
import { VhostUserConnection } from './connection.ts';
import { growPipe } from '../migration/channel.ts';
import { FRONTEND_PROTOCOL_FEATURES, VirtioStatus, type VhostUserFrontend } from './driver.ts';
import { VhostWasmError } from '../errors.ts';

export type StateChannelMode = 'pipe' | 'direct-pipe' | 'memfd' | 'rfc-shm' | 'handover';

/** QEMU moves back-end state through a 1 MiB buffer; so do we. */
export const MIGRATION_CHUNK = 1 << 20;

export interface MigrateOptions {
  /**
   * The SET_DEVICE_STATE_FD channel: a pipe this process relays (default, what QEMU does), one
   * pipe from the source host straight to the destination host (`direct-pipe`: both hosts on
   * this machine, this process carries no byte), a memfd, or `handover` (both hosts on this
   * machine: the memory disk's memfd goes to the destination, the rest as `direct-pipe`).
   */
  channel?: StateChannelMode;
  chunkSize?: number;
  /** rfc-shm: size of the shared state area, i.e. the bytes moved per GET_STATE/SET_STATE (default 1 MiB). */
  rfcAreaSize?: number;
  /** pipe, direct-pipe and pre-copy rounds: capacity asked for the state pipes (F_SETPIPE_SZ; 0 leaves them alone; default 1 MiB). */
  pipeBytes?: number;
  /**
   * At most this many pre-copy rounds while the rings still run (vhost-wasm hosts with a memory
   * disk only; 0 or absent: none). The first sends the whole disk, each next one the blocks written since; one
   * more round goes with the rings stopped, then the container without the disk (docs/migration.md).
   */
  precopyRounds?: number;
  /**
   * Live rounds end early once one took at most this long (what is left to send with the rings
   * stopped is about as much), or when two rounds in a row took no less than the one before each
   * (the guest writes as fast as the rounds move even after the source's auto-converge had a
   * round to throttle it: more rounds would not shrink it). Default 20 ms.
   */
  precopyTargetMs?: number;
  /** Called at each step (progress output, tests that act mid-migration). */
  onStep?: (step: string) => void | Promise<void>;
}

export interface MigrateReport {
  channel: StateChannelMode;
  /**
   * Container bytes moved; 0 over `direct-pipe`, where they never pass through this process
   * (each host logs what it saved or loaded: "device state saved: N bytes").
   */
  bytes: number;
  bases: number[];
  /** Whether the source back-end returned its own fd instead of using ours. */
  sourceReturnedFd: boolean;
  /** Rings stopped on the source -> rings running on the destination. */
  downtimeMs: number;
  /** SET_DEVICE_STATE_FD on both sides -> both CHECKs answered. */
  transferMs: number;
  /** Pre-copy rounds run (the last with the rings stopped), and their wall times in ms; empty without. */
  precopyMs: number[];
  /** `handover`: the disk's memfd from the source to the destination, rings running (DISK_FD on both), in ms. */
  handoverMs?: number;
}

export class MigrationError extends VhostWasmError {
  static override readonly code = 'ERR_MIGRATION_FAILED';
  override name = 'MigrationError';
  constructor(
    message: string,
    /** The source's rings were restarted: the device keeps running there. */
    readonly sourceResumed: boolean,
  ) {
    super(message);
  }
}

// --- fd helpers (non-blocking fds; waits run on this thread's loop) ---------------------------

function waitFd(fd: number, events: 'r' | 'w'): Promise<void> {
  return new Promise((resolve) => {
    const w = native.watch(fd, events, () => {
      w.close();
      resolve();
    });
  });
}

/** Reads a stream fd to EOF (or a regular file from 0 to its size), in chunks of at most `chunk`. */
export async function readToEnd(fd: number, onChunk: (b: Uint8Array) => Promise<void> | void, chunk = MIGRATION_CHUNK): Promise<number> {
  const st = native.fstat(fd);
  let total = 0;
  if (st.isFile) {
    while (total < st.size) {
      const buf = Buffer.allocUnsafe(Math.min(chunk, st.size - total));
      const n = native.pread(fd, buf, total);
      if (n <= 0) break;
      total += n;
      await onChunk(buf.subarray(0, n));
    }
    return total;
  }
  native.setNonBlocking(fd, true);
  for (;;) {
    const buf = Buffer.allocUnsafe(chunk);
    // Fill up to `chunk` before handing it on, as QEMU's 1 MiB reads do.
    let got = 0;
    let eof = false;
    while (got < chunk) {
      const n = native.read(fd, buf.subarray(got));
      if (n === 0) {
        eof = true;
        break;
      }
      if (n < 0) {
        if (got > 0) break;
        await waitFd(fd, 'r');
        continue;
      }
      got += n;
    }
    if (got > 0) {
      total += got;
      await onChunk(buf.subarray(0, got));
    }
    if (eof) return total;
  }
}

/** Writes all of bytes to a stream fd (or at `fileOffset` of a regular file). */
export async function writeAll(fd: number, bytes: Uint8Array, fileOffset: number | null = null): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const part = bytes.subarray(done);
    const n = fileOffset !== null ? native.pwrite(fd, part, fileOffset + done) : native.write(fd, part);
    if (n < 0) {
      await waitFd(fd, 'w');
      continue;
    }
    done += n;
  }
}

// --- one side at a time (tests, tools) ---------------------------------------------------------

/** SAVE from a back-end whose rings are stopped; returns the container bytes (after CHECK passed). */
export async function saveState(conn: VhostUserConnection, mode: StateChannelMode = 'pipe', areaSize = MIGRATION_CHUNK): Promise<Buffer> {
  const parts: Buffer[] = [];
  if (mode === 'rfc-shm') {
    await rfcPump(conn, null, areaSize, (b) => void parts.push(Buffer.from(b)));
    return Buffer.concat(parts);
  }
  if (mode === 'pipe') {
    const [r, w] = native.pipe2();
    let ret: number | null;
    try {
      ret = await conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, w);
    } catch (e) {
      native.close(r);
      throw e;
    } finally {
      native.close(w);
    }
    const src = ret ?? r;
    if (ret !== null) native.close(r);
    try {
      // CHECK must wait for the data; reading runs first so a pipe never fills up and stalls it.
      await readToEnd(src, (b) => void parts.push(Buffer.from(b)));
    } finally {
      native.close(src);
    }
    await conn.checkDeviceState();
    return Buffer.concat(parts);
  }
  const m = native.memfdCreate('vhost-wasm-state-save', false);
  let ret: number | null = null;
  try {
    ret = await conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, m);
    await conn.checkDeviceState();
    await readToEnd(ret ?? m, (b) => void parts.push(Buffer.from(b)));
  } finally {
    native.close(m);
    if (ret !== null) native.close(ret);
  }
  return Buffer.concat(parts);
}

/** LOAD bytes into a back-end; resolves when CHECK passed, throws (VhostUserError) when not. */
export async function loadState(conn: VhostUserConnection, bytes: Uint8Array, mode: StateChannelMode = 'pipe', chunk = MIGRATION_CHUNK): Promise<void> {
  if (mode === 'rfc-shm') {
    const area = native.memfdCreate('vhost-wasm-rfc-state-load', false);
    let map: ReturnType<typeof native.mmap> | null = null;
    try {
      native.ftruncate(area, chunk);
      map = native.mmap(area, chunk, 0, true);
      const view = new Uint8Array(map.window(0, chunk));
      await conn.rfcSetStateArea(DeviceStateDirection.LOAD, chunk, area);
      try {
        for (let off = 0; off < bytes.length; off += chunk) {
          const n = Math.min(chunk, bytes.length - off);
          view.set(bytes.subarray(off, off + n));
          await conn.rfcSetState(off, n);
        }
      } finally {
        // Detach even after a refused chunk: its answer is the transfer's outcome (and ends it).
        await conn.rfcDetachStateArea();
      }
    } finally {
      map?.unmap();
      native.close(area);
    }
    return;
  }
  if (mode === 'pipe') {
    const [r, w] = native.pipe2();
    let ret: number | null;
    try {
      ret = await conn.setDeviceStateFd(DeviceStateDirection.LOAD, DeviceStatePhase.STOPPED, r);
    } catch (e) {
      native.close(w);
      throw e;
    } finally {
      native.close(r);
    }
    const dst = ret ?? w;
    if (ret !== null) native.close(w);
    try {
      for (let off = 0; off < bytes.length; off += chunk) {
        await writeAll(dst, bytes.subarray(off, Math.min(bytes.length, off + chunk)));
      }
    } catch (e) {
      // EPIPE: the back-end stopped reading (it refused the state); CHECK says why.
      if ((e as NodeJS.ErrnoException).code !== 'EPIPE') throw e;
    } finally {
      native.close(dst);
    }
    await conn.checkDeviceState();
    return;
  }
  const m = native.memfdCreate('vhost-wasm-state-load', false);
  try {
    await writeAll(m, bytes, 0);
    const ret = await conn.setDeviceStateFd(DeviceStateDirection.LOAD, DeviceStatePhase.STOPPED, m);
    if (ret !== null) native.close(ret); // a back-end's own fd for LOAD: not used with a memfd
    await conn.checkDeviceState();
  } finally {
    native.close(m);
  }
}

// --- the RFC's shared-memory chunks (experimental) ------------------------------------------------

/**
 * SAVE from `src` through one memfd area, chunk by chunk: RFC_GET_STATE(offset, areaSize) on the
 * source, then (migration) RFC_SET_STATE(offset, length) on `dst` attached to the same area, or
 * (one side) onChunk with the area's bytes. Detaches the area on both at the end: the answers are
 * the final checks (source first). Returns the bytes moved.
 */
export async function rfcPump(
  src: VhostUserConnection,
  dst: VhostUserConnection | null,
  areaSize: number,
  onChunk?: (b: Uint8Array) => void,
  step: (s: string) => Promise<void> = async () => {},
): Promise<number> {
  const area = native.memfdCreate('vhost-wasm-rfc-state', false);
  let map: ReturnType<typeof native.mmap> | null = null;
  let total = 0;
  try {
    native.ftruncate(area, areaSize);
    if (onChunk) map = native.mmap(area, areaSize, 0, false);
    const view = map ? new Uint8Array(map.window(0, areaSize)) : null;
    await src.rfcSetStateArea(DeviceStateDirection.SAVE, areaSize, area);
    let srcAttached = true;
    let dstAttached = false;
    try {
      if (dst) {
        await dst.rfcSetStateArea(DeviceStateDirection.LOAD, areaSize, area);
        dstAttached = true;
      }
      await step('pump');
      for (;;) {
        const r = await src.rfcGetState(total, areaSize);
        if (r.length > 0) {
          if (view && onChunk) onChunk(view.subarray(0, r.length));
          if (dst) await dst.rfcSetState(total, r.length);
        }
        total += r.length;
        if (r.remaining === 0) break;
        if (r.length === 0) throw new Error(`the source answered an empty chunk with ${r.remaining} bytes remaining`);
      }
      await step('check-source');
      srcAttached = false;
      await src.rfcDetachStateArea();
      if (dst) {
        await step('check-destination');
        dstAttached = false;
        await dst.rfcDetachStateArea();
      }
    } catch (e) {
      // End both transfers (best effort) so neither back-end keeps the area mapped.
      if (srcAttached) await src.rfcDetachStateArea().catch(() => {});
      if (dstAttached && dst) await dst.rfcDetachStateArea().catch(() => {});
      throw e;
    }
  } finally {
    map?.unmap();
    native.close(area);
  }
  return total;
}

// --- the whole migration -------------------------------------------------------------------------

/** vhost_user_backend_init + vhost_dev_init on the destination (nothing started). */
async function initDestination(path: string, fe: VhostUserFrontend, mode: StateChannelMode, precopy: boolean): Promise<VhostUserConnection> {
  const conn = VhostUserConnection.connect(path);
  try {
    const offered = await conn.getFeatures();
    const missing = fe.features & ~offered;
    if (missing !== 0n) throw new Error(`the destination does not offer features 0x${missing.toString(16)} the device runs with`);
    if ((offered & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))) === 0n) throw new Error('the destination does not speak protocol features');
    const prot = await conn.getProtocolFeatures();
    const rfc = mode === 'rfc-shm' ? featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE) : 0n;
    const pre = precopy ? featureBit(PRECOPY_PROTOCOL_FEATURE) : 0n;
    const hand = mode === 'handover' ? featureBit(DISK_HANDOVER_PROTOCOL_FEATURE) : 0n;
    await conn.setProtocolFeatures(prot & fe.protocolFeatures & (FRONTEND_PROTOCOL_FEATURES | rfc | pre | hand));
    if (hand !== 0n && !conn.hasProtocol(DISK_HANDOVER_PROTOCOL_FEATURE)) {
      throw new Error('the destination does not offer the disk hand-over (protocol feature 61: a vhost-wasm host with a writable memory disk); migrate over direct-pipe instead');
    }
    if (precopy && !conn.hasProtocol(PRECOPY_PROTOCOL_FEATURE)) {
      throw new Error('the destination does not offer pre-copy (protocol feature 62: a vhost-wasm host with a memory disk)');
    }
    if (!conn.hasProtocol(ProtocolFeature.DEVICE_STATE)) throw new Error('the destination does not support DEVICE_STATE');
    if (rfc !== 0n && !conn.hasProtocol(RFC_STATE_SHM_PROTOCOL_FEATURE)) {
      throw new Error('the destination does not offer the experimental RFC state shm extension (protocol feature 63; host flag --experimental-rfc-state-shm)');
    }
    if (conn.hasProtocol(ProtocolFeature.MQ)) {
      const n = await conn.getQueueNum();
      if (n < fe.queues.length) throw new Error(`the destination supports ${n} queue(s), the device uses ${fe.queues.length}`);
    }
    if (conn.hasProtocol(ProtocolFeature.BACKEND_REQ)) await conn.setBackendReqFd();
    await conn.setOwner();
    return conn;
  } catch (e) {
    conn.close();
    throw e;
  }
}

/** The first half of vhost_dev_start on the destination: status, features, memory table (no ring). */
async function configureDestination(fe: VhostUserFrontend, conn: VhostUserConnection): Promise<void> {
  const status = conn.hasProtocol(ProtocolFeature.STATUS);
  if (status) await conn.setStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER);
  await conn.setFeatures(fe.features);
  if (status) await conn.setStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK);
  await conn.setMemTable(fe.memory.memTable());
}

/** The rest of vhost_dev_start on the destination: every ring at its migrated base, DRIVER_OK. */
async function startDestinationRings(fe: VhostUserFrontend, conn: VhostUserConnection, bases: number[]): Promise<void> {
  for (let i = 0; i < fe.queues.length; i++) await fe.startQueue(i, bases[i], conn);
  if (conn.hasProtocol(ProtocolFeature.STATUS)) await conn.setStatus(VirtioStatus.ACKNOWLEDGE | VirtioStatus.DRIVER | VirtioStatus.FEATURES_OK | VirtioStatus.DRIVER_OK);
}

/**
 * One transfer straight from host to host: a pipe whose write end goes to the source (SAVE) and
 * read end to the destination (LOAD); the bytes flow between the two hosts, not through this
 * process (a pre-copy round, and the `direct-pipe` channel). A channel the source answers with
 * (its own pipe or memfd holding the state) goes to the destination in place of our read end; a
 * destination that answers LOAD with a channel of its own would need this process to write the
 * bytes into it, which is the relayed `pipe` channel's job: refused. Both CHECKs are collected
 * whatever happens, so neither side keeps the transfer in its slot; an error names each side
 * that failed, the destination first (its refusal is why a source's write ended early).
 */
async function hostToHost(src: VhostUserConnection, dst: VhostUserConnection, savePhase: number, loadPhase: number, pipeBytes: number | undefined): Promise<{ sourceReturnedFd: boolean }> {
  const [r, w] = native.pipe2();
  growPipe(w, pipeBytes);
  let srcStarted = false;
  let dstStarted = false;
  let srcFd: number | null = null;
  const errors: string[] = [];
  try {
    try {
      srcFd = await src.setDeviceStateFd(DeviceStateDirection.SAVE, savePhase, w);
      srcStarted = true;
    } finally {
      native.close(w);
    }
    const ret = await dst.setDeviceStateFd(DeviceStateDirection.LOAD, loadPhase, srcFd ?? r);
    dstStarted = true;
    if (ret !== null) {
      native.close(ret);
      throw new Error('it answered LOAD with a channel of its own, which only a front-end that carries the bytes can feed (use the relayed pipe channel)');
    }
  } catch (e) {
    errors.push(`${srcStarted ? 'destination' : 'source'}: ${(e as Error).message}`);
  } finally {
    // The destination holds its own copy of the read end now; ours would keep the pipe open
    // after the destination stopped reading and leave the source blocked instead of failing.
    native.close(r);
    if (srcFd !== null) native.close(srcFd);
  }
  // Both at once (two connections): each answers when its own side is done.
  const [s, d] = await Promise.allSettled([srcStarted ? src.checkDeviceState() : null, dstStarted ? dst.checkDeviceState() : null]);
  if (d.status === 'rejected') errors.push(`destination: ${(d.reason as Error).message}`);
  if (s.status === 'rejected') errors.push(`source: ${(s.reason as Error).message}`);
  if (errors.length > 0) throw new Error(errors.join('; '));
  return { sourceReturnedFd: srcFd !== null };
}

/**
 * CHECK_DEVICE_STATE on both sides at once (two connections, each answers when its own side is
 * done); the source's failure is the one reported when both fail (did it write everything?).
 */
async function checkBoth(src: VhostUserConnection, dst: VhostUserConnection, step: (s: string) => Promise<void>): Promise<void> {
  await step('check-source');
  await step('check-destination');
  const [s, d] = await Promise.allSettled([src.checkDeviceState(), dst.checkDeviceState()]);
  if (s.status === 'rejected') throw s.reason;
  if (d.status === 'rejected') throw d.reason;
}

/** Moves the device behind `fe` from its current back-end to the one listening at destPath. */
export async function migrate(fe: VhostUserFrontend, destPath: string, opts: MigrateOptions = {}): Promise<MigrateReport> {
  const mode = opts.channel ?? 'pipe';
  const chunk = opts.chunkSize ?? MIGRATION_CHUNK;
  const step = async (s: string) => {
    await opts.onStep?.(s);
  };
  const src = fe.conn;
  if (!src.hasProtocol(ProtocolFeature.DEVICE_STATE)) throw new MigrationError('the source back-end does not support DEVICE_STATE', false);
  if (mode === 'rfc-shm' && !src.hasProtocol(RFC_STATE_SHM_PROTOCOL_FEATURE)) {
    throw new MigrationError('the source back-end did not negotiate the experimental RFC state shm extension (protocol feature 63)', false);
  }
  const rounds = opts.precopyRounds ?? 0;
  if (rounds > 0) {
    if (!src.hasProtocol(PRECOPY_PROTOCOL_FEATURE)) {
      throw new MigrationError('the source did not negotiate pre-copy (protocol feature 62: a vhost-wasm host with a memory disk)', false);
    }
    if (mode === 'rfc-shm') throw new MigrationError('pre-copy goes with the pipe, direct-pipe or memfd channel, not rfc-shm', false);
    if (mode === 'handover') throw new MigrationError('pre-copy and the handover channel do not go together: a handed-over disk is not copied at all', false);
  }
  if (mode === 'handover' && !src.hasProtocol(DISK_HANDOVER_PROTOCOL_FEATURE)) {
    throw new MigrationError('the source did not negotiate the disk hand-over (protocol feature 61: a vhost-wasm host with a writable memory disk); migrate over direct-pipe instead', false);
  }
  await step('init-destination');
  const dst = await initDestination(destPath, fe, mode, rounds > 0).catch((e: Error) => {
    throw new MigrationError(`destination: ${e.message}`, false);
  });
  if (rounds > 0) {
    // With pre-copy, what does not start a ring goes before the rounds: the features and
    // memory table do not change across the stop (guest RAM stays where it is), and a
    // vhost-wasm destination that has them when the first round arrives warms its rings'
    // machinery up while the source still serves (host/session/dispatch.ts, warmForIncoming).
    try {
      await step('configure-destination');
      await configureDestination(fe, dst);
    } catch (e) {
      dst.close();
      throw new MigrationError(`destination: ${(e as Error).message}`, false);
    }
  }
  let handoverMs: number | undefined;
  if (mode === 'handover') {
    // While the source still serves: both hosts map the same pages, and the destination serves
    // nothing before the DISK_FINAL state, so nothing here waits for the stop.
    const t = performance.now();
    try {
      // Features and memory table first: the destination's fresh worker on the adopted disk is
      // given them and warmed up with them while the source still serves.
      await step('configure-destination');
      await configureDestination(fe, dst);
      await step('handover-disk');
      await handOverDisk(src, dst);
    } catch (e) {
      dst.close();
      throw new MigrationError(`disk hand-over failed: ${(e as Error).message}; the source keeps serving (its rings never stopped)`, true);
    }
    handoverMs = performance.now() - t;
  }
  const precopyMs: number[] = [];
  // A round that took no less than the one before ends the live rounds only when the round
  // before it did not shrink either: a vhost-wasm source throttles the guest's writes when a
  // round does not shrink (auto-converge), and the round after is the first it can help.
  let stalled = false;
  for (let i = 0; i < rounds; i++) {
    await step(`precopy-${i}`);
    const t = performance.now();
    try {
      await hostToHost(src, dst, i === 0 ? PrecopyPhase.START : PrecopyPhase.ROUND, PrecopyPhase.ROUND, opts.pipeBytes);
    } catch (e) {
      dst.close();
      // The rings never stopped: the device kept running on the source all along.
      throw new MigrationError(`pre-copy round ${i} failed: ${(e as Error).message}; the source keeps serving (its rings never stopped)`, true);
    }
    const ms = performance.now() - t;
    precopyMs.push(ms);
    if (i > 0 && ms <= (opts.precopyTargetMs ?? 20)) break;
    if (i > 0 && ms >= precopyMs[i - 1]) {
      if (stalled) break;
      stalled = true;
    } else stalled = false;
  }
  const phase = rounds > 0 ? PrecopyPhase.FINAL : mode === 'handover' ? HandoverPhase.DISK_FINAL : DeviceStatePhase.STOPPED;

  const t0 = performance.now();
  const bases: number[] = [];
  let stopped = false;
  const resumeSource = async (why: string): Promise<never> => {
    dst.close();
    let resumed = false;
    if (stopped) {
      try {
        for (let i = 0; i < fe.queues.length; i++) await fe.startQueue(i, bases[i], src);
        resumed = true;
      } catch (e) {
        throw new MigrationError(`${why}; restarting the source failed too: ${(e as Error).message}`, false);
      }
    }
    throw new MigrationError(`${why}${resumed ? '; the source resumed' : ''}`, resumed);
  };

  let bytes = 0;
  let sourceReturnedFd = false;
  let tTransfer = 0;
  try {
    await step('stop-source');
    for (const q of fe.queues) bases.push(await src.getVringBase(q.index));
    stopped = true;
    if (rounds > 0) {
      // The blocks written since the last round, with nothing writing any more.
      await step('precopy-stopped');
      const t = performance.now();
      await hostToHost(src, dst, PrecopyPhase.ROUND, PrecopyPhase.ROUND, opts.pipeBytes);
      precopyMs.push(performance.now() - t);
    }
    await step('transfer');
    const tx = performance.now();
    if (mode === 'pipe') {
      const [sr, sw] = native.pipe2();
      const [lr, lw] = native.pipe2();
      // Both back-ends grow the pipes they get too; doing it here covers back-ends that do not.
      growPipe(sw, opts.pipeBytes);
      growPipe(lw, opts.pipeBytes);
      let readFd = sr;
      let writeFd = lw;
      try {
        // Both sides at once (two connections); each may answer with a channel of its own.
        const [s, d] = await Promise.allSettled([src.setDeviceStateFd(DeviceStateDirection.SAVE, phase, sw), dst.setDeviceStateFd(DeviceStateDirection.LOAD, phase, lr)]);
        native.close(sw);
        native.close(lr);
        if (s.status === 'fulfilled' && s.value !== null) {
          sourceReturnedFd = true;
          readFd = s.value;
          native.close(sr);
        }
        if (d.status === 'fulfilled' && d.value !== null) {
          writeFd = d.value;
          native.close(lw);
        }
        if (s.status === 'rejected') throw s.reason;
        if (d.status === 'rejected') throw d.reason;
        await step('pump');
        let pumpError: Error | null = null;
        bytes = await readToEnd(readFd, async (b) => {
          if (pumpError) return;
          try {
            await writeAll(writeFd, b);
          } catch (e) {
            // The destination stopped reading (refused the state): keep draining the source so
            // its save completes, and let CHECK on the destination say why.
            pumpError = e as Error;
          }
        }, chunk);
      } finally {
        native.close(readFd);
        native.close(writeFd);
      }
      await checkBoth(src, dst, step);
    } else if (mode === 'direct-pipe' || mode === 'handover') {
      await step('pump');
      ({ sourceReturnedFd } = await hostToHost(src, dst, phase, phase, opts.pipeBytes));
    } else if (mode === 'rfc-shm') {
      bytes = await rfcPump(src, dst, opts.rfcAreaSize ?? MIGRATION_CHUNK, undefined, step);
    } else {
      const m = native.memfdCreate('vhost-wasm-migration', false);
      let ret: number | null = null;
      try {
        ret = await src.setDeviceStateFd(DeviceStateDirection.SAVE, phase, m);
        sourceReturnedFd = ret !== null;
        await step('check-source');
        await src.checkDeviceState();
        const channel = ret ?? m;
        bytes = native.fstat(channel).size;
        await step('load');
        if (native.fstat(channel).isFile) {
          // The same file goes to the destination: the state is never copied by the front-end.
          const back = await dst.setDeviceStateFd(DeviceStateDirection.LOAD, phase, channel);
          if (back !== null) native.close(back);
        } else {
          throw new Error('the source returned a non-file channel for a memfd migration');
        }
        await step('check-destination');
        await dst.checkDeviceState();
      } finally {
        native.close(m);
        if (ret !== null) native.close(ret);
      }
    }
    tTransfer = performance.now() - tx;
    await step('start-destination');
    if (rounds === 0 && mode !== 'handover') await configureDestination(fe, dst);
    await startDestinationRings(fe, dst, bases);
  } catch (e) {
    return resumeSource(`migration failed: ${(e as Error).message}`);
  }
  const downtimeMs = performance.now() - t0;
  fe.adoptConnection(dst).close();
  await step('done');
  return { channel: mode, bytes, bases, sourceReturnedFd, downtimeMs, transferMs: tTransfer, precopyMs, ...(handoverMs !== undefined ? { handoverMs } : {}) };
}

/**
 * Phase DISK_FD: the source answers with its memory disk's memfd, which goes to the destination
 * as is (this process holds a copy only until it is sent). The message needs an fd of ours; the
 * source does not use it. Errors name the side.
 */
async function handOverDisk(src: VhostUserConnection, dst: VhostUserConnection): Promise<void> {
  const [r, w] = native.pipe2();
  let disk: number | null;
  try {
    disk = await src.setDeviceStateFd(DeviceStateDirection.SAVE, HandoverPhase.DISK_FD, w).catch((e: Error) => {
      throw new Error(`source: ${e.message}`);
    });
  } finally {
    native.close(r);
    native.close(w);
  }
  if (disk === null) throw new Error('source: it answered DISK_FD without its disk\'s memfd');
  try {
    const back = await dst.setDeviceStateFd(DeviceStateDirection.LOAD, HandoverPhase.DISK_FD, disk).catch((e: Error) => {
      throw new Error(`destination: ${e.message} (it refused the source's disk; its log says why)`);
    });
    if (back !== null) native.close(back);
  } finally {
    native.close(disk);
  }
}
