// The single-device host's control socket (`vhost-wasm --socket-path S ...` opens it at
// S.control unless --control says otherwise): the daemon's management socket
// (host/daemon/control-server.ts: mode 0600, SO_PEERCRED, JSON-RPC one message per line) with
// the methods such a host has:
// - device-stats: the device's counts and what it has in flight now (the daemon's `work`);
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
import { sendHandover, type HandoverOutcome } from './takeover.ts';
import { handoverRefusal, prepareDeviceHandover } from './device-handover.ts';
import { HOST_VERSION } from '../version.ts';
import { createLogger } from '../log/logger.ts';
import type { DeviceWork } from '../metrics/device-meter.ts';

/** Where the host's control socket is when only its device socket is known. */
export function controlPathFor(socketPath: string): string {
  return `${socketPath}.control`;
}

export const HOST_METHODS = ['device-stats', 'plugin-upgrade', 'host-handover'] as const;

/** device-stats of a single-device host: the daemon's `work` counts of its one device. */
export interface HostDeviceStats {
  id: string;
  work: DeviceWork;
}

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
  /** The new host's pid once a handover committed. */
  let handedTo: number | null = null;
  const exclusive = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    if (handedTo !== null) throw failed(new Error(`this host has handed over to pid ${handedTo} and is exiting: connect again to reach it`));
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
      if (method === 'device-stats') {
        // Read from the workers' shared counters: answered while an upgrade or a drain runs too.
        only(params, []);
        return { id: d.config.label, work: d.slot.meter.work() } satisfies HostDeviceStats;
      }
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
          const refusal = handoverRefusal(d);
          if (refusal !== null) throw failed(new Error(refusal));
          const control = hooks.control();
          const h = prepareDeviceHandover(d, { live, extra: control ? [{ kind: 'control', fd: control.fd }] : [], log, logPrefix: 'host-handover:' });
          let outcome: HandoverOutcome;
          try {
            log.info(`host-handover: handing the device${h.src.session ? ' and its connected session' : ''} to pid ${peer.pid}`);
            outcome = await sendHandover(to, peer.pid, h.src, undefined, (why) => log.warn(`host-handover: ${why}`));
          } catch (e) {
            await h.failed(e);
            throw failed(e);
          }
          handedTo = peer.pid;
          // The control socket is the new host's from now on: no client reaches this one any more.
          control?.retire(`this host (pid ${process.pid}) has handed over to pid ${peer.pid}: connect again to reach it`, 'host-handover');
          const pauseMs = await h.succeeded(outcome, `handed over to the new host (pid ${peer.pid})`);
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
      if (method === 'host-handover' && handedTo !== null) hooks.exitAfterHandover();
    },
  };
}
