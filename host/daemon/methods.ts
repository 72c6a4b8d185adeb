// The management API's methods: what each takes, checks and does. Every parameter is checked
// before anything changes, so a refused request leaves the daemon as it was.

import { readdirSync } from 'node:fs';
import { callDeadline, checkThrottleGroups, ConfigError, cpuShare, parseDeviceSpec, parseThrottle, THROTTLE_FIELDS } from './config.ts';
import { RpcCode, RpcError } from './jsonrpc.ts';
import type { Daemon, DeviceStats, DeviceSummary } from './daemon.ts';
import type { UpgradeOutcome } from '../server/plugin-upgrade.ts';
import { isAbsolute } from 'node:path';
import { errorText, getLogLevel, isLogLevel, LOG_LEVELS, setLogLevel, type LogLevel } from '../log/logger.ts';
import { errorCode } from '../errors.ts';
import { fdBudgetInfo } from '../resources/fd-budget.ts';
import type { ControlMethods } from './control-server.ts';
import { handOverDaemon, handoverParams, type DaemonHandoverHooks, type DaemonHandoverResult } from './daemon-handover.ts';

export interface ProcessStats {
  pid: number;
  rssBytes: number;
  heapUsedBytes: number;
  openFds: number;
  fdBudget: { budget: number; used: number; limit: number };
}

/** The result of each method, by name: the client (ctl.ts) reads these types. */
export interface MethodResults {
  'device-add': DeviceSummary;
  'device-del': { id: string; removed: true };
  'device-list': { devices: DeviceSummary[] };
  'device-stats': { devices: DeviceStats[]; process: ProcessStats };
  'log-level': { level: LogLevel; previous: LogLevel };
  'set-limits': { id: string; limits: DeviceStats['limits'] };
  'plugin-upgrade': UpgradeOutcome & { id: string; plugin: string };
  'daemon-handover': DaemonHandoverResult;
}
export type MethodName = keyof MethodResults;
export const METHODS: readonly MethodName[] = ['device-add', 'device-del', 'device-list', 'device-stats', 'set-limits', 'log-level', 'plugin-upgrade', 'daemon-handover'];

type Params = Record<string, unknown>;

export function only(params: Params, allowed: string[]): void {
  for (const k of Object.keys(params)) {
    if (!allowed.includes(k)) {
      throw new RpcError(RpcCode.invalidParams, `params.${k}: unknown parameter${allowed.length ? ` (allowed: ${allowed.join(', ')})` : ' (this method takes none)'}`, { field: `params.${k}` });
    }
  }
}

function idParam(params: Params, required: boolean): string | undefined {
  if (params.id === undefined) {
    if (required) throw new RpcError(RpcCode.invalidParams, 'params.id: missing (the device to act on)', { field: 'params.id' });
    return undefined;
  }
  if (typeof params.id !== 'string') throw new RpcError(RpcCode.invalidParams, 'params.id: must be a string', { field: 'params.id' });
  return params.id;
}

/** plugin-upgrade's params.plugin: the new build, an absolute path (the caller's working directory is not ours). */
export function pluginParam(params: Params): string {
  const plugin = params.plugin;
  if (typeof plugin !== 'string' || !isAbsolute(plugin)) {
    throw new RpcError(RpcCode.invalidParams, 'params.plugin: missing or not an absolute path (the new build of the plugin, a .wasm component)', { field: 'params.plugin' });
  }
  return plugin;
}

/** What daemon-handover needs beyond the daemon: its management socket, and the exit once it handed everything over. */
export interface DaemonControlHooks extends DaemonHandoverHooks {
  exitAfterHandover(): void;
}

/** The daemon's methods on its management socket. */
export function daemonMethods(daemon: Daemon, hooks?: DaemonControlHooks): ControlMethods {
  /** The new daemon's pid once a handover committed. */
  let handedTo: number | null = null;
  return {
    call: async (m, p, peer) => {
      if (handedTo !== null) throw failed(new Error(`this daemon has handed over to pid ${handedTo} and is exiting: connect again to reach it`));
      if (m !== 'daemon-handover') return callMethod(daemon, m, p);
      // Asked by `vhost-wasm serve --take-over` (take-over.ts), the new daemon's pid is the peer's.
      only(p, ['to', 'live']);
      const params = handoverParams(p);
      if (typeof params === 'string') throw new RpcError(RpcCode.invalidParams, params, { field: params.slice(0, params.indexOf(':')) });
      if (!hooks) throw failed(new Error('this daemon cannot hand its devices over (no management socket hooks)'));
      try {
        const committed = (toPid: number) => {
          handedTo = toPid;
          hooks.committed(toPid);
        };
        const r = await handOverDaemon(daemon, { ...hooks, committed }, params.to, peer.pid, params.live);
        handedTo = peer.pid;
        return r satisfies MethodResults['daemon-handover'];
      } catch (e) {
        throw failed(e);
      }
    },
    afterAnswer(m) {
      if (m === 'daemon-handover' && handedTo !== null) hooks?.exitAfterHandover();
    },
    quiet: new Set(['device-list', 'device-stats']),
    owner: 'this daemon',
    rival: 'another daemon',
  };
}

