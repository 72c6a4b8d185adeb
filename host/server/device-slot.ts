// A device as the server sees it: where it comes from, and the worker currently running it.
// A worker that died (watchdog, plugin crash) is replaced by a fresh one the next time a
// front-end connects or resets the device, so one bad request costs a reset, not the daemon.

import { DeviceWorker } from '../device/worker-client.ts';
import type { DeviceSource } from '../device/rpc.ts';
import type { DeviceInfo } from '../device/device.ts';

export interface DeviceSlotOptions {
  label: string;
  callDeadlineMs: number;
}

export class DeviceSlot {
  private worker: DeviceWorker | null = null;
  private starting: Promise<DeviceWorker> | null = null;

  constructor(
    readonly source: DeviceSource,
    readonly opts: DeviceSlotOptions,
  ) {}

  /** The running worker, starting a fresh one if there is none or the last one died. */
  async acquire(): Promise<DeviceWorker> {
    if (this.worker && !this.worker.dead) return this.worker;
    if (this.worker) {
      await this.worker.exited;
      this.worker = null;
    }
    if (!this.starting) {
      this.starting = DeviceWorker.start(this.source, { label: this.opts.label, callDeadlineMs: this.opts.callDeadlineMs }).finally(() => {
        this.starting = null;
      });
    }
    this.worker = await this.starting;
    return this.worker;
  }

  get info(): DeviceInfo | null {
    return this.worker?.info ?? null;
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }
}
