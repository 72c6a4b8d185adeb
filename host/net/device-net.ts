// A device worker's side of its network ports (link.ts): frames the switch forwarded wait in a
// bounded inbox until the runner hands them to the device in a handle() call; frames the
// device sends are copied out of guest memory once, into one shared buffer per call, and
// posted to the switch.

import type { MessagePort } from 'node:worker_threads';
import { LinkCounters, type IncomingFrames, type NetGrant, type NetInit, type NetStats } from './link.ts';

/** A frame given to the device in one call: its bytes stay here, a view of the shared buffer. */
export interface RxFrame {
  readonly network: number;
  readonly fromPort: number;
  readonly bytes: Uint8Array;
}

/** One send of a call: `len` bytes that `fill` writes into the buffer it is given. */
export interface TxFrame {
  readonly network: number;
  /** A port, or FLOOD. */
  readonly to: number;
  readonly len: number;
  fill(into: Uint8Array): void;
}

export class DeviceNet {
  readonly grants: readonly NetGrant[];
  readonly mtus: readonly number[];
  private readonly port: MessagePort;
  private readonly counters: LinkCounters;
  /** Batches from the switch, oldest first, with how far each has been taken. */
  private inbox: { buf: SharedArrayBuffer; desc: readonly number[]; at: number }[] = [];
  private waiting = 0;
  /** The runner's: frames arrived (called once per message). */
  onFrames: () => void = () => {};

  constructor(init: NetInit) {
    this.grants = init.grants;
    this.mtus = init.grants.map((g) => g.mtu);
    this.port = init.port;
    this.counters = new LinkCounters(init.counters);
    this.port.on('message', (m: IncomingFrames) => {
      this.inbox.push({ buf: m.buf, desc: m.desc, at: 0 });
      this.waiting += m.desc.length >> 2;
      this.onFrames();
    });
  }

  /** Frames waiting for the device. */
  get pending(): number {
    return this.waiting;
  }

  /** Up to `max` waiting frames, oldest first, taken off the inbox. */
  take(max: number): RxFrame[] {
    const out: RxFrame[] = [];
    let bytes = 0;
    while (out.length < max && this.inbox.length > 0) {
      const b = this.inbox[0];
      const d = b.desc;
      while (out.length < max && b.at < d.length) {
        const offset = d[b.at + 2];
        const len = d[b.at + 3];
        out.push({ network: d[b.at], fromPort: d[b.at + 1], bytes: new Uint8Array(b.buf, offset, len) });
        bytes += len;
        b.at += 4;
      }
      if (b.at >= d.length) this.inbox.shift();
    }
    this.waiting -= out.length;
    this.counters.releaseInbox(out.length, bytes);
    return out;
  }

  /** Drops every waiting frame (the device is not running, or resets), counted. */
  dropAll(): void {
    const n = this.waiting;
    if (n === 0) return;
    const frames = this.take(n);
    this.counters.add('rxNotRunning', frames.length);
  }

  /** After a call: how many of its frames the device read, and their bytes; the rest were dropped. */
  delivered(read: number, readBytes: number, unread: number): void {
    if (read > 0) {
      this.counters.add('rxFrames', read);
      this.counters.add('rxBytes', readBytes);
    }
    if (unread > 0) this.counters.add('rxUnread', unread);
  }

  /**
   * A call's sends: copied (once) into one shared buffer and posted to the switch. Past the
   * outbox bound (the switch that far behind) the whole batch is dropped and counted; the
   * requests still complete, so the guest never waits on the switch.
   */
  send(frames: readonly TxFrame[]): void {
    if (frames.length === 0) return;
    let total = 0;
    for (const f of frames) total += f.len;
    if (!this.counters.reserveOutbox(frames.length, total)) {
      this.counters.add('txDrops', frames.length);
      return;
    }
    const buf = new SharedArrayBuffer(total);
    const desc: number[] = new Array(frames.length * 4);
    let at = 0;
    frames.forEach((f, i) => {
      f.fill(new Uint8Array(buf, at, f.len));
      desc[4 * i] = f.network;
      desc[4 * i + 1] = f.to;
      desc[4 * i + 2] = at;
      desc[4 * i + 3] = f.len;
      at += f.len;
    });
    this.counters.add('txFrames', frames.length);
    this.counters.add('txBytes', total);
    this.port.postMessage({ buf, desc });
  }

  stats(): NetStats {
    return this.counters.read();
  }

  close(): void {
    this.port.close();
  }
}
