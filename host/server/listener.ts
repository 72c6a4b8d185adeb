// One listening vhost-user socket serving one device: accepts a front-end, runs a session
// with it, and after it disconnects (device reset, everything it sent released) serves the
// next, as qemu-storage-daemon does.
//
// One front-end at a time, and the socket is always drained: vhost-user has one front-end per
// device and no message to say "busy", and a listener that stopped accepting while busy let
// the kernel's backlog fill, after which every connect() failed with EAGAIN. So a connection
// that arrives while the device is taken is accepted at once and either waits (up to
// MAX_WAITING_CONNECTIONS, served in order when the device is free: this is what makes
// QEMU's reconnect, which often arrives before the previous session is released, just work)
// or, past that, is closed straight away with a log line saying the device is busy (a peer
// sees EOF, not a hang). See docs/security.md.
//
// accept() failing for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) leaves the
// connection in the backlog and the socket readable: retrying at once would spin. The
// listener stops watching for 100 ms, doubling to 1 s while it keeps failing, and logs one
// line when such an episode starts and one with the count when accepting works again.

import { native, errnoCode } from '../native/index.ts';
import type { Watcher } from '../native/api.ts';
import { unlinkSync } from 'node:fs';
import { claimSocketPath } from './socket-path.ts';
import { BackendSession, type RestoreWire } from '../session/dispatch.ts';
import { DEFAULT_SESSION_SETTINGS, type SessionSettings } from '../session/options.ts';
import type { DeviceSlot } from './device-slot.ts';
import { upgradePlugin, type UpgradeOutcome } from './plugin-upgrade.ts';
import { createLogger, errorText, type Logger } from '../log/logger.ts';
import { LogThrottle } from '../log/throttle.ts';
import { MAX_WAITING_CONNECTIONS } from '../resources/fd-budget.ts';
import type { LiveSessionRecord } from '../session/handover-record.ts';

/** accept4 errors that mean "no resources now", not "this connection is bad". */
const RESOURCE_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 1000;
/** Room for a burst of connects between two turns of the loop (the kernel caps it at somaxconn). */
const LISTEN_BACKLOG = 128;
/** Connections accepted per readiness callback, so one busy socket cannot starve the loop. */
const ACCEPT_BATCH = 16;
/** Refused ("busy") connections are logged at most this often, with a count of the rest. */
const BUSY_LOG_INTERVAL_MS = 5000;

export interface ListenerStats {
  /** A front-end is connected now. */
  frontEnd: boolean;
  /** Connections waiting for the device to be free. */
  waiting: number;
  /** Connections accepted since the device was added. */
  accepted: number;
  /** Connections closed at once because the device was busy and the wait line full. */
  refusedBusy: number;
}

/** `hold`: accept nothing until holdAccepting(false) (a host handover first restores the session it was handed). */
export type ListenAddress = { path: string } | { fd: number; hold?: boolean };


export class Listener {
  /** The listening socket (a host handover passes it on). */
  readonly fd: number;
  private watching: Watcher | null = null;
  private session: BackendSession | null = null;
  private closing = false;
  private readonly log: Logger;
  private ownedPath: string | null;
  private idleWaiters: (() => void)[] = [];
  /** Accepted connections waiting for the device, oldest first. */
  private readonly waiting: number[] = [];
  private readonly busyLog: LogThrottle;
  /** Current accept backoff (0: none), its timer, and the failures of this episode. */
  private backoffMs = 0;
  private backoffTimer: NodeJS.Timeout | null = null;
  private acceptFailures = 0;
  private backoffStarted = 0;
  /** Front-end connections accepted, and those closed at once because the device was busy. */
  private accepted = 0;
  private refused = 0;

