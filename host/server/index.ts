// The host: a set of devices, each on its own socket and in its own worker, in one process.

import { DeviceSlot } from './device-slot.ts';
import { Listener, type ListenAddress } from './listener.ts';
import type { DeviceSource } from '../device/rpc.ts';
import type { SessionOptions } from '../session/session.ts';
import { describeFdBudget, ensureFdBudget, reserveForDevice } from '../resources/fd-budget.ts';
import { createLogger } from '../log/logger.ts';

export interface DeviceConfig {
  label: string;
  listen: ListenAddress;
  source: DeviceSource;
  /** Per-call CPU deadline for this device's code (ms). */
  callDeadlineMs?: number;
  /** Session settings (device-state channel options). */
  session?: Partial<Omit<SessionOptions, 'label' | 'onClosed'>>;
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
        const slot = new DeviceSlot(config.source, { label: config.label, callDeadlineMs: config.callDeadlineMs ?? DEFAULT_CALL_DEADLINE_MS });
        try {
          const worker = await slot.acquire();
          // What this device and its front-end may hold besides share handles stays out of the budget.
          reserveForDevice(worker.info.numQueues);
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

  async close(): Promise<void> {
    for (const d of this.devices) await d.listener.close();
    for (const d of this.devices) await d.slot.close();
  }
}

/** The benchmark's entry: one TypeScript device module on one socket. */
export async function startHostForBench(socketPath: string, moduleUrl: string, options: Record<string, unknown> = {}): Promise<Host> {
  return Host.start([{ label: 'bench', listen: { path: socketPath }, source: { kind: 'module', url: moduleUrl, options }, callDeadlineMs: 10_000 }]);
}
