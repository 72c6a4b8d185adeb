// The multi-tenant daemon: many devices in one host process, added at start from the config
// file and later through the management API. Each device starts on its own: one whose plugin
// does not load, whose disk is missing or whose socket is taken is reported and the others
// serve (a config that does not parse stops everything before this point: config.ts).

import { pathToFileURL } from 'node:url';
import { Host, type DeviceConfig, type HostDevice } from '../server/index.ts';
import type { ListenAddress } from '../server/listener.ts';
import type { UpgradeOutcome } from '../server/plugin-upgrade.ts';
import type { DeviceSource } from '../device/rpc.ts';
import { checkSharedDir, checkStorage } from '../cli/grant-checks.ts';
import { createLogger } from '../log/logger.ts';
import { describeFdBudget, fdBudgetInfo } from '../resources/fd-budget.ts';
import { DEFAULT_START, throttleGroupKey, type DeviceSpec, type StartMode } from './config.ts';
import { isThrottled, NO_THROTTLE, TokenBucket, type ThrottleCounters, type ThrottleLimits } from '../limits/token-bucket.ts';
import { VhostWasmError } from '../errors.ts';
import type { NetStats } from '../net/link.ts';
import type { MeteredDevice } from '../metrics/exporter.ts';
import type { DeviceWork } from '../metrics/device-meter.ts';
import { CpuShareGovernor, type CpuShareStats } from '../limits/cpu-share.ts';
import { mib } from '../storage/prealloc.ts';

const log = createLogger('daemon');

/** A device-add or device-del that cannot be done (an id in use, no such device). */
export class DaemonRequestError extends VhostWasmError {
  static override readonly code = 'ERR_DAEMON_REQUEST';
  override name = 'DaemonRequestError';
}

/**
 * A request for a device whose device-add still makes its prealloc=on memory disk's pages: it
 * cannot act on it yet (retry once device-list shows it ready; device-del stops it).
 */
export class DevicePreparingError extends VhostWasmError {
  static override readonly code = 'ERR_DEVICE_PREPARING';
  override name = 'DevicePreparingError';
}

/** What a device whose memory disk's pages are being made is doing, for the errors that name it. */
function preparing(p: { diskBytes: number; madeBytes: number }): string {
  return `is preparing its storage (its memory disk's pages are being made: ${mib(p.madeBytes)} of ${mib(p.diskBytes)})`;
}

/** A device as device-list shows it. */
export interface DeviceSummary {
  id: string;
  tenant: string | null;
  /** The socket path, or "fd N" for an inherited socket. */
  listen: string;
  plugin: string;
  /** Its virtio name and device id, from the plugin. */
  name: string | null;
  virtioId: number | null;
  queues: number | null;
  /**
   * not-started: its worker starts when a front-end connects (start "on-connect"); idle or with
   * a front-end; failed: its worker died (or did not start) and starts again on the next connection;
   * preparing: its device-add runs and its prealloc=on memory disk's pages are being made (no
   * socket yet; device-del stops it).
   */
  state: 'not-started' | 'idle' | 'connected' | 'failed' | 'preparing';
  /** When its worker starts (config "start"). */
  start: StartMode;
}

export interface DeviceStats extends DeviceSummary {
  /** Seconds since the device was added. */
  uptimeSeconds: number;
  frontEnd: boolean;
  waitingFrontEnds: number;
  connectionsAccepted: number;
  connectionsRefusedBusy: number;
  /** Workers started: 1, plus one per restart after a failure. */
  workerStarts: number;
  lastFailure: string | null;
  /** A worker that failed to start is retried only after a wait (device-slot.ts): failed starts in a row, seconds left. */
  startBackoff: { failures: number; retryInSeconds: number } | null;
  limits: DeviceSpec['limits'];
  /** Its adaptive polling's longest spin (ns; 0: it does not poll), config pollMaxNs. */
  pollMaxNs: number;
  throttleGroup: string | null;
  /** What its throttle let through and how often a ring waited (the group's, for a device in one). */
  throttled: ThrottleCounters;
  /** The time its code ran in calls and its threads ran on a CPU over the last second, and whether it is demoted for it. */
  cpu: CpuShareStats | null;
  /** Its networks (grant order) and what its ports carried; null without a network grant. */
  net: { networks: string[]; counters: NetStats } | null;
  /** While it is `preparing`: its memory disk's size and the bytes of pages made so far; else null. */
  preparing: { diskBytes: number; madeBytes: number } | null;
  /** What it served since it was added: the same counts as its metrics. */
  work: DeviceWork;
}

