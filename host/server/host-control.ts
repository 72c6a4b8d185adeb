// The single-device host's control socket (`vhost-wasm --socket-path S ...` opens it at
// S.control unless --control says otherwise): the daemon's management socket
// (host/daemon/control-server.ts: mode 0600, SO_PEERCRED, JSON-RPC one message per line) with
// the methods such a host has:
// - plugin-upgrade, run by the same code as the daemon's (Listener.upgrade ->
//   host/server/plugin-upgrade.ts); `vhost-wasm upgrade --socket S` is its client;
// - host-handover, asked by a new host process started with --take-over (takeover.ts): this
//   host hands it the device's sockets and exits once the new one serves.
// One of them at a time: a second while one runs is refused.

import type { Host } from './index.ts';
import { isAbsolute } from 'node:path';
import type { ControlMethods, ControlServer } from '../daemon/control-server.ts';
import { RpcCode, RpcError } from '../daemon/jsonrpc.ts';
import { failed, only, pluginParam, type MethodResults } from '../daemon/methods.ts';
import { HandoverLost, sendHandover, type HandoverOutcome, type HandoverSource, type SessionOffer } from './takeover.ts';
import { LiveHandoverBusy, LiveHandoverRefused, type LiveCapture } from '../session/live-handover.ts';

/** A session that is busy (requests held by the device, a migration) is tried this often, this far apart, before the handover is refused. */
const BUSY_ATTEMPTS = 20;
const BUSY_RETRY_MS = 25;
import { HOST_VERSION } from '../version.ts';
import { createLogger, errorText } from '../log/logger.ts';

/** Where the host's control socket is when only its device socket is known. */
export function controlPathFor(socketPath: string): string {
  return `${socketPath}.control`;
}

export const HOST_METHODS = ['plugin-upgrade', 'host-handover'] as const;

/** host-handover's answer: the old host is letting go. */
export interface HandoverResult {
  id: string;
  /** The old host (this one, about to exit) and the new one. */
  fromPid: number;
  toPid: number;
  fromVersion: string;
  /** The connected front-end's session moved too (no reconnect). */
  live: boolean;
  /** Why it did not, when a live handover was asked for and a front-end was connected. */
  liveRefused?: string;
  /** A live handover: from stopping the rings here to the new host saying it serves. */
  stoppedMs?: number;
}

export interface HostControlHooks {
  /** The control server itself (its listening socket is handed over too). */
  control(): ControlServer | null;
  /** After a handover was answered: close what is left (keeping the socket files) and exit. */
  exitAfterHandover(): void;
}

