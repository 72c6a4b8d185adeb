// The live session handover record (docs/upgrade.md, "Host upgrade"): what an old host process
// hands a new one so that the new one carries on a CONNECTED vhost-user session without the
// front-end reconnecting. It is everything the front-end told this connection (features,
// memory table, log and inflight areas, each ring's settings and fds, the back-end request
// channel) plus where each ring stopped and the device's own state. Fds travel beside it
// (SCM_RIGHTS); the record names them by their index in that list.
//
// The receiver treats the record as hostile input: checkLiveRecord refuses anything that is
// not exactly this shape (types, ranges, every fd named once and every fd named), and the
// session then applies it through its own request handlers, which check the rest (a region
// fd that does not cover its region, a ring index the device lacks, features it does not offer).

import type { VringAddrMsg } from '../device/rpc.ts';
import { MAX_MEM_SLOTS } from '../protocol/constants.ts';
import { VhostWasmError } from '../errors.ts';
import { MAX_CARRIED_LOCK_FDS, type CarriedLocks } from './lock-carry.ts';

export const LIVE_RECORD_VERSION = 1;

/** An index into the fds sent with the record. */
export type FdRef = number;

export interface LiveRing {
  /** SET_VRING_NUM's value (0: never sent). */
  num: number;
  addr: VringAddrMsg | null;
  /**
   * SET_VRING_BASE's value (null: never sent). A ring that runs gets where the old host stopped
   * it from the stop message (LiveStop), which replaces this.
   */
  base: number | null;
  /** The kick fd; 'inband': SET_VRING_KICK without an fd (in-band kicks); null: none yet. */
  kick: FdRef | 'inband' | null;
  call: FdRef | null;
  err: FdRef | null;
  enabled: boolean;
  /** The ring ran (had a queue) when the old host stopped it: it starts again in the new one. */
  started: boolean;
}

export interface LiveSessionRecord {
  version: typeof LIVE_RECORD_VERSION;
  /** The device the session drove, as the old host's plugin described itself (checked against the new one). */
  device: { deviceId: number; numQueues: number; name: string; version: string };
  /** SET_FEATURES's acked features (hex), or null before any. */
  features: string | null;
  /** SET_PROTOCOL_FEATURES's value (hex). */
  protocolFeatures: string;
  /** SET_STATUS's last value. */
  status: number;
  /** The connected front-end socket. */
  frontEnd: FdRef;
  /** SET_BACKEND_REQ_FD's socket, if any. */
  backendChannel: FdRef | null;
  memory: { guestPhysAddr: number; size: number; userspaceAddr: number; mmapOffset: number; fd: FdRef }[];
  /** SET_LOG_BASE's area (LOG_SHMFD). */
  logArea: { fd: FdRef; size: number; offset: number } | null;
  /** SET_LOG_FD's eventfd. */
  logFd: FdRef | null;
  /** SET_INFLIGHT_FD's area. */
  inflightArea: { fd: FdRef; size: number; offset: number; numQueues: number; queueSize: number } | null;
  rings: LiveRing[];
}

/**
 * The second part of a live handover, sent once the new host has applied the record: the old
 * host stopped the rings there and saved the device's state. Its one fd is the state.
 */
export interface LiveStop {
  /** Per ring: where it stopped (GET_VRING_BASE's answer), or null for a ring that did not run. */
  bases: (number | null)[];
  /** The device's state: a state container (host/migration/container.ts) in a memfd, this many bytes. */
  stateBytes: number;
  /** A virtio-fs guest's locks (host/session/lock-carry.ts): their fds follow the state memfd. */
  locks?: CarriedLocks;
}

/** A handover record or stop message that is not what it claims (always wrapped in HandoverRefused for the operator). */
export class LiveRecordError extends VhostWasmError {
  static override readonly code = 'ERR_HANDOVER_RECORD';
  override readonly name = 'LiveRecordError';
}

/** Rings a record may name: far more than any device has (the device's own count is checked when applied). */
const MAX_RINGS = 1024;
const U16 = 0xffff;

type Obj = Record<string, unknown>;