/** A failure of the daemon's own (no such device, the socket is taken, the plugin would not load). */
export function failed(e: unknown): RpcError {
  if (e instanceof RpcError) return e;
  const code = errorCode(e);
  return new RpcError(RpcCode.requestFailed, errorText(e), code === undefined ? undefined : { code });
}

function processStats(): ProcessStats {
  const b = fdBudgetInfo();
  let openFds = -1;
  try {
    openFds = readdirSync('/proc/self/fd').length;
  } catch {
    // no /proc: reported as -1
  }
  const m = process.memoryUsage();
  return { pid: process.pid, rssBytes: m.rss, heapUsedBytes: m.heapUsed, openFds, fdBudget: { budget: b.budget, used: b.used, limit: b.limit } };
}

export async function callMethod(daemon: Daemon, method: string, params: Params): Promise<unknown> {
  switch (method) {
    case 'device-add': {
      let spec;
      try {
        spec = parseDeviceSpec(params, 'params', 'absolute-only');
        checkThrottleGroups([spec], () => 'params', daemon.throttleGroups());
      } catch (e) {
        if (e instanceof ConfigError) throw new RpcError(RpcCode.invalidParams, e.message, { field: e.field });
        throw e;
      }
      if (!('path' in spec.listen)) throw new RpcError(RpcCode.invalidParams, 'params.socket: give a socket path', { field: 'params.socket' });
      try {
        return await daemon.add(spec, { path: spec.listen.path });
      } catch (e) {
        throw failed(e);
      }
    }
    case 'device-del': {
      only(params, ['id']);
      const id = idParam(params, true)!;
      try {
        await daemon.remove(id);
      } catch (e) {
        throw failed(e);
      }
      return { id, removed: true } satisfies MethodResults['device-del'];
    }
    case 'device-list':
      only(params, []);
      return { devices: daemon.list() } satisfies MethodResults['device-list'];
    case 'device-stats': {
      only(params, ['id']);
      const id = idParam(params, false);
      try {
        return { devices: daemon.stats(id), process: processStats() } satisfies MethodResults['device-stats'];
      } catch (e) {
        throw failed(e);
      }
    }
    case 'set-limits': {
      const id = idParam(params, true)!;
      for (const k of ['memory', 'openFiles']) {
        if (params[k] !== undefined) {
          throw new RpcError(RpcCode.invalidParams, `params.${k}: cannot change while the device runs (it is fixed when the plugin is instantiated): device-del and device-add the device with the new limit`, {
            field: `params.${k}`,
          });
        }
      }
      only(params, ['id', 'callDeadlineMs', 'cpuShare', ...THROTTLE_FIELDS]);
      const ms = params.callDeadlineMs;
      if (ms === undefined && params.cpuShare === undefined && THROTTLE_FIELDS.every((k) => params[k] === undefined)) {
        throw new RpcError(RpcCode.invalidParams, `params: nothing to set (give callDeadlineMs, cpuShare, ${THROTTLE_FIELDS.join(', ')})`, { field: 'params' });
      }
      try {
        // Every field is checked before anything changes, as a device's limits are (config.ts).
        let throttle;
        let share;
        let deadline;
        try {
          deadline = ms === undefined ? undefined : callDeadline(ms, 'params.callDeadlineMs');
          throttle = parseThrottle(params, (k) => `params.${k}`, daemon.throttleOf(id)) ?? undefined;
          share = params.cpuShare === undefined ? undefined : cpuShare(params.cpuShare, 'params.cpuShare');
        } catch (e) {
          if (e instanceof ConfigError) throw new RpcError(RpcCode.invalidParams, e.message, { field: e.field });
          throw e;
        }
        return { id, limits: daemon.setLimits(id, { callDeadlineMs: deadline, throttle, cpuShare: share }) } satisfies MethodResults['set-limits'];
      } catch (e) {
        throw failed(e);
      }
    }
    case 'plugin-upgrade': {
      only(params, ['id', 'plugin']);
      const id = idParam(params, true)!;
      const plugin = pluginParam(params);
      try {
        return (await daemon.upgrade(id, plugin)) satisfies MethodResults['plugin-upgrade'];
      } catch (e) {
        throw failed(e);
      }
    }
    case 'log-level': {
      only(params, ['level']);
      const level = params.level;
      if (typeof level !== 'string' || !isLogLevel(level)) {
        throw new RpcError(RpcCode.invalidParams, `params.level: must be one of ${LOG_LEVELS.join(', ')}`, { field: 'params.level' });
      }
      const previous = getLogLevel();
      setLogLevel(level);
      return { level, previous } satisfies MethodResults['log-level'];
    }
    default:
      throw new RpcError(RpcCode.methodNotFound, `no method "${method}" (methods: ${METHODS.join(', ')})`);
  }
}
