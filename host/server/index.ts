// The host: a set of devices, each on its own socket and in its own worker, in one process.

import { DeviceSlot } from './device-slot.ts';
import { Listener, type ListenAddress } from './listener.ts';
import type { DeviceSource } from '../device/rpc.ts';
import type { SessionSettings } from '../session/options.ts';
import { describeFdBudget, ensureFdBudget } from '../resources/fd-budget.ts';
import { precheckSource } from './source-precheck.ts';
import { createLogger } from '../log/logger.ts';
import type { TokenBucket } from '../limits/token-bucket.ts';

export interface DeviceConfig {
  label: string;
  listen: ListenAddress;
  source: DeviceSource;
  /** Per-call CPU deadline for this device's code (ms). */
  callDeadlineMs?: number;
  /** Deadline for the device's own code while it is built, at start and on a reset (ms). */
  loadDeadlineMs?: number;
  /** --queue-threads: threads for a device with independent queues (default 1; see worker-client.ts). */
  queueThreads?: number;
  /** --poll-max-ns: adaptive polling of the device's rings (host/device/poll-window.ts); 0: off. */
  pollMaxNs?: number;
  /** I/O throttling (host/limits/token-bucket.ts): the device's own bucket, or its group's. */
  throttle?: TokenBucket;
  /** Session settings (device-state channel options); unset ones take DEFAULT_SESSION_SETTINGS. */
  session?: Partial<SessionSettings>;
  /** --network: networks of the host's switch the device joins, in grant order. */
  networks?: readonly string[];
  /** --network-rate: frames (and bytes) per second the device may send on its networks. */
  networkRate?: TokenBucket;
  /**
   * When the worker starts: 'eager' (default) at add(), 'on-connect' when the first front-end
   * connects (a plugin is checked at add() without running it: host/plugin/precheck.ts).
   */
  start?: 'eager' | 'on-connect';
}

export const DEFAULT_CALL_DEADLINE_MS = 100;

export interface HostDevice {
  config: DeviceConfig;
  slot: DeviceSlot;
  listener: Listener;
}

export class Host {
  /** Devices removed while the host runs whose worker thread has not exited yet (stuck in a system call). */
  private readonly retired = new Set<HostDevice>();

  private closing = false;
  /** Devices whose add() runs: a remove() of one stops it (a prealloc=on disk's page making can take seconds). */
  private readonly adding = new Map<string, { slot: DeviceSlot; settled: Promise<unknown> }>();

  private constructor(private readonly running: HostDevice[]) {}

  /** Labels of devices, served or removed, with a worker thread still alive: shutdown waits for none of them. */
  devicesWithLiveThreads(): string[] {
    return [...this.running, ...this.retired].filter((d) => d.slot.liveThreads > 0).map((d) => d.config.label);
  }

  /** The devices being served, in the order they were added. */
  get devices(): readonly HostDevice[] {
    return this.running;
  }

  /**
   * Starts every device's worker first (so a plugin that fails to load is reported at start-up,
   * not when QEMU connects), then opens the sockets. All or nothing: if one device cannot
   * start, those already started are closed and the error is thrown.
   */
  static async start(configs: DeviceConfig[]): Promise<Host> {
    const host = new Host([]);
    try {
      for (const config of configs) await host.add(config);
    } catch (e) {
      for (const d of host.running.splice(0)) {
        await d.listener.close();
        await d.slot.close();
      }
      throw e;
    }
    createLogger('host').info(describeFdBudget(ensureFdBudget()));
    return host;
  }

  /** A host serving nothing yet; devices come with add() (the daemon). */
  static empty(): Host {
    ensureFdBudget();
    return new Host([]);
  }

