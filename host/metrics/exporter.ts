// The daemon's Prometheus metrics: a prom-client registry with the process metrics prom-client
// collects itself (open fds, resident memory, CPU, event loop, heap) and one family per device
// measure, read from each device's DeviceMeter when a scrape comes (nothing is pushed into
// prom-client while devices run). prom-client formats the exposition.
//
// Counters and gauges go through prom-client's own Counter/Gauge (refilled from the meters at
// each scrape); the histograms' buckets are counted in the device workers' shared cells, which
// prom-client's Histogram cannot be loaded from (it only takes single observations), so
// CellHistogram hands prom-client the bucket values through the metric's get().

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type LabelValues } from 'prom-client';
import { LATENCY_BUCKETS, type HistogramSnapshot } from './request-meter.ts';
import { FAULT_KINDS, type DeviceMeter, type DeviceMeterSnapshot, type TransferDirection } from './device-meter.ts';
import type { NetStats } from '../net/link.ts';

/** A device as the metrics see it. */
export interface MeteredDevice {
  id: string;
  tenant: string | null;
  /** Its worker runs (false: failed, restarts on the next connection). */
  running: boolean;
  meter: DeviceMeter;
  /** Its threads run at the lowest priority for using more than its CPU share (host/limits/cpu-share.ts); false outside the daemon. */
  cpuDemoted?: boolean;
  /** Its network ports' counters (--network), or null without a network grant. */
  net?: NetStats | null;
}

type DeviceLabel = 'device' | 'tenant';
const DEVICE_LABELS = ['device', 'tenant'] as const;

interface Row {
  labels: Record<DeviceLabel, string>;
  running: boolean;
  s: DeviceMeterSnapshot;
  longCallSeconds: number;
  pollSpinSeconds: number;
  cpuDemoted: boolean;
  net: NetStats | null;
}

/** A histogram whose buckets were counted elsewhere: each scrape reads them from `read`. */
class CellHistogram<T extends string> extends Histogram<T> {
  constructor(
    private readonly metricName: string,
    private readonly metricHelp: string,
    labelNames: readonly T[],
    private readonly read: () => { labels: LabelValues<string>; h: HistogramSnapshot }[],
  ) {
    super({ name: metricName, help: metricHelp, labelNames, buckets: [...LATENCY_BUCKETS], registers: [] });
  }

  private values() {
    const name = this.metricName;
    const out: { labels: LabelValues<string>; value: number; metricName: string }[] = [];
    for (const { labels, h } of this.read()) {
      LATENCY_BUCKETS.forEach((le, i) => out.push({ labels: { ...labels, le }, value: h.buckets[i], metricName: `${name}_bucket` }));
      out.push({ labels: { ...labels, le: '+Inf' }, value: h.count, metricName: `${name}_bucket` });
      out.push({ labels, value: h.sum, metricName: `${name}_sum` });
      out.push({ labels, value: h.count, metricName: `${name}_count` });
    }
    return { name, help: this.metricHelp, type: 'histogram' as const, aggregator: 'sum' as const, values: out };
  }

  // prom-client's Registry calls getForPromString() for the text format and get() for JSON.
  getForPromString() {
    return Promise.resolve(this.values());
  }

  override get() {
    return Promise.resolve(this.values() as unknown as Awaited<ReturnType<Histogram<T>['get']>>);
  }
}

export class MetricsExporter {
  readonly registry = new Registry();
  /** Snapshots of the scrape in progress (taken once, read by every family). */
  private rows: Row[] = [];