/** A device as a daemon handover moves it (daemon-handover.ts). */
export interface HandoverDevice {
  id: string;
  device: HostDevice;
  /** Its socket path; null for an inherited socket (fd, systemd). */
  socket: string | null;
  /** Its limits now (set-limits included), which the new daemon applies over its config's. */
  limits: { callDeadlineMs: number; cpuShare: number; throttle: ThrottleLimits | null };
}

/** A throttle group: one budget, the devices drawing from it. */
interface Group {
  bucket: TokenBucket;
  members: Set<string>;
}

/** Limits as listings show them: null for none. */
function shown(t: ThrottleLimits): ThrottleLimits | null {
  return isThrottled(t) ? t : null;
}

function listenText(a: ListenAddress): string {
  return 'path' in a ? a.path : `fd ${a.fd}`;
}

/** What the worker loads for a validated spec (grants checked on the host side first). */
function sourceFor(spec: DeviceSpec, memoryDiskFd?: number): DeviceSource {
  if ('module' in spec.device) return { kind: 'module', url: pathToFileURL(spec.device.module).href, options: {} };
  const checked = checkStorage(spec.grants.storage);
  // A memory disk handed over by a previous daemon (its bytes): the device serves that memfd.
  const storage = checked && memoryDiskFd !== undefined ? { ...checked, fd: memoryDiskFd } : checked;
  return {
    kind: 'plugin',
    path: spec.device.plugin,
    options: {
      memoryLimitBytes: spec.limits.memoryLimitBytes,
      entropy: spec.grants.entropy,
      ...(Object.keys(spec.pluginOptions).length ? { pluginOptions: spec.pluginOptions } : {}),
      ...(storage ? { storage } : {}),
      ...(spec.grants.filesystem ? { filesystem: checkSharedDir(spec.grants.filesystem) } : {}),
    },
  };
}

/** A device whose device-add runs. */
interface Adding {
  spec: DeviceSpec;
  address: ListenAddress;
  seq: number;
  /** When its device-add began (performance.now()). */
  at: number;
}

interface Entry {
  spec: DeviceSpec;
  address: ListenAddress;
  device: HostDevice;
  addedAt: number;
  /** When its device-add began, among all of them: listings keep that order. */
  seq: number;
  /** Its own I/O budget, or its throttle group's. */
  throttle: TokenBucket;
}

export class Daemon {
  private readonly entries = new Map<string, Entry>();
  /** Ids being added or removed right now: a second request for the same id is refused, not raced. */
  private readonly busy = new Set<string>();
  /** Devices whose device-add runs, for listings while their memory disk's pages are made. */
  private readonly adding = new Map<string, Adding>();
  private seq = 0;
  /** Throttle groups by tenant/name (config.ts throttleGroupKey). */
  private readonly groups = new Map<string, Group>();
  /** Demotes the threads of a device that wants more CPU than its share. */
  private readonly cpu = new CpuShareGovernor();
  /** Why requests that change devices are refused now: a daemon handover runs (daemon-handover.ts). */
  private handingOver: string | null = null;
  /** Devices whose plugin-upgrade runs: a daemon handover waits for none (it is refused). */
  private readonly upgrading = new Set<string>();

  private constructor(
    readonly host: Host,
    /** When a device whose spec does not say starts its worker. */
    readonly defaultStart: StartMode,
  ) {}

  /** A daemon serving nothing yet: devices come with add(). */
  static create(defaultStart: StartMode = DEFAULT_START): Daemon {
    return new Daemon(Host.empty(), defaultStart);
  }

  /** The fd budget, for the start-up log. */
  describeBudget(): string {
    return describeFdBudget(fdBudgetInfo());
  }