function obj(v: unknown, what: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new LiveRecordError(`${what} is not an object`);
  return v as Obj;
}

function only(o: Obj, keys: readonly string[], what: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new LiveRecordError(`${what} has an unknown field "${k}"`);
}

function uint(v: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) throw new LiveRecordError(`${what} is not an integer in [0, ${max}]`);
  return v;
}

function bool(v: unknown, what: string): boolean {
  if (typeof v !== 'boolean') throw new LiveRecordError(`${what} is not true or false`);
  return v;
}

function hex64(v: unknown, what: string): string {
  if (typeof v !== 'string' || !/^[0-9a-f]{1,16}$/.test(v)) throw new LiveRecordError(`${what} is not a 64-bit hex number`);
  return v;
}

function str(v: unknown, what: string, max = 256): string {
  if (typeof v !== 'string' || v.length > max) throw new LiveRecordError(`${what} is not a string of at most ${max} characters`);
  return v;
}

function nullable<T>(v: unknown, f: (v: unknown) => T): T | null {
  return v === null ? null : f(v);
}

/**
 * Checks `raw` (parsed JSON from the old host) against the record's shape, with `fdCount` fds
 * received: every fd reference in range, none named twice, every fd named. Throws
 * LiveRecordError saying what is wrong.
 */
export function checkLiveRecord(raw: unknown, fdCount: number): LiveSessionRecord {
  const seen = new Set<number>();
  const fd = (v: unknown, what: string): FdRef => {
    const i = uint(v, what);
    if (i >= fdCount) throw new LiveRecordError(`${what} names fd ${i}, but ${fdCount} came with the record`);
    if (seen.has(i)) throw new LiveRecordError(`${what} names fd ${i}, which the record names twice`);
    seen.add(i);
    return i;
  };
  const o = obj(raw, 'the session record');
  only(o, ['version', 'device', 'features', 'protocolFeatures', 'status', 'frontEnd', 'backendChannel', 'memory', 'logArea', 'logFd', 'inflightArea', 'rings'], 'the session record');
  if (o.version !== LIVE_RECORD_VERSION) throw new LiveRecordError(`session record version ${String(o.version)}: this host reads version ${LIVE_RECORD_VERSION}`);
  const d = obj(o.device, 'device');
  only(d, ['deviceId', 'numQueues', 'name', 'version'], 'device');
  const device = { deviceId: uint(d.deviceId, 'device.deviceId', U16), numQueues: uint(d.numQueues, 'device.numQueues', MAX_RINGS), name: str(d.name, 'device.name'), version: str(d.version, 'device.version') };
  if (!Array.isArray(o.memory) || o.memory.length > MAX_MEM_SLOTS) throw new LiveRecordError(`memory is not a list of at most ${MAX_MEM_SLOTS} regions`);
  const memory = o.memory.map((r, i) => {
    const m = obj(r, `memory[${i}]`);
    only(m, ['guestPhysAddr', 'size', 'userspaceAddr', 'mmapOffset', 'fd'], `memory[${i}]`);
    return {
      guestPhysAddr: uint(m.guestPhysAddr, `memory[${i}].guestPhysAddr`),
      size: uint(m.size, `memory[${i}].size`),
      userspaceAddr: uint(m.userspaceAddr, `memory[${i}].userspaceAddr`),
      mmapOffset: uint(m.mmapOffset, `memory[${i}].mmapOffset`),
      fd: fd(m.fd, `memory[${i}].fd`),
    };
  });
  if (!Array.isArray(o.rings) || o.rings.length > MAX_RINGS) throw new LiveRecordError(`rings is not a list of at most ${MAX_RINGS}`);
  const rings = o.rings.map((v, i): LiveRing => {
    const r = obj(v, `rings[${i}]`);
    only(r, ['num', 'addr', 'base', 'kick', 'call', 'err', 'enabled', 'started'], `rings[${i}]`);
    const addr = nullable(r.addr, (a) => {
      const x = obj(a, `rings[${i}].addr`);
      only(x, ['descUserAddr', 'availUserAddr', 'usedUserAddr', 'log', 'logGuestAddr'], `rings[${i}].addr`);
      return {
        descUserAddr: uint(x.descUserAddr, `rings[${i}].addr.descUserAddr`),
        availUserAddr: uint(x.availUserAddr, `rings[${i}].addr.availUserAddr`),
        usedUserAddr: uint(x.usedUserAddr, `rings[${i}].addr.usedUserAddr`),
        log: bool(x.log, `rings[${i}].addr.log`),
        logGuestAddr: uint(x.logGuestAddr, `rings[${i}].addr.logGuestAddr`),
      };
    });
    // Packed rings' bases carry the wrap counters in bit 15 of each half: 32 bits.
    return {
      num: uint(r.num, `rings[${i}].num`, 32768),
      addr,
      base: nullable(r.base, (b) => uint(b, `rings[${i}].base`, 0xffffffff)),
      kick: r.kick === 'inband' ? 'inband' : nullable(r.kick, (k) => fd(k, `rings[${i}].kick`)),
      call: nullable(r.call, (k) => fd(k, `rings[${i}].call`)),
      err: nullable(r.err, (k) => fd(k, `rings[${i}].err`)),
      enabled: bool(r.enabled, `rings[${i}].enabled`),
      started: bool(r.started, `rings[${i}].started`),
    };
  });
  const record: LiveSessionRecord = {
    version: LIVE_RECORD_VERSION,
    device,
    features: nullable(o.features, (v) => hex64(v, 'features')),
    protocolFeatures: hex64(o.protocolFeatures, 'protocolFeatures'),
    status: uint(o.status, 'status', 0xff),
    frontEnd: fd(o.frontEnd, 'frontEnd'),
    backendChannel: nullable(o.backendChannel, (v) => fd(v, 'backendChannel')),
    memory,
    logArea: nullable(o.logArea, (v) => {
      const a = obj(v, 'logArea');
      only(a, ['fd', 'size', 'offset'], 'logArea');
      return { fd: fd(a.fd, 'logArea.fd'), size: uint(a.size, 'logArea.size'), offset: uint(a.offset, 'logArea.offset') };
    }),
    logFd: nullable(o.logFd, (v) => fd(v, 'logFd')),
    inflightArea: nullable(o.inflightArea, (v) => {
      const a = obj(v, 'inflightArea');
      only(a, ['fd', 'size', 'offset', 'numQueues', 'queueSize'], 'inflightArea');
      return {
        fd: fd(a.fd, 'inflightArea.fd'),
        size: uint(a.size, 'inflightArea.size'),
        offset: uint(a.offset, 'inflightArea.offset'),
        numQueues: uint(a.numQueues, 'inflightArea.numQueues', U16),
        queueSize: uint(a.queueSize, 'inflightArea.queueSize', U16),
      };
    }),
    rings,
  };
  if (seen.size !== fdCount) throw new LiveRecordError(`${fdCount} fds came with the record, which names ${seen.size}`);
  return record;
}

/** Checks the stop part (`raw`, parsed JSON) against a record of `rings` rings. */
export function checkLiveStop(raw: unknown, rings: number): LiveStop {
  const o = obj(raw, 'the stop message');
  only(o, ['magic', 'bases', 'stateBytes', 'locks'], 'the stop message');
  if (!Array.isArray(o.bases) || o.bases.length !== rings) throw new LiveRecordError(`the stop message has ${Array.isArray(o.bases) ? o.bases.length : 'no'} ring bases for ${rings} ring(s)`);
  const stop: LiveStop = {
    bases: o.bases.map((b, i) => nullable(b, (v) => uint(v, `bases[${i}]`, 0xffffffff))),
    stateBytes: uint(o.stateBytes, 'stateBytes'),
  };
  if (o.locks !== undefined) {
    const l = obj(o.locks, 'locks');
    only(l, ['handoff', 'fds'], 'locks');
    if (typeof l.handoff !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(l.handoff)) throw new LiveRecordError('locks.handoff must be base64');
    stop.locks = { handoff: l.handoff, fds: uint(l.fds, 'locks.fds', MAX_CARRIED_LOCK_FDS) };
  }
  return stop;
}
