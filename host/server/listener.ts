// One listening vhost-user socket serving one device: accepts a front-end, runs a session
// with it, and after it disconnects (device reset, everything it sent released) accepts the
// next, as qemu-storage-daemon does. vhost-user has one front-end per device, so a second
// concurrent connection is refused with a log line rather than queued behind the first.

import { native, errnoCode } from '../native/index.ts';
import type { Watcher } from '../native/api.ts';
import { lstatSync, unlinkSync } from 'node:fs';
import { BackendSession, type SessionOptions } from '../session/session.ts';
import type { DeviceSlot } from './device-slot.ts';
import { createLogger, errorText, type Logger } from '../log/logger.ts';

export type ListenAddress = { path: string } | { fd: number };

/** Turns "the path exists" into either a stale socket we may replace or a clear refusal. */
function claimSocketPath(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) {
    throw new Error(`--socket-path ${path} exists and is not a socket; refusing to replace it (remove it or choose another path)`);
  }
  let probe = -1;
  try {
    probe = native.connectUnix(path);
  } catch (e) {
    if (errnoCode(e) === 'ECONNREFUSED') {
      unlinkSync(path); // stale: its server is gone
      return;
    }
    throw new Error(`--socket-path ${path}: cannot check the existing socket: ${errorText(e)}`);
  }
  native.close(probe);
  throw new Error(`--socket-path ${path}: another back-end is already listening there; stop it or choose another path`);
}

export class Listener {
  private readonly fd: number;
  private watching: Watcher | null;
  private session: BackendSession | null = null;
  private closing = false;
  private readonly log: Logger;
  private readonly ownedPath: string | null;
  private idleWaiters: (() => void)[] = [];

  constructor(
    addr: ListenAddress,
    private readonly slot: DeviceSlot,
    /** Per-device session settings from the command line (state channel options). */
    private readonly sessionOptions: Partial<Omit<SessionOptions, 'label' | 'onClosed'>> = {},
  ) {
    this.log = createLogger(`listener ${slot.opts.label}`);
    if ('path' in addr) {
      claimSocketPath(addr.path);
      this.fd = native.listenUnix(addr.path, 16);
      this.ownedPath = addr.path;
    } else {
      if (!native.isListeningUnixSocket(addr.fd)) {
        throw new Error(`--fd ${addr.fd} is not a listening Unix stream socket (the front-end must pass one it called listen() on)`);
      }
      native.setNonBlocking(addr.fd, true);
      this.fd = addr.fd;
      this.ownedPath = null;
    }
    this.watching = native.watch(this.fd, 'r', () => this.onAcceptable());
  }

  /** A worker is being acquired for a connection: the device is taken, though no session exists yet. */
  private starting = false;

  /** The device has a front-end, or is about to. */
  private get busy(): boolean {
    return this.session !== null || this.starting;
  }

  private onAcceptable(): void {
    if (this.busy || this.closing) return;
    let conn: number;
    try {
      conn = native.accept(this.fd);
    } catch (e) {
      this.log.error(`accept failed: ${errorText(e)}`);
      return;
    }
    if (conn < 0) return;
    void this.serve(conn);
  }

  /**
   * While a front-end is connected (or its session is still being released) the listening
   * socket is not watched: a second front-end waits in the kernel's backlog and is served once
   * the device is free, as qemu-storage-daemon does. That also makes a quick reconnect (QEMU's
   * reconnect=) race-free against the release of the previous session.
   */
  private async serve(conn: number): Promise<void> {
    this.starting = true;
    this.pauseAccepting();
    let worker;
    try {
      worker = await this.slot.acquire();
    } catch (e) {
      this.log.error(`cannot start the device for a new connection: ${errorText(e)}`);
      native.close(conn);
      this.endSession();
      return;
    }
    this.starting = false;
    if (this.closing) {
      // Shutdown began while the device was being started: do not serve a new front-end.
      native.close(conn);
      this.endSession();
      return;
    }
    this.log.info('front-end connected');
    this.session = new BackendSession(conn, worker, this.slot, {
      ...this.sessionOptions,
      label: this.slot.opts.label,
      onClosed: () => this.endSession(),
    });
  }

  private pauseAccepting(): void {
    this.watching?.close();
    this.watching = null;
  }

  private endSession(): void {
    this.session = null;
    this.starting = false;
    this.wakeIdle();
    if (!this.closing) {
      this.watching = native.watch(this.fd, 'r', () => this.onAcceptable());
      this.onAcceptable(); // a front-end may already be waiting in the backlog
    }
  }

  private wakeIdle(): void {
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Resolves when no session is active (tests, shutdown). */
  idle(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stop accepting, end the active session (its device released), remove the socket file. */
  async close(): Promise<void> {
    if (this.closing) return this.idle();
    this.closing = true;
    this.pauseAccepting();
    native.close(this.fd);
    if (this.ownedPath) {
      try {
        unlinkSync(this.ownedPath);
      } catch {
        // already gone
      }
    }
    this.session?.close('host shutting down');
    await this.idle();
  }
}