  /**
   * `handed`: the device's listening socket (and memory disk) came from a previous daemon
   * (take-over.ts): it is served on that fd, accepting nothing until told (holdAccepting), and
   * listed at `address`.
   */
  async add(spec: DeviceSpec, address: ListenAddress, handed?: { listenFd: number; memoryDiskFd?: number }): Promise<DeviceSummary> {
    this.refuseWhileHandingOver();
    if (this.busy.has(spec.id)) throw this.idTaken(spec.id);
    if (this.entries.has(spec.id)) throw new DaemonRequestError(`device ${spec.id} already exists: remove it first or choose another id`);
    const clash = [...this.entries.values()].find((e) => listenText(e.address) === listenText(address));
    if (clash) throw new DaemonRequestError(`${listenText(address)} is already served by device ${clash.spec.id}`);
    this.busy.add(spec.id);
    const seq = this.seq++;
    this.adding.set(spec.id, { spec, address, seq, at: performance.now() });
    const key = throttleGroupKey(spec);
    // Joined before the device starts: devices of a config start side by side, and each of a
    // group must find the one bucket. Limits that clash with the group's were refused before
    // this (checkThrottleGroups).
    let group = key === null ? undefined : this.groups.get(key);
    if (key !== null && !group) this.groups.set(key, (group = { bucket: TokenBucket.create(spec.limits.throttle ?? NO_THROTTLE), members: new Set() }));
    group?.members.add(spec.id);
    // A member that states limits while the group has none (it was made by one that did not) sets them.
    if (group && spec.limits.throttle && !isThrottled(group.bucket.limits())) group.bucket.set(spec.limits.throttle);
    const throttle = group?.bucket ?? TokenBucket.create(spec.limits.throttle ?? NO_THROTTLE);
    let added = false;
    try {
      const config: DeviceConfig = {
        label: spec.id,
        listen: handed ? { fd: handed.listenFd, hold: true } : address,
        source: sourceFor(spec, handed?.memoryDiskFd),
        callDeadlineMs: spec.limits.callDeadlineMs,
        queueThreads: spec.queueThreads,
        pollMaxNs: spec.pollMaxNs,
        throttle,
        ...(spec.grants.network.length > 0 ? { networks: spec.grants.network } : {}),
        ...(spec.limits.networkRate ? { networkRate: TokenBucket.create(spec.limits.networkRate) } : {}),
        start: spec.start ?? this.defaultStart,
        session: {
          stateReturnMemfd: spec.migration.stateReturnMemfd,
          experimentalRfcStateShm: spec.migration.experimentalRfcStateShm,
          statePipeBytes: spec.migration.statePipeBytes,
        },
      };
      const device = await this.host.add(config);
      const entry: Entry = { spec: { ...spec, start: spec.start ?? this.defaultStart, limits: { ...spec.limits, throttle: shown(throttle.limits()) } }, address, device, addedAt: performance.now(), seq, throttle };
      this.entries.set(spec.id, entry);
      added = true;
      const meter = device.slot.meter;
      this.cpu.track(spec.id, () => device.slot.threadIds(), () => ({ calls: meter.longCallSeconds(), slowCalls: meter.slowCallSeconds(), spin: meter.pollSpinSeconds() }), spec.limits.cpuShare);
      const info = device.slot.info;
      const what = info
        ? `${info.name} (virtio device id ${info.deviceId}, ${info.numQueues} queue(s))`
        : `${'plugin' in spec.device ? spec.device.plugin : spec.device.module}, started when a front-end connects`;
      log.info(`serving ${spec.id}${spec.tenant ? ` (tenant ${spec.tenant})` : ''}: ${what} on ${listenText(address)}`);
      return this.summary(entry);
    } finally {
      if (!added && group) this.leaveGroup(key!, group, spec.id);
      this.adding.delete(spec.id);
      this.busy.delete(spec.id);
    }
  }

  /** Removes a device: its front-end is disconnected, its socket removed, its worker ended. */
  async remove(id: string): Promise<void> {
    this.refuseWhileHandingOver();
    if (this.adding.has(id) && this.host.isPreparing(id)) {
      // Its device-add waits for its memory disk's pages: stopped now (that request fails), and
      // the pages are given back before this answers.
      await this.host.remove(id);
      log.info(`removed ${id} while its memory disk's pages were being made`);
      return;
    }
    if (this.busy.has(id)) throw new DaemonRequestError(`device ${id} is being added or removed by another request`);
    if (!this.entries.has(id)) throw this.missing(id);
    this.busy.add(id);
    try {
      await this.forget(id);
      log.info(`removed ${id}`);
    } finally {
      this.busy.delete(id);
    }
  }