  constructor(
    addr: ListenAddress,
    private readonly slot: DeviceSlot,
    /** Per-device session settings from the command line (state channel options). */
    private readonly sessionOptions: Partial<SessionSettings> = {},
  ) {
    this.log = createLogger(`listener ${slot.opts.label}`);
    this.busyLog = new LogThrottle(this.log, 'warn', BUSY_LOG_INTERVAL_MS);
    if ('path' in addr) {
      claimSocketPath(addr.path, {
        name: `--socket-path ${addr.path}`,
        rival: 'another back-end',
        notSocketHint: 'remove it or choose another path',
        error: (m) => new Error(m),
      });
      this.fd = native.listenUnix(addr.path, LISTEN_BACKLOG);
      this.ownedPath = addr.path;
    } else {
      if (!native.isListeningUnixSocket(addr.fd)) {
        throw new Error(`--fd ${addr.fd} is not a listening Unix stream socket (the front-end must pass one it called listen() on)`);
      }
      native.setNonBlocking(addr.fd, true);
      this.fd = addr.fd;
      this.ownedPath = null;
    }
    if (!('hold' in addr && addr.hold === true)) this.resumeAccepting();
  }

  /** A worker is being acquired for a connection: the device is taken, though no session exists yet. */
  private starting = false;

  /** The device has a front-end, or is about to. */
  private get busy(): boolean {
    return this.session !== null || this.starting;
  }

  private onAcceptable(): void {
    for (let i = 0; i < ACCEPT_BATCH && !this.closing && this.backoffTimer === null; i++) {
      let conn: number;
      try {
        conn = native.accept(this.fd);
      } catch (e) {
        this.acceptFailed(e);
        return;
      }
      if (conn < 0) return; // the backlog is empty
      this.acceptWorked();
      this.accepted++;
      this.admit(conn);
    }
  }

  /** A new connection: served now, queued behind the current front-end, or refused. */
  private admit(conn: number): void {
    if (!this.busy && this.waiting.length === 0) {
      void this.serve(conn);
    } else if (this.waiting.length < MAX_WAITING_CONNECTIONS) {
      this.waiting.push(conn);
      this.log.info(`a front-end connected while the device is busy with another; it waits and is served when that one disconnects (${this.waiting.length} waiting)`);
    } else {
      native.close(conn);
      this.refused++;
      this.busyLog.hit(
        `device busy: closed a new front-end connection (the device has a front-end and ${this.waiting.length} more waiting; vhost-user serves one front-end per device)`,
      );
    }
  }

  private acceptFailed(e: unknown): void {
    const code = errnoCode(e);
    this.acceptFailures++;
    this.backoffMs = this.backoffMs === 0 ? BACKOFF_FIRST_MS : Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    if (this.acceptFailures === 1) {
      this.backoffStarted = performance.now();
      const why = code !== undefined && RESOURCE_ERRORS.has(code) ? 'the process is out of a resource' : 'unexpected error';
      this.log.warn(
        `accept failed (${why}): ${errorText(e)}; pausing the listener ${BACKOFF_FIRST_MS} ms, doubling up to ${BACKOFF_MAX_MS} ms while it fails ` +
          '(no further lines until it recovers; pending front-ends wait in the backlog)',
      );
    }
    this.pauseAccepting();
    this.backoffTimer = setTimeout(() => {
      this.backoffTimer = null;
      if (this.closing) return;
      this.resumeAccepting();
      this.onAcceptable();
    }, this.backoffMs);
  }

  private acceptWorked(): void {
    if (this.acceptFailures === 0) return;
    const ms = Math.round(performance.now() - this.backoffStarted);
    this.log.info(`accepting again after ${this.acceptFailures} failed accept attempt(s) over ${ms} ms`);
    this.acceptFailures = 0;
    this.backoffMs = 0;
  }

