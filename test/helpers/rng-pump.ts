// Keeps requests flowing to an rng device one after another, so a test can show that device
// served throughout whatever happened to another device of the same host process.
import { setTimeout as sleep } from 'node:timers/promises';
import type { VhostUserFrontend } from '../../host/frontend/driver.ts';

export class RngPump {
  /** When each request completed (performance.now()). */
  readonly done: number[] = [];
  private stopped = false;
  private error: Error | null = null;
  private readonly loop: Promise<void>;

  /** A pump that the test's teardown stops even if the test fails half-way. */
  static start(t: { teardown(fn: () => unknown): void }, fe: VhostUserFrontend): RngPump {
    const p = new RngPump(fe);
    t.teardown(() => p.stop().catch(() => {}));
    return p;
  }

  constructor(private readonly fe: VhostUserFrontend) {
    this.loop = this.run().catch((e: Error) => {
      this.error = e;
    });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        this.fe.queues[0].submit([], 64),
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('an rng request got no answer in 5 s')), 5000))),
      ]).finally(() => clearTimeout(timer));
      if (r.len !== 64) throw new Error(`rng answered ${r.len} bytes for 64`);
      if (new Set(r.data).size < 16) throw new Error('rng answer does not look random');
      this.done.push(performance.now());
    }
  }

  /** Requests served so far; throws what stopped the pump, if anything did. */
  get count(): number {
    if (this.error) throw this.error;
    return this.done.length;
  }

  /** Requests completed in [from, to). */
  between(from: number, to = Infinity): number {
    return this.done.filter((t) => t >= from && t < to).length;
  }

  /** Resolves once n more requests were served from now. */
  async more(n: number): Promise<void> {
    const target = this.count + n;
    const end = Date.now() + 10_000;
    while (this.count < target) {
      if (Date.now() > end) throw new Error(`rng served only ${this.count - target + n} of ${n} requests in 10 s`);
      await sleep(5);
    }
  }

  /** Resolves once n requests completed at or after `from` (a performance.now() time). */
  async waitFor(n: number, from: number): Promise<void> {
    const end = Date.now() + 5000;
    while (this.between(from) < n) {
      if (this.error) throw this.error;
      if (Date.now() > end) throw new Error(`rng served only ${this.between(from)} of ${n} requests in 5 s`);
      await sleep(5);
    }
  }

  /** Stops the pump; resolves with the requests served, or rejects with what stopped it early. */
  async stop(): Promise<number> {
    this.stopped = true;
    await this.loop;
    if (this.error) throw this.error;
    return this.done.length;
  }
}