  private leaveGroup(key: string, group: Group, id: string): void {
    group.members.delete(id);
    if (group.members.size === 0) this.groups.delete(key);
  }

  /** The limits of every throttle group now (device-add checks a new member's against them). */
  throttleGroups(): Map<string, ThrottleLimits> {
    return new Map([...this.groups].map(([k, g]) => [k, g.bucket.limits()]));
  }

  /** The throttle limits a device has now (set-limits builds on them). */
  throttleOf(id: string): ThrottleLimits {
    const e = this.entries.get(id);
    if (!e) throw this.missing(id);
    return e.throttle.limits();
  }

  /**
   * Changes what can change while a device runs: its call deadline (from the call in progress
   * on) its CPU share (at the next sample) and its I/O throttle (from the next request on; for a device in a throttle group, the
   * whole group's).
   */
  setLimits(id: string, limits: { callDeadlineMs?: number; throttle?: ThrottleLimits; cpuShare?: number }): DeviceStats['limits'] {
    this.refuseWhileHandingOver();
    const e = this.entries.get(id);
    if (!e) throw this.missing(id);
    if (this.busy.has(id)) throw new DaemonRequestError(`device ${id} is being added or removed by another request`);
    // A device waiting to retry a failed start tries again on its next connection: the new limits may be what it needed.
    e.device.slot.endStartBackoff();
    if (limits.callDeadlineMs !== undefined) {
      e.device.slot.setCallDeadline(limits.callDeadlineMs);
      e.spec = { ...e.spec, limits: { ...e.spec.limits, callDeadlineMs: limits.callDeadlineMs } };
      log.info(`${id}: call deadline now ${limits.callDeadlineMs} ms`);
    }
    if (limits.cpuShare !== undefined) {
      this.cpu.setLimit(id, limits.cpuShare);
      e.spec = { ...e.spec, limits: { ...e.spec.limits, cpuShare: limits.cpuShare } };
      log.info(`${id}: CPU share now ${limits.cpuShare}`);
    }
    if (limits.throttle !== undefined) {
      e.throttle.set(limits.throttle);
      const key = throttleGroupKey(e.spec);
      const members = key === null ? [id] : [...(this.groups.get(key)?.members ?? [id])];
      for (const m of members) {
        const me = this.entries.get(m);
        if (me) me.spec = { ...me.spec, limits: { ...me.spec.limits, throttle: shown(limits.throttle) } };
      }
      const t = limits.throttle;
      log.info(
        `${key === null ? id : `throttle group ${e.spec.throttleGroup} (${members.join(', ')})`}: ` +
          `${t.iops ? `${t.iops} IOPS (burst ${t.iopsBurst})` : 'no IOPS limit'}, ${t.bytesPerSecond ? `${t.bytesPerSecond} bytes/s (burst ${t.bytesBurst})` : 'no bytes/s limit'}`,
      );
    }
    return { ...e.spec.limits };
  }

  /**
   * plugin-upgrade: the device's plugin replaced by another build of it (host/server/plugin-upgrade.ts);
   * from then on the device runs (and restarts) from `pluginPath`. A device with no worker (never
   * started, or waiting to retry a failed start) is repaired by it: at once if it starts eagerly,
   * at its next connection if it starts on connect.
   */
  async upgrade(id: string, pluginPath: string): Promise<UpgradeOutcome & { id: string; plugin: string }> {
    const e = this.entries.get(id);
    if (!e) throw this.missing(id);
    if (this.busy.has(id)) throw new DaemonRequestError(`device ${id} is being added or removed by another request`);
    if (!('plugin' in e.spec.device)) throw new DaemonRequestError(`device ${id} runs a module, not a plugin: nothing to upgrade`);
    this.refuseWhileHandingOver();
    this.upgrading.add(id);
    let r;
    try {
      r = await e.device.listener.upgrade(pluginPath, (e.spec.start ?? this.defaultStart) === 'eager');
    } finally {
      this.upgrading.delete(id);
    }
    e.spec = { ...e.spec, device: { ...e.spec.device, plugin: pluginPath } };
    return { id, plugin: pluginPath, ...r };
  }