  /**
   * Starts one more device: its worker (or, starting on connect, the checks of its plugin), then
   * its socket. On failure nothing of it is left (worker terminated, no socket) and the error is
   * thrown; other devices are untouched.
   */
  async add(config: DeviceConfig): Promise<HostDevice> {
    if (this.running.some((d) => d.config.label === config.label) || this.adding.has(config.label)) throw new Error(`a device labelled ${config.label} is already served`);
    // The fd budget first (it raises RLIMIT_NOFILE), before any worker opens a share.
    ensureFdBudget();
    const slot = new DeviceSlot(config.source, {
      label: config.label,
      callDeadlineMs: config.callDeadlineMs ?? DEFAULT_CALL_DEADLINE_MS,
      loadDeadlineMs: config.loadDeadlineMs,
      queueThreads: config.queueThreads,
      pollMaxNs: config.pollMaxNs,
      throttle: config.throttle,
      networks: config.networks,
      networkRate: config.networkRate,
    });
    const added = this.addSlot(config, slot);
    this.adding.set(config.label, { slot, settled: added.catch(() => {}) });
    try {
      return await added;
    } finally {
      this.adding.delete(config.label);
    }
  }

  private async addSlot(config: DeviceConfig, slot: DeviceSlot): Promise<HostDevice> {
    try {
      // A prealloc=on memory disk's pages first, made off the main thread: the socket is not
      // created (no front-end can connect) until they exist, and other devices are served meanwhile.
      await slot.prepared();
      // What the device and its front-end may hold besides share handles is kept out of the fd
      // budget by the slot once a worker runs (its queue count known).
      if (config.start === 'on-connect') await precheckSource(slot.source);
      else await slot.acquire();
      // The host began to close, or the device was removed, while it started: it is nobody's to serve.
      if (this.closing) throw new Error(`device ${config.label}: the host is shutting down`);
      await slot.prepared();
      const listener = new Listener(config.listen, slot, config.session);
      const d = { config, slot, listener };
      this.running.push(d);
      return d;
    } catch (e) {
      await slot.close();
      throw e;
    }
  }

  /** A device whose add() runs and has not made its socket yet (its memory disk's pages are being made). */
  isPreparing(label: string): boolean {
    return this.adding.get(label)?.slot.preparing ?? false;
  }

  /** A preparing device's memory disk: its size and the bytes of pages made so far (null when not preparing). */
  pageProgress(label: string): { diskBytes: number; madeBytes: number } | null {
    return this.adding.get(label)?.slot.pageProgress() ?? null;
  }

  /**
   * Stops serving one device: its socket is removed, its front-end disconnected (the session
   * ends as on a disconnect: rings stopped, memory unmapped, fds closed), then its worker is
   * terminated. `graceMs` bounds the wait for the session, as in close().
   */
  async remove(label: string, graceMs = 1000): Promise<boolean> {
    const adding = this.adding.get(label);
    if (adding) {
      // Still being added (its pages being made): stopped, and its add() fails; its memory is
      // given back once the page making has let go of it, before this returns.
      adding.slot.abandon();
      await adding.settled;
      return true;
    }
    const i = this.running.findIndex((d) => d.config.label === label);
    if (i < 0) return false;
    const [d] = this.running.splice(i, 1);
    const listener = d.listener.close('device removed by the operator');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([listener, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    await d.slot.close();
    await listener;
    if (d.slot.liveThreads > 0) this.retired.add(d);
    return true;
  }

  /**
   * Closes every listener at once (each removes its socket first, then ends its session, which
   * resets the device), so one device slow to let go keeps no other socket around. Sessions
   * get `graceMs` to finish; then every worker is terminated, which also answers a session
   * still waiting on a device that loops (its calls fail), so the shutdown never waits on
   * plugin code. A worker stuck in a system call never exits: see shutdown.ts.
   */
  async close(graceMs = 1000): Promise<void> {
    this.closing = true;
    for (const a of this.adding.values()) a.slot.abandon();
    const listeners = Promise.all(this.devices.map((d) => d.listener.close()));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([listeners, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    await Promise.all(this.devices.map((d) => d.slot.close()));
    await listeners;
  }
}
