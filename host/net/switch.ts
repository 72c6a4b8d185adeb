// The host's switch, on the main thread: named L2 segments (--network NAME) joining every
// device granted the same name, each device a port with a number unique on the segment and
// never reused (a frame addressed to a port that left is dropped, not misdelivered). The
// switch forwards what it is told to: a frame to one port, or flooded to every other port.
// Which port that is (MAC learning) and whether it may go at all (policy) is the plugins'
// business; the switch only moves frames and bounds every queue (link.ts).

import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { FLOOD, LinkCounters, WORKER_FIELDS, type IncomingFrames, type NetGrant, type NetInit, type NetStats, type OutgoingFrames } from './link.ts';
import { createLogger } from '../log/logger.ts';
import { NetworkConfigError } from './errors.ts';
import { TapPort } from './tap.ts';
import type { TokenBucket } from '../limits/token-bucket.ts';

/** The MTU of a segment nobody configured otherwise. */
export const DEFAULT_MTU = 1500;
/** The largest MTU a segment may have (a frame then fits in 64 KiB). */
export const MAX_MTU = 65_500;
/** Networks one device may be granted. */
export const MAX_GRANTS = 16;

export { NetworkConfigError };

/** A network name: what --network and the daemon config accept. */
export function checkNetworkName(name: unknown, where: string): string {
  if (typeof name !== 'string' || !/^(tap:)?[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) {
    throw new NetworkConfigError(`${where}: ${JSON.stringify(name)} is not a network name (1-63 of letters, digits, '.', '_', '-', starting with a letter or digit; tap:IFNAME for a TAP interface)`);
  }
  if (name.startsWith('tap:') && name.length - 4 > 15) throw new NetworkConfigError(`${where}: interface name ${name.slice(4)} is longer than 15 bytes (IFNAMSIZ)`);
  return name;
}

/** Something frames can be delivered to: a device's port, or a TAP interface. */
export interface Endpoint {
  readonly port: number;
  /** Bytes [offset, offset + len) of buf, from port `from` of the segment. */
  deliver(buf: SharedArrayBuffer, offset: number, len: number, from: number, batch: DeliveryBatch): void;
}

/** Collects one incoming batch's frames per destination, posted once the batch is forwarded. */
export class DeliveryBatch {
  readonly perLink = new Map<DeviceLink, number[]>();

  add(link: DeviceLink, desc: number[]): void {
    const mine = this.perLink.get(link);
    if (mine) mine.push(...desc);
    else this.perLink.set(link, desc);
  }

  /**
   * Posts each destination its frames of `buf`. A destination's inbox counts the bytes of its
   * frames, but a queued frame keeps alive the whole buffer it is in: one that gets less than
   * half of the buffer gets its frames copied into one of their own, so what a device's queued
   * frames keep alive is at most twice what its inbox bound counts (a sender could otherwise
   * pin a whole batch of ~1.5 MiB per small frame it queues at a slow device). A flood, where
   * every destination gets the whole batch, still shares the one buffer.
   */
  post(buf: SharedArrayBuffer): void {
    for (const [link, d] of this.perLink) {
      let bytes = 0;
      for (let i = 3; i < d.length; i += 4) bytes += d[i];
      if (2 * bytes >= buf.byteLength) {
        link.post({ buf, desc: d });
        continue;
      }
      const own = new SharedArrayBuffer(bytes);
      const to = new Uint8Array(own);
      let at = 0;
      for (let i = 0; i < d.length; i += 4) {
        const len = d[i + 3];
        to.set(new Uint8Array(buf, d[i + 2], len), at);
        d[i + 2] = at;
        at += len;
      }
      link.post({ buf: own, desc: d });
    }
  }
}

export class Segment {
  readonly ports = new Map<number, Endpoint>();
  private nextPort = 1;

  constructor(
    readonly name: string,
    readonly mtu: number,
  ) {}

  join(make: (port: number) => Endpoint): Endpoint {
    const port = this.nextPort++;
    const ep = make(port);
    this.ports.set(port, ep);
    return ep;
  }

  leave(port: number): void {
    this.ports.delete(port);
  }
}

/** A device's port on one segment. */
class DevicePortEndpoint implements Endpoint {
  constructor(
    readonly port: number,
    private readonly link: DeviceLink,
    /** Which of the device's grants this segment is. */
    private readonly grant: number,
  ) {}

  deliver(_buf: SharedArrayBuffer, offset: number, len: number, from: number, batch: DeliveryBatch): void {
    const inbox = this.link.activeCounters;
    if (inbox === null) {
      this.link.counters.add('rxNotRunningSwitch', 1);
      return;
    }
    if (!inbox.reserveInbox(len)) {
      this.link.counters.add('rxQueueDrops', 1);
      return;
    }
    batch.add(this.link, [this.grant, from, offset, len]);
  }
}

/** One worker's end of a device's link: its port and its own counters (the worker writes them). */
interface Attached {
  readonly generation: number;
  readonly port: MessagePort;
  readonly counters: LinkCounters;
}

/**
 * One device's ports, for the device's life (across its workers: a worker that is replaced
 * after a failure keeps the port numbers, so the other devices' learned tables stay right).
 *
 * Each worker started gets a link of its own (connect()); frames go to the *active* one, the
 * worker the device is served by. A worker started beside a running one (a plugin upgrade)
 * becomes active only when it is installed (activate()): an upgrade that is refused leaves the
 * running worker on its network. Each worker has its own counters (one writer each, its own
 * queue bounds); the switch's statistics and those of workers that exited are the link's.
 */
export class DeviceLink {
  /** Statistics the switch writes, and those of workers that exited (added when they go). */
  readonly counters = new LinkCounters();
  private readonly attached = new Map<number, Attached>();
  private active: Attached | null = null;
  private readonly grants: { segment: Segment; endpoint: Endpoint }[] = [];

  constructor(
    private readonly sw: NetworkSwitch,
    readonly label: string,
    names: readonly string[],
    /** --network-rate: what the device may send (frames and bytes per second, bursts); null: no limit. */
    readonly rate: TokenBucket | null = null,
  ) {
    try {
      names.forEach((name, i) => {
        const segment = sw.segment(name);
        const endpoint = segment.join((port) => new DevicePortEndpoint(port, this, i));
        this.grants.push({ segment, endpoint });
      });
    } catch (e) {
      // A later grant cannot be served (a TAP interface that does not open): the ports taken
      // on the earlier ones go again, or each failed device-add would leave one behind.
      for (const g of this.grants) g.segment.leave(g.endpoint.port);
      throw e;
    }
  }

  /** A worker is attached and active: it can take frames. */
  get running(): boolean {
    return this.active !== null;
  }

  /** The active worker's counters (its inbox bound), or null. */
  get activeCounters(): LinkCounters | null {
    return this.active?.counters ?? null;
  }

  get netGrants(): NetGrant[] {
    return this.grants.map((g) => ({ name: g.segment.name, mtu: g.segment.mtu, port: g.endpoint.port }));
  }

  /** Which connect() the link is at (the last worker given a link). */
  generation = 0;

  /**
   * A link for a new worker (number `generation` from now on). It becomes the active one at once
   * only when no worker is active; otherwise at activate().
   */
  connect(): NetInit {
    const ch = new MessageChannel();
    const a: Attached = { generation: ++this.generation, port: ch.port1, counters: new LinkCounters() };
    this.attached.set(a.generation, a);
    ch.port1.on('message', (m: OutgoingFrames) => this.sw.forward(this, a.counters, m));
    // The switch must never keep the process alive on its own.
    ch.port1.unref();
    if (this.active === null) this.active = a;
    return { grants: this.netGrants, port: ch.port2, counters: a.counters.buffer };
  }

  /** The worker of connect() number `generation` serves the device now: frames go to it. */
  activate(generation: number): void {
    const a = this.attached.get(generation);
    if (a) this.active = a;
  }

  /** The worker of connect() number `generation` has exited: its end closes (frames count as not running until another is active). */
  workerGone(generation: number): void {
    const a = this.attached.get(generation);
    if (!a) return;
    this.attached.delete(generation);
    a.port.close();
    if (this.active === a) this.active = null;
    // Its statistics stay the device's; what it had queued went with it.
    const s = a.counters.read();
    for (const f of WORKER_FIELDS) if (s[f] !== 0) this.counters.add(f, s[f]);
  }

  post(msg: IncomingFrames): void {
    this.active?.port.postMessage(msg);
  }

  grant(index: number): { segment: Segment; endpoint: Endpoint } | undefined {
    return this.grants[index];
  }

  stats(): NetStats {
    const out = this.counters.read();
    for (const a of this.attached.values()) {
      const s = a.counters.read();
      for (const k of Object.keys(out) as (keyof NetStats)[]) out[k] += s[k];
    }
    return out;
  }

  /** The device is gone (the daemon removed it): its ports leave their segments. */
  close(): void {
    for (const g of [...this.attached.keys()]) this.workerGone(g);
    for (const g of this.grants) g.segment.leave(g.endpoint.port);
  }
}

export class NetworkSwitch {
  private readonly segments = new Map<string, Segment>();
  private readonly log = createLogger('switch');
  /** Joins TAP interfaces to their segments (tap.ts), set by whoever can open them. */
  tapFactory: ((segment: Segment, ifname: string) => void) | null = null;

  /** The segment `name`, created on first use (with its TAP port for tap:IFNAME). */
  segment(name: string, mtu = DEFAULT_MTU): Segment {
    let s = this.segments.get(name);
    if (s) {
      if (s.mtu !== mtu) throw new NetworkConfigError(`network ${name} has MTU ${s.mtu}; it cannot be joined with MTU ${mtu}`);
      return s;
    }
    s = new Segment(name, mtu);
    if (name.startsWith('tap:')) {
      if (!this.tapFactory) throw new NetworkConfigError(`network ${name}: TAP interfaces are not available in this host`);
      this.tapFactory(s, name.slice(4));
    }
    this.segments.set(name, s);
    this.log.debug(`network ${name} created (MTU ${mtu})`);
    return s;
  }

  /** A device's ports on `names`, in grant order. */
  attach(label: string, names: readonly string[], rate?: TokenBucket): DeviceLink {
    if (names.length > MAX_GRANTS) throw new NetworkConfigError(`device ${label}: ${names.length} networks granted, at most ${MAX_GRANTS}`);
    const dup = names.find((n, i) => names.indexOf(n) !== i);
    if (dup !== undefined) throw new NetworkConfigError(`device ${label}: network ${dup} granted twice`);
    return new DeviceLink(this, label, names, rate ?? null);
  }

  /** A batch a device posted: each frame to its port, or flooded. */
  forward(from: DeviceLink, sender: LinkCounters, m: OutgoingFrames): void {
    const desc = m.desc;
    const n = desc.length >> 2;
    let bytes = 0;
    const batch = new DeliveryBatch();
    for (let i = 0; i < n; i++) {
      const network = desc[4 * i];
      const to = desc[4 * i + 1];
      const offset = desc[4 * i + 2];
      const len = desc[4 * i + 3];
      bytes += len;
      const g = from.grant(network);
      // The worker checked every send against the grants it was given: a miss is a bug there.
      if (!g || offset + len > m.buf.byteLength) continue;
      // A guest that floods is held to its rate here, before any destination's inbox: dropped
      // and counted, as a policer does (the ring is not held back: rx and tx share no budget).
      if (from.rate !== null && !from.rate.tryTake(len)) {
        from.counters.add('txRateDrops', 1);
        continue;
      }
      const own = g.endpoint.port;
      if (to === FLOOD) {
        for (const ep of g.segment.ports.values()) if (ep.port !== own) ep.deliver(m.buf, offset, len, own, batch);
      } else {
        const ep = to === own ? undefined : g.segment.ports.get(to);
        if (ep) ep.deliver(m.buf, offset, len, own, batch);
        else from.counters.add('txNoPort', 1);
      }
    }
    sender.releaseOutbox(n, bytes);
    batch.post(m.buf);
  }

  /** Frames from outside (a TAP interface) into a segment: flooded to every device port. */
  inject(segment: Segment, from: number, buf: SharedArrayBuffer, frames: readonly [offset: number, len: number][]): void {
    const batch = new DeliveryBatch();
    for (const [offset, len] of frames) for (const ep of segment.ports.values()) if (ep.port !== from) ep.deliver(buf, offset, len, from, batch);
    batch.post(buf);
  }
}

let shared: NetworkSwitch | null = null;

/** The process's switch: one set of named segments per host process, TAP interfaces included. */
export function hostSwitch(): NetworkSwitch {
  if (!shared) {
    const sw = new NetworkSwitch();
    sw.tapFactory = (segment, ifname) => void TapPort.open(sw, segment, ifname);
    shared = sw;
  }
  return shared;
}