  constructor(private readonly devices: () => readonly MeteredDevice[]) {
    collectDefaultMetrics({ register: this.registry });
    const reg = [this.registry];
    const rows = () => this.rows;

    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[], fill: (c: Counter<L | DeviceLabel>, r: Row) => void) =>
      new Counter<L | DeviceLabel>({
        name,
        help,
        labelNames: [...DEVICE_LABELS, ...labelNames],
        registers: reg,
        collect() {
          this.reset();
          for (const r of rows()) fill(this, r);
        },
      });
    const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[], fill: (g: Gauge<L | DeviceLabel>, r: Row) => void) =>
      new Gauge<L | DeviceLabel>({
        name,
        help,
        labelNames: [...DEVICE_LABELS, ...labelNames],
        registers: reg,
        collect() {
          this.reset();
          for (const r of rows()) fill(this, r);
        },
      });
    const histogram = <L extends string>(name: string, help: string, labelNames: readonly L[], pick: (r: Row) => { labels: LabelValues<L>; h: HistogramSnapshot }[]) => {
      const h = new CellHistogram<L | DeviceLabel>(name, help, [...DEVICE_LABELS, ...labelNames], () =>
        rows().flatMap((r) => pick(r).map((p) => ({ labels: { ...r.labels, ...p.labels }, h: p.h }))),
      );
      this.registry.registerMetric(h);
    };
    const none = [] as const;
    const directions: TransferDirection[] = ['save', 'load'];

    gauge('vhost_wasm_device_up', 'Whether the device is served with a running worker, or not started yet (start "on-connect") (0: failed, restarted on the next connection or reset).', none, (g, r) =>
      g.set(r.labels, r.running ? 1 : 0),
    );
    counter('vhost_wasm_device_requests_total', 'Requests handed to the device (descriptor chains popped from its rings).', none, (c, r) => c.inc(r.labels, r.s.requests));
    counter(
      'vhost_wasm_device_bytes_total',
      'Request bytes: direction "out" is what the guest offered the device (device-readable descriptors), "in" what the device wrote back (used lengths).',
      ['direction'],
      (c, r) => {
        c.inc({ ...r.labels, direction: 'out' }, r.s.bytesOut);
        c.inc({ ...r.labels, direction: 'in' }, r.s.bytesIn);
      },
    );
    gauge('vhost_wasm_device_requests_in_flight', 'Requests popped and not yet in the used ring.', none, (g, r) => g.set(r.labels, r.s.inFlight));
    gauge(
      'vhost_wasm_device_io_in_flight',
      'Requests whose storage I/O the host submitted (io_uring) and that has not finished. Returns to 0 when a disconnect, memory-table change or ring stop drained it.',
      none,
      (g, r) => g.set(r.labels, r.s.ioInFlight),
    );
    histogram('vhost_wasm_device_request_duration_seconds', 'Time from a request leaving the avail ring (the first pop of its batch) to its completion in the used ring (when the front-end is notified).', none, (r) => [{ labels: {}, h: r.s.latency }]);
    histogram('vhost_wasm_device_plugin_call_duration_seconds', "Time in the device's own code per call (handle, config, state, reset), as the watchdog times it.", none, (r) => [
      { labels: {}, h: r.s.calls },
    ]);
    counter(
      'vhost_wasm_device_request_batches_total',
      'Batches of requests handed to the device: requests popped from a ring together and given to it in one handle() call. Requests per batch is vhost_wasm_device_requests_total over this.',
      none,
      (c, r) => c.inc(r.labels, r.s.batches),
    );
    counter(
      'vhost_wasm_device_plugin_calls_total',
      'Calls into the device\'s own code: call "handle" (one per batch of requests, plus one per round of failed I/O handed back, timer or frames), "other" (config, activate, reset, state and section calls). The host promises one handle() call per batch, nothing per request.',
      ['call'],
      (c, r) => {
        c.inc({ ...r.labels, call: 'handle' }, r.s.handleCalls);
        // The cells are read one by one while the worker writes them: never shown below zero.
        c.inc({ ...r.labels, call: 'other' }, Math.max(0, r.s.calls.count - r.s.handleCalls));
      },
    );
    counter(
      'vhost_wasm_device_memory_disk_copied_bytes_total',
      'Bytes copied between guest memory and the device\'s memory disk (--storage memory:SIZE) by its reads and writes, counted where the copies are made: one copy each way, so the bytes read and written.',
      none,
      (c, r) => c.inc(r.labels, r.s.memoryDiskCopied),
    );
    counter(
      'vhost_wasm_device_completions_out_of_order_total',
      'Completions that overtook a request made available before them and still in flight (out-of-order completion: a device that holds requests or runs their I/O concurrently answers a later one first). Counted when the host decides whether to notify the front-end.',
      none,
      (c, r) => c.inc(r.labels, r.s.outOfOrder),
    );
    gauge('vhost_wasm_device_plugin_memory_bytes', "The plugin's linear memory (all instances, all queue threads) after its last call.", none, (g, r) =>
      g.set(r.labels, r.s.memoryBytes),
    );
    counter(
      'vhost_wasm_device_faults_total',
      'Faults: device_failed (the plugin trapped, broke the contract or ran past its deadline, or its worker died), ring_broken (the guest broke a ring), memory_fault (guest memory shrank under the device), start_failed (its worker did not start for a front-end that connected: the plugin trapped or looped while it was built).',
      ['kind'],
      (c, r) => {
        for (const k of FAULT_KINDS) c.inc({ ...r.labels, kind: k.replace('-', '_') }, r.s.faults[k]);
      },
    );
    counter(
      'vhost_wasm_device_long_call_seconds_total',
      "Time the device's code spent in calls in which it ran 2 ms or more of CPU (with its poll spin, what its CPU share limits).",
      none,
      (c, r) => c.inc(r.labels, r.longCallSeconds),
    );
    counter(
      'vhost_wasm_device_poll_spin_seconds_total',
      "Time the device's worker threads spun on their rings between requests (adaptive polling, pollMaxNs); its CPU share limits it with the long calls.",
      none,
      (c, r) => c.inc(r.labels, r.pollSpinSeconds),
    );
    gauge('vhost_wasm_device_cpu_demoted', 'Whether the device runs at the lowest priority (nice 19) for using more than its CPU share.', none, (g, r) =>
      g.set(r.labels, r.cpuDemoted ? 1 : 0),
    );
    counter('vhost_wasm_device_resets_total', 'Device resets the front-end asked for (RESET_DEVICE, or status 0).', none, (c, r) => c.inc(r.labels, r.s.resets));
    counter('vhost_wasm_device_worker_starts_total', 'Workers started for the device: 1, plus one per restart after a failure.', none, (c, r) => c.inc(r.labels, r.s.workerStarts));
    counter('vhost_wasm_device_state_transfers_total', 'Device state transfers (migration) that ended, by direction and result.', ['direction', 'result'], (c, r) => {
      for (const d of directions) {
        c.inc({ ...r.labels, direction: d, result: 'ok' }, r.s.transfers[d].ok);
        c.inc({ ...r.labels, direction: d, result: 'failed' }, r.s.transfers[d].failed);
      }
    });
    gauge('vhost_wasm_device_state_transfers_running', 'Device state transfers in progress.', ['direction'], (g, r) => {
      for (const d of directions) g.set({ ...r.labels, direction: d }, r.s.transfers[d].running);
    });
    // Network ports (--network): only devices granted a network have these series.
    counter('vhost_wasm_device_net_frames_total', 'Frames the device sent (direction "tx": taken from its guest) and read into its guest (direction "rx").', ['direction'], (c, r) => {
      if (!r.net) return;
      c.inc({ ...r.labels, direction: 'tx' }, r.net.txFrames);
      c.inc({ ...r.labels, direction: 'rx' }, r.net.rxFrames);
    });
    counter('vhost_wasm_device_net_bytes_total', 'Bytes of the frames in vhost_wasm_device_net_frames_total.', ['direction'], (c, r) => {
      if (!r.net) return;
      c.inc({ ...r.labels, direction: 'tx' }, r.net.txBytes);
      c.inc({ ...r.labels, direction: 'rx' }, r.net.rxBytes);
    });
    counter(
      'vhost_wasm_device_net_dropped_total',
      'Frames dropped: for the device, its inbox full (queue_full), not read in the call that delivered them (unread), or the device not running (not_running); from it, the switch too far behind (switch_behind) or the destination port gone (no_port).',
      ['reason'],
      (c, r) => {
        const n = r.net;
        if (!n) return;
        const by: [string, number][] = [['queue_full', n.rxQueueDrops], ['unread', n.rxUnread], ['not_running', n.rxNotRunning], ['switch_behind', n.txDrops], ['no_port', n.txNoPort], ['rate', n.txRateDrops]];
        for (const [reason, v] of by) c.inc({ ...r.labels, reason }, v);
      },
    );
    gauge('vhost_wasm_device_net_queued_frames', 'Frames waiting for the device now (bounded per device).', none, (g, r) => {
      if (r.net) g.set(r.labels, r.net.rxQueuedFrames);
    });
    histogram('vhost_wasm_device_state_transfer_duration_seconds', 'Duration of device state transfers that ended, from start to outcome.', ['direction'], (r) =>
      directions.map((d) => ({ labels: { direction: d }, h: r.s.transfers[d].duration })),
    );
  }

  /** The exposition text of everything, from fresh snapshots of every device. */
  async metrics(): Promise<string> {
    this.rows = this.devices().map((d) => ({
      labels: { device: d.id, tenant: d.tenant ?? '' },
      running: d.running,
      s: d.meter.snapshot(),
      longCallSeconds: d.meter.longCallSeconds(),
      pollSpinSeconds: d.meter.pollSpinSeconds(),
      cpuDemoted: d.cpuDemoted ?? false,
      net: d.net ?? null,
    }));
    try {
      return await this.registry.metrics();
    } finally {
      this.rows = [];
    }
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
