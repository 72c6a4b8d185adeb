// A plugin's log lines are a resource it could spend without end: a device that logs on
// every request floods the host's stderr (and whatever collects it) at the guest's pace.
// Each device gets a token bucket; lines over it are dropped and counted, and the count is
// logged at most once a second, so the operator always learns what was dropped.

/** Sustained plugin log lines per second, per device. */
export const PLUGIN_LOG_RATE = 100;
/** Lines a quiet device may write at once. */
export const PLUGIN_LOG_BURST = 200;
/** How long drops are gathered before they are reported. */
const REPORT_AFTER_MS = 1000;

export class LogRateLimit {
  private tokens = PLUGIN_LOG_BURST;
  private last: number;
  private dropped = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    /** Called with how many lines were dropped since the last report. */
    private readonly report: (dropped: number) => void,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.last = now();
  }

  /** True when this line may be written; false when it is dropped (and counted). */
  take(): boolean {
    const t = this.now();
    this.tokens = Math.min(PLUGIN_LOG_BURST, this.tokens + ((t - this.last) * PLUGIN_LOG_RATE) / 1000);
    this.last = t;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    this.dropped++;
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), REPORT_AFTER_MS);
      this.timer.unref();
    }
    return false;
  }

  /** Reports drops not yet reported (the timer does this; a closing device may too). */
  flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.dropped === 0) return;
    const n = this.dropped;
    this.dropped = 0;
    this.report(n);
  }
}
