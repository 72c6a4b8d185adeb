// The host: a set of devices, each on its own socket and in its own worker, in one process.

import { DeviceSlot } from './device-slot.ts';
import { Listener, type ListenAddress } from './listener.ts';
import type { DeviceSource } from '../device/rpc.ts';
import type { SessionSettings } from '../session/options.ts';
import { describeFdBudget, ensureFdBudget, reserveForDevice } from '../resources/fd-budget.ts';
import { createLogger } from '../log/logger.ts';

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
  /** Session settings (device-state channel options); unset ones take DEFAULT_SESSION_SETTINGS. */
  session?: Partial<SessionSettings>;
}

export const DEFAULT_CALL_DEADLINE_MS = 100;

export class Host {
  private constructor(readonly devices: { config: DeviceConfig; slot: DeviceSlot; listener: Listener }[]) {}

  /**
   * Starts every device's worker first (so a plugin that fails to load is reported at start-up,
   * not when QEMU connects), then opens the sockets.
   */
  static async start(configs: DeviceConfig[]): Promise<Host> {
    const started: { config: DeviceConfig; slot: DeviceSlot; listener: Listener }[] = [];
    // The fd budget first (it raises RLIMIT_NOFILE), before any worker opens a share.
    ensureFdBudget();
    try {
      for (const config of configs) {
        const slot = new DeviceSlot(config.source, {
          label: config.label,
          callDeadlineMs: config.callDeadlineMs ?? DEFAULT_CALL_DEADLINE_MS,
          loadDeadlineMs: config.loadDeadlineMs,
          queueThreads: config.queueThreads,
        });
        try {
          const worker = await slot.acquire();
          // What this device and its front-end may hold besides share handles stays out of the budget.
          reserveForDevice(worker.info.numQueues, worker.threadCount);
          started.push({ config, slot, listener: new Listener(config.listen, slot, config.session) });
        } catch (e) {
          await slot.close();
          throw e;
        }
      }
    } catch (e) {
      for (const d of started) {
        await d.listener.close();
        await d.slot.close();
      }
      throw e;
    }
    createLogger('host').info(describeFdBudget(ensureFdBudget()));
    return new Host(started);
  }

  /**
   * Closes every listener at once (each removes its socket first, then ends its session, which
   * resets the device), so one device slow to let go keeps no other socket around. Sessions
   * get `graceMs` to finish; then every worker is terminated, which also answers a session
   * still waiting on a device that loops (its calls fail), so the shutdown never waits on
   * plugin code. A worker stuck in a system call never exits: see shutdown.ts.
   */
  async close(graceMs = 1000): Promise<void> {
    const listeners = Promise.all(this.devices.map((d) => d.listener.close()));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([listeners, new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    await Promise.all(this.devices.map((d) => d.slot.close()));
    await listeners;
  }
}
