// One line per episode instead of one per event: a condition that a guest or a peer can make
// happen thousands of times a second (a spent fd budget, a failing accept) is logged when it
// starts and then at most once per interval, each later line saying how many events it
// stands for. No timer: a line is only ever written by an event, so nothing keeps a loop
// alive and a quiet condition costs nothing.
import type { Logger, LogLevel } from './logger.ts';

export class LogThrottle {
  private lastAt = -Infinity;
  private suppressed = 0;

  constructor(
    private readonly log: Logger,
    private readonly level: Exclude<LogLevel, 'debug'>,
    private readonly intervalMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Logs `msg` now, or counts it if a line went out less than the interval ago. Returns whether it was logged. */
  hit(msg: string): boolean {
    const t = this.now();
    if (t - this.lastAt < this.intervalMs) {
      this.suppressed++;
      return false;
    }
    const more = this.suppressed > 0 ? ` (${this.suppressed} more like it since the last line)` : '';
    this.suppressed = 0;
    this.lastAt = t;
    this.log[this.level](msg + more);
    return true;
  }

  /** The condition ended: the next hit starts a new episode and is logged at once. */
  reset(): void {
    this.lastAt = -Infinity;
    this.suppressed = 0;
  }
}