  /**
   * Why a request names a device that is not served: its device-add runs (its memory disk's
   * pages are being made, or it is starting), or there is no such device.
   */
  private missing(id: string): VhostWasmError {
    if (!this.adding.has(id)) return new DaemonRequestError(`no device ${id} (device-list shows the devices)`);
    const p = this.host.pageProgress(id);
    if (p !== null) return new DevicePreparingError(`device ${id} ${preparing(p)}: it cannot be acted on until it is ready; retry once device-list shows it, or device-del it to stop`);
    return new DaemonRequestError(`device ${id} is being added (its device-add runs): retry once that request is answered`);
  }

  /**
   * Why a device-add of an id that another request is adding or removing is refused. A device
   * preparing its storage already has the id (device-list shows it): the id is taken, which no
   * retry changes, so this is the duplicate-id error, not ERR_DEVICE_PREPARING's "retry".
   */
  private idTaken(id: string): DaemonRequestError {
    const p = this.adding.has(id) ? this.host.pageProgress(id) : null;
    if (p !== null) return new DaemonRequestError(`device ${id} already exists and ${preparing(p)}: choose another id, or device-del it to stop it`);
    return new DaemonRequestError(`device ${id} is being added or removed by another request`);
  }

  private refuseWhileHandingOver(): void {
    if (this.handingOver !== null) throw new DaemonRequestError(`${this.handingOver}: devices cannot be added, removed, upgraded or limited until it ends`);
  }

  /**
   * A daemon handover begins (daemon-handover.ts): every device as it moves, in listing order,
   * and from now until endHandover() no device is added, removed, upgraded or limited. Throws,
   * with every device's reason, when one cannot move now (nothing is held then).
   */
  beginHandover(what: string): HandoverDevice[] {
    if (this.handingOver !== null) throw new DaemonRequestError(`${this.handingOver}; one at a time`);
    const why: string[] = [];
    for (const id of this.busy) why.push(`${id}: it is being added or removed`);
    for (const id of this.upgrading) why.push(`${id}: its plugin-upgrade runs (retry once it is answered)`);
    const devices = this.ordered().map((e) => ({
      id: e.spec.id,
      device: e.device,
      socket: 'path' in e.address ? e.address.path : null,
      limits: { callDeadlineMs: e.spec.limits.callDeadlineMs, cpuShare: e.spec.limits.cpuShare, throttle: shown(e.throttle.limits()) },
    }));
    if (why.length > 0) throw new DaemonRequestError(`cannot hand the devices over now: ${why.join('; ')}`);
    this.handingOver = what;
    return devices;
  }

  endHandover(): void {
    this.handingOver = null;
  }

  /** The running device `id` (a take-over adopts its session). */
  deviceOf(id: string): HostDevice {
    const e = this.entries.get(id);
    if (!e) throw this.missing(id);
    return e.device;
  }

  /** Ends device `id` here (device-del; a device the new daemon serves now, its listener handed off, after a daemon handover). */
  async forget(id: string): Promise<void> {
    const e = this.entries.get(id);
    if (!e) return;
    this.cpu.untrack(id);
    await this.host.remove(id);
    const key = throttleGroupKey(e.spec);
    const group = key === null ? undefined : this.groups.get(key);
    if (group) this.leaveGroup(key!, group, id);
    this.entries.delete(id);
  }

  /** Every device with its meter, for the metrics endpoint. */
  metered(): MeteredDevice[] {
    return this.ordered().map((e) => ({
      id: e.spec.id,
      tenant: e.spec.tenant,
      // A device not started yet (on connect) is served as it should be.
      running: e.device.slot.stats().running || (e.device.slot.neverStarted && e.device.slot.stats().failure === null),
      meter: e.device.slot.meter,
      cpuDemoted: this.cpu.stats(e.spec.id)?.demoted ?? false,
      net: e.device.slot.netStats(),
    }));
  }

  list(): DeviceSummary[] {
    const preparing = this.preparingAdds().map((a) => ({ seq: a.seq, summary: this.preparingSummary(a.spec, a.address) }));
    return [...this.ordered().map((e) => ({ seq: e.seq, summary: this.summary(e) })), ...preparing].sort((a, b) => a.seq - b.seq).map((x) => x.summary);
  }

  /** Devices whose device-add is making their memory disk's pages (listed as `preparing`). */
  private preparingAdds(): Adding[] {
    return [...this.adding.values()].filter((a) => this.host.isPreparing(a.spec.id));
  }

