// A TAP interface as a port of a segment (--network tap:IFNAME): frames the kernel sends out
// of the interface come into the segment, frames sent to the port go out to the kernel. It
// lives on the main thread beside the switch; the fd is opened through the native addon
// (/dev/net/tun, IFF_TAP | IFF_NO_PI: one frame per read or write).

import { native } from '../native/index.ts';
import type { Watcher } from '../native/api.ts';
import { createLogger, errorText } from '../log/logger.ts';
import type { DeliveryBatch, Endpoint, NetworkSwitch, Segment } from './switch.ts';
import { NetworkConfigError } from './errors.ts';

/** Frames read per wake-up before the event loop gets a turn (the fd is level-triggered). */
const FRAMES_PER_WAKE = 16;

export class TapPort implements Endpoint {
  private readonly log;
  private watcher: Watcher | null = null;
  /** Frames the interface got that could not be written now (its queue full: EAGAIN), or were too long. */
  txDropped = 0;
  rxFrames = 0;
  rxDropped = 0;

  private constructor(
    readonly port: number,
    private readonly fd: number,
    private readonly ifname: string,
    private readonly sw: NetworkSwitch,
    private readonly segment: Segment,
  ) {
    this.log = createLogger(`tap ${ifname}`);
  }

  /** Opens IFNAME (creating it if it does not exist) and joins it to `segment`. */
  static open(sw: NetworkSwitch, segment: Segment, ifname: string): TapPort {
    let fd: number;
    try {
      fd = native.tapOpen(ifname);
    } catch (e) {
      throw new NetworkConfigError(`network ${segment.name}: cannot open TAP interface ${ifname}: ${errorText(e)} (it needs CAP_NET_ADMIN, or a persistent interface made for this user)`);
    }
    let tap: TapPort | null = null;
    segment.join((port) => (tap = new TapPort(port, fd, ifname, sw, segment)));
    tap!.start();
    return tap!;
  }

  private start(): void {
    this.watcher = native.watch(this.fd, 'r', (_r, _w, error) => {
      if (error) {
        this.log.error('the TAP fd reported an error; the interface is no longer read');
        this.close();
        return;
      }
      this.readFrames();
    });
    // A TAP port must not keep the process alive on its own.
    this.watcher.unref();
    this.log.info(`TAP interface ${this.ifname} joined network ${this.segment.name} as port ${this.port}`);
  }

  /** Largest frame on the segment, and one byte more to tell a truncated read. */
  private get maxFrame(): number {
    return this.segment.mtu + 18;
  }

  private readFrames(): void {
    const max = this.maxFrame;
    const buf = new SharedArrayBuffer(FRAMES_PER_WAKE * (max + 1));
    const frames: [number, number][] = [];
    let at = 0;
    for (let i = 0; i < FRAMES_PER_WAKE; i++) {
      let n: number;
      try {
        n = native.read(this.fd, new Uint8Array(buf, at, max + 1));
      } catch (e) {
        this.log.error(`reading the TAP interface failed: ${errorText(e)}`);
        break;
      }
      if (n <= 0) break; // EAGAIN (-1): nothing more now
      if (n > max || n < 14) {
        this.rxDropped++;
        continue;
      }
      frames.push([at, n]);
      this.rxFrames++;
      at += n;
    }
    if (frames.length > 0) this.sw.inject(this.segment, this.port, buf, frames);
  }

  deliver(buf: SharedArrayBuffer, offset: number, len: number, _from: number, _batch: DeliveryBatch): void {
    try {
      if (native.write(this.fd, new Uint8Array(buf, offset, len)) < 0) this.txDropped++;
    } catch (e) {
      // The interface is down (EIO), or refused the frame: dropped, as a full queue would be.
      this.txDropped++;
      if (this.txDropped === 1) this.log.warn(`writing a frame to ${this.ifname} failed: ${errorText(e)} (counted, said once)`);
    }
  }

  close(): void {
    this.watcher?.close();
    this.watcher = null;
    this.segment.leave(this.port);
    native.close(this.fd);
  }
}