  private async serve(conn: number): Promise<void> {
    this.starting = true;
    let worker;
    try {
      worker = await this.slot.acquire(true);
    } catch (e) {
      // The front-end sees its connection closed; the next one tries again (QEMU's reconnect does).
      const b = this.slot.stats().startBackoff;
      const next = b === null || b.retryInSeconds === 0 ? 'the next connection tries again' : `the next connection after ${b.retryInSeconds} s tries again (earlier ones are closed at once)`;
      this.log.error(`cannot start the device for a new connection: ${errorText(e)}; its connection is closed, and ${next}`);
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
      ...DEFAULT_SESSION_SETTINGS,
      ...this.sessionOptions,
      label: this.slot.opts.label,
      onClosed: () => this.endSession(),
    });
  }

  private resumeAccepting(): void {
    if (this.watching || this.closing) return;
    this.watching = native.watch(this.fd, 'r', () => this.onAcceptable());
  }

  private pauseAccepting(): void {
    this.watching?.close();
    this.watching = null;
  }

  private endSession(): void {
    this.session = null;
    this.starting = false;
    if (this.closing) {
      this.wakeIdle();
      return;
    }
    // The device is free (reset and released by the session): the oldest waiting front-end is next.
    const next = this.waiting.shift();
    if (next !== undefined) {
      this.log.info(`serving a waiting front-end (${this.waiting.length} still waiting)`);
      void this.serve(next);
    } else {
      this.wakeIdle();
    }
  }

  private wakeIdle(): void {
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** What the management API's device-stats reports about the socket side. */
  stats(): ListenerStats {
    return { frontEnd: this.session !== null, waiting: this.waiting.length, accepted: this.accepted, refusedBusy: this.refused };
  }

  /**
   * plugin-upgrade (plugin-upgrade.ts): the connected front-end's session switches, or the idle
   * device's worker is swapped. `startNow`: a device with no worker starts from the new build at
   * once (it starts eagerly), not at its next connection.
   */
  upgrade(pluginPath: string, startNow = true): Promise<UpgradeOutcome> {
    if (this.closing) return Promise.reject(new Error(`device ${this.slot.opts.label}: it is being removed`));
    return upgradePlugin(this.slot, () => this.session, this.session === null && !this.starting, pluginPath, startNow);
  }

  /** The connected front-end's session, if any (a host handover moves it). */
  get currentSession(): BackendSession | null {
    return this.session;
  }

  /**
   * A host handover of a connected session (host/session/dispatch.ts restore()): the front-end's
   * connection, handed over with the record, becomes this device's session. Takes every fd in
   * `fds`; throws (the session closed, the old host serves on) unless it runs.
   */
  async adoptLive(record: LiveSessionRecord, fds: number[], wire: RestoreWire): Promise<void> {
    if (this.busy) {
      for (const fd of fds) native.close(fd);
      throw new Error('the device already has a front-end');
    }
    this.starting = true;
    let worker;
    try {
      worker = await this.slot.acquire(true);
    } catch (e) {
      this.starting = false;
      for (const fd of fds) native.close(fd);
      throw e;
    }
    this.starting = false;
    const session = new BackendSession(fds[record.frontEnd], worker, this.slot, {
      ...DEFAULT_SESSION_SETTINGS,
      ...this.sessionOptions,
      label: this.slot.opts.label,
      restoring: true,
      onClosed: () => this.endSession(),
    });
    this.session = session;
    try {
      await session.restore(record, fds, wire);
    } catch (e) {
      session.close(`the session handed over could not be restored: ${errorText(e)}`);
      await this.idle();
      throw e;
    }
  }

  /** The socket file is this listener's to remove from now on (a socket handed over by another host, once that one let go). */
  adoptPath(path: string): void {
    this.ownedPath = path;
  }

  /** A host handover: no connection is accepted while the new host is handed the socket (they wait in the backlog). */
  holdAccepting(hold: boolean): void {
    if (hold) this.pauseAccepting();
    else this.resumeAccepting();
  }

  /**
   * The new host accepts on this socket now: stop accepting, close this process's copy without
   * removing the file, and end the session (its front-end reconnects, to the new host).
   */
  handOff(reason: string): Promise<void> {
    this.ownedPath = null;
    return this.close(reason);
  }

  /** Resolves when no session is active (tests, shutdown). */
  idle(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stop accepting, end the active session (its device released), remove the socket file. */
  async close(reason = 'host shutting down'): Promise<void> {
    if (this.closing) return this.idle();
    this.closing = true;
    this.pauseAccepting();
    if (this.backoffTimer) clearTimeout(this.backoffTimer);
    this.backoffTimer = null;
    for (const c of this.waiting.splice(0)) native.close(c);
    native.close(this.fd);
    if (this.ownedPath) {
      try {
        unlinkSync(this.ownedPath);
      } catch {
        // already gone
      }
    }
    this.session?.close(reason);
    await this.idle();
  }
}