  /** device-stats of a preparing device: what it will be, and how far its pages are; nothing of it runs yet. */
  private preparingStats(a: Adding): DeviceStats {
    return {
      ...this.preparingSummary(a.spec, a.address),
      uptimeSeconds: Math.round((performance.now() - a.at) / 1000),
      frontEnd: false,
      waitingFrontEnds: 0,
      connectionsAccepted: 0,
      connectionsRefusedBusy: 0,
      workerStarts: 0,
      lastFailure: null,
      startBackoff: null,
      limits: { ...a.spec.limits },
      pollMaxNs: a.spec.pollMaxNs,
      throttleGroup: a.spec.throttleGroup,
      throttled: { passedOps: 0, passedBytes: 0, waits: 0 },
      cpu: null,
      net: null,
      preparing: this.host.pageProgress(a.spec.id),
      work: { requests: 0, batches: 0, handleCalls: 0, otherCalls: 0, memoryDiskCopiedBytes: 0, completionsOutOfOrder: 0, requestsInFlight: 0, ioInFlight: 0, longestCallCpuSeconds: 0 },
    };
  }

  /** A device whose device-add waits for its memory disk's pages: nothing of it serves yet. */
  private preparingSummary(spec: DeviceSpec, address: ListenAddress): DeviceSummary {
    return {
      id: spec.id,
      tenant: spec.tenant,
      listen: listenText(address),
      plugin: 'plugin' in spec.device ? spec.device.plugin : spec.device.module,
      name: null,
      virtioId: null,
      queues: null,
      state: 'preparing',
      start: spec.start ?? this.defaultStart,
    };
  }

  /** Entries in the order their device-add began (the config file's order at start-up). */
  private ordered(): Entry[] {
    return [...this.entries.values()].sort((a, b) => a.seq - b.seq);
  }

  stats(id?: string): DeviceStats[] {
    if (id !== undefined && !this.entries.has(id)) {
      const a = this.adding.get(id);
      if (a !== undefined && this.host.isPreparing(id)) return [this.preparingStats(a)];
      throw this.missing(id);
    }
    if (id === undefined) {
      const all = [...this.ordered().map((e) => ({ seq: e.seq, stats: this.entryStats(e) })), ...this.preparingAdds().map((a) => ({ seq: a.seq, stats: this.preparingStats(a) }))];
      return all.sort((a, b) => a.seq - b.seq).map((x) => x.stats);
    }
    return [this.entryStats(this.entries.get(id)!)];
  }

  private entryStats(e: Entry): DeviceStats {
    const l = e.device.listener.stats();
    const s = e.device.slot.stats();
    return {
      ...this.summary(e),
      uptimeSeconds: Math.round((performance.now() - e.addedAt) / 1000),
      frontEnd: l.frontEnd,
      waitingFrontEnds: l.waiting,
      connectionsAccepted: l.accepted,
      connectionsRefusedBusy: l.refusedBusy,
      workerStarts: s.workerStarts,
      lastFailure: s.failure,
      startBackoff: s.startBackoff,
      limits: { ...e.spec.limits },
      pollMaxNs: e.spec.pollMaxNs,
      throttleGroup: e.spec.throttleGroup,
      throttled: e.throttle.counters(),
      cpu: this.cpu.stats(e.spec.id),
      net: (() => {
        const counters = e.device.slot.netStats();
        return counters ? { networks: [...e.spec.grants.network], counters } : null;
      })(),
      preparing: null,
      work: e.device.slot.meter.work(),
    };
  }

  private summary(e: Entry): DeviceSummary {
    const info = e.device.slot.info;
    const s = e.device.slot.stats();
    const l = e.device.listener.stats();
    return {
      id: e.spec.id,
      tenant: e.spec.tenant,
      listen: listenText(e.address),
      plugin: 'plugin' in e.spec.device ? e.spec.device.plugin : e.spec.device.module,
      name: info?.name ?? null,
      virtioId: info?.deviceId ?? null,
      queues: info?.numQueues ?? null,
      state: e.device.slot.neverStarted ? (s.failure !== null ? 'failed' : 'not-started') : !s.running ? 'failed' : l.frontEnd ? 'connected' : 'idle',
      start: e.spec.start ?? this.defaultStart,
    };
  }

  async close(graceMs?: number): Promise<void> {
    this.cpu.close();
    await this.host.close(graceMs);
  }
}