export function hostMethods(host: Host, hooks: HostControlHooks): ControlMethods {
  const log = createLogger('control');
  let running: string | null = null;
  let handedOver = false;
  const exclusive = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    if (handedOver) throw failed(new Error('this host has handed its device over to another process and is exiting'));
    if (running !== null) throw failed(new Error(`an upgrade is already running (${running}); wait for its answer`));
    running = what;
    try {
      return await fn();
    } finally {
      running = null;
    }
  };
  return {
    owner: 'this host',
    rival: 'another host',
    async call(method, params, peer) {
      const d = host.devices[0];
      if (method === 'plugin-upgrade') {
        // id is optional: the host has one device, named by its socket.
        only(params, ['plugin', 'id']);
        const plugin = pluginParam(params);
        if (params.id !== undefined && params.id !== d.config.label) {
          throw new RpcError(RpcCode.invalidParams, `params.id: this host serves ${d.config.label} only`, { field: 'params.id' });
        }
        if (d.config.source.kind !== 'plugin') throw failed(new Error('the device runs a module, not a plugin: nothing to upgrade'));
        return exclusive('plugin upgrade', async () => {
          try {
            return { id: d.config.label, plugin, ...(await d.listener.upgrade(plugin)) } satisfies MethodResults['plugin-upgrade'];
          } catch (e) {
            throw failed(e);
          }
        });
      }
      if (method === 'host-handover') {
        // `live` (a new host of this release or later): the connected front-end's session moves
        // too (format 2); without it (the release before), only the sockets (format 1).
        only(params, ['to', 'live']);
        const to = params.to;
        if (typeof to !== 'string' || !isAbsolute(to)) {
          throw new RpcError(RpcCode.invalidParams, 'params.to: missing or not an absolute path (the new host\'s handover socket)', { field: 'params.to' });
        }
        const live = params.live;
        if (live !== undefined && typeof live !== 'boolean') throw new RpcError(RpcCode.invalidParams, 'params.live: not true or false', { field: 'params.live' });
        return exclusive('host handover', async () => {
          // The new host could not know the disk's bytes are not to be served: it would serve them.
          const unusable = d.slot.memoryDiskUnusable;
          if (unusable !== null) throw failed(new Error(`the memory disk is not handed over: ${unusable}; LOAD a state that checks out first`));
          const control = hooks.control();
          const disk = d.slot.memoryDiskFd;
          // A front-end connecting meanwhile waits in the backlog for whichever host serves.
          d.listener.holdAccepting(true);
          // The session is stopped only when the new host asks for it, its device running.
          let capture: LiveCapture | null = null;
          /** Stops the held session's rings; requests the device holds are answered soon (an rng waiting for entropy): tried again. */
          const stopRings = async (c: LiveCapture) => {
            for (let attempt = 1; ; attempt++) {
              try {
                return await c.stop();
              } catch (e) {
                if (!(e instanceof LiveHandoverBusy) || attempt >= BUSY_ATTEMPTS) throw e;
                await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
              }
            }
          };
          const takeSession = async (): Promise<SessionOffer | { refused: string }> => {
            for (let attempt = 1; ; attempt++) {
              // Looked up each time: a front-end that disconnected meanwhile has nothing to move.
              const session = d.listener.currentSession;
              if (session === null) return { refused: 'the front-end disconnected' };
              try {
                const c = await session.captureForHandover();
                capture = c;
                return { record: c.record, fds: c.fds, stop: () => stopRings(c) };
              } catch (e) {
                if (e instanceof LiveHandoverBusy && attempt < BUSY_ATTEMPTS) {
                  await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
                  continue;
                }
                if (e instanceof LiveHandoverRefused) {
                  // The fallback: the sockets move, the front-end reconnects (its inflight area resubmits).
                  log.warn(`host-handover: the session cannot move live (${e.message}); handing over the sockets only: the front-end must reconnect`);
                  return { refused: e.message };
                }
                throw new Error(`the connected session cannot be handed over now: ${errorText(e)}`);
              }
            }
          };
          const src: HandoverSource = {
            format: live === undefined ? 1 : 2,
            header: { pid: process.pid, hostVersion: HOST_VERSION, label: d.config.label, ...(disk ? { memoryDiskBytes: disk.size } : {}) },
            fds: [
              { kind: 'listen', fd: d.listener.fd },
              ...(control ? [{ kind: 'control' as const, fd: control.fd }] : []),
              ...(disk ? [{ kind: 'memory-disk' as const, fd: disk.fd }] : []),
            ],
            ...(live === true && d.listener.currentSession !== null ? { session: takeSession } : {}),
          };
          let outcome: HandoverOutcome;
          try {
            log.info(`host-handover: handing the device${src.session ? ' and its connected session' : ''} to pid ${peer.pid}`);
            outcome = await sendHandover(to, peer.pid, src, undefined, (why) => log.warn(`host-handover: ${why}`));
          } catch (e) {
            const taken = capture as LiveCapture | null;
            if (e instanceof HandoverLost) {
              // This host let go of the session ("go"): the new host may have run its rings, so
              // this one must not run them again from where it stopped. Its copies go; if the new
              // host is gone, the front-end's connection ends with it, and a front-end that
              // reconnects is served here again (its inflight area says what was in flight).
              taken?.letGo();
              d.listener.holdAccepting(false);
              log.error(`host-handover to pid ${peer.pid} failed after this host let go of the session: ${e.message}; this host accepts connections again`);
              throw failed(e);
            }
            await taken?.resume();
            d.listener.holdAccepting(false);
            throw failed(e);
          }
          handedOver = true;
          const taken = capture as LiveCapture | null;
          const pauseMs = outcome.live && taken?.stoppedAt != null ? performance.now() - taken.stoppedAt : null;
          if (outcome.live) taken?.letGo();
          // The new host accepts on the socket; without a live session our front-end reconnects to it.
          await d.listener.handOff(`handed over to the new host (pid ${peer.pid})`);
          log.info(`host-handover: pid ${peer.pid} serves the device now${pauseMs !== null ? ` with the session (rings stopped ${pauseMs.toFixed(1)} ms)` : ''}; this host exits`);
          return {
            id: d.config.label,
            fromPid: process.pid,
            toPid: peer.pid,
            fromVersion: HOST_VERSION,
            live: outcome.live,
            ...(outcome.liveRefused !== null ? { liveRefused: outcome.liveRefused } : {}),
            ...(pauseMs !== null ? { stoppedMs: Math.round(pauseMs * 10) / 10 } : {}),
          } satisfies HandoverResult;
        });
      }
      throw new RpcError(RpcCode.methodNotFound, `no method "${method}" (a single-device host has: ${HOST_METHODS.join(', ')})`);
    },
    afterAnswer(method) {
      if (method === 'host-handover' && handedOver) hooks.exitAfterHandover();
    },
  };
}
