// The daemon's configuration (`vhost-wasm serve --config FILE`, and the `device-add` request of
// the management API, which takes one device in the same shape). JSON, validated field by
// field: every error names the field ("devices[2].grants.storage") and says why, and the whole
// file is checked before anything starts, so a bad file never leaves a daemon half up.
//
// No schema library is installed in this project (no ajv, zod or TOML parser), so the checks
// are written out here; they mirror the single-device command line's flags one to one, and
// reuse its size and grant parsers so the two cannot drift apart.

import { checkPluginOptions, type PluginOptions } from '../plugin/plugin-options.ts';
import { dirname, isAbsolute, resolve } from 'node:path';
import { VhostWasmError } from '../errors.ts';
import { isLogFormat, isLogLevel, LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../log/logger.ts';
import { MAX_QUEUE_THREADS, parseSize, parseStorage, parseSharedDir, parseNetworks, parseNetworkRate, UsageError } from '../cli/args.ts';
import type { StorageSpec } from '../storage/backing.ts';
import type { FilesystemSpec } from '../fs/option.ts';
import { STATE_PIPE_SIZE } from '../migration/channel.ts';
import { MetricsAddressError, parseMetricsAddress, type MetricsAddress } from '../metrics/address.ts';
import { DEFAULT_CPU_SHARE, MAX_CPU_SHARE, MIN_CPU_SHARE } from '../limits/cpu-share.ts';
import { defaultBurst, MAX_BYTES_PER_SECOND, MAX_IOPS, NO_THROTTLE, type ThrottleLimits } from '../limits/token-bucket.ts';

export class ConfigError extends VhostWasmError {
  static override readonly code = 'ERR_CONFIG';
  override name = 'ConfigError';
  constructor(
    /** The field at fault, as a path into the document: `devices[1].limits.memory`. */
    readonly field: string,
    why: string,
  ) {
    super(`${field}: ${why}`, { details: { field } });
  }
}

/** Where a device listens: a socket path we create, an inherited fd, or a systemd socket by name. */
export type ListenSpec = { path: string } | { fd: number } | { systemd: string };

export interface DeviceSpec {
  /** Unique in the daemon: the management API's handle and the log's label. */
  id: string;
  /** Who the device belongs to (for listings, logs and, later, shared limits). */
  tenant: string | null;
  listen: ListenSpec;
  /** A WebAssembly plugin, or (development, tests) a JavaScript device module. */
  device: { plugin: string } | { module: string };
  grants: {
    entropy: boolean;
    storage: StorageSpec | null;
    filesystem: FilesystemSpec | null;
    /** Networks of the daemon's switch the device joins, in grant order (--network). */
    network: string[];
  };
  /** openFiles: most host fds the device's shared directory may hold (null: only the process-wide budget). */
  /** cpuShare: CPUs the device may want on average before its threads are demoted (host/limits/cpu-share.ts). */
  limits: { memoryLimitBytes: number; callDeadlineMs: number; openFiles: number | null; throttle: ThrottleLimits | null; cpuShare: number; networkRate?: ThrottleLimits };
  /**
   * A throttle group (per tenant): devices naming the same group share one I/O budget. Null:
   * the device has its own. throttle null with a group: it takes the group's limits.
   */
  throttleGroup: string | null;
  migration: { stateReturnMemfd: boolean; experimentalRfcStateShm: boolean; statePipeBytes: number };
  /** --queue-threads: worker threads for a device with independent queues (1: one thread). */
  queueThreads: number;
  /** "options": what the plugin's `options.get` answers (--plugin-option). */
  pluginOptions: PluginOptions;
  /** When its worker starts (null: the daemon's default, DaemonConfig.start). */
  start: StartMode | null;
}

/**
 * When a device's worker thread starts: "eager" at device-add (a plugin that traps in its start
 * is refused there; the first connection finds the device built), "on-connect" when its first
 * front-end connects (an idle device costs its socket and config; the plugin is checked at
 * device-add without running it: host/plugin/precheck.ts).
 */
export type StartMode = 'eager' | 'on-connect';
export const START_MODES: readonly StartMode[] = ['eager', 'on-connect'];
/** See docs/BENCHMARKS.md, "Starting devices on their first connection", for why. */
export const DEFAULT_START: StartMode = 'on-connect';

function startMode(v: unknown, field: string): StartMode {
  const s = str(v, field);
  if (!(START_MODES as readonly string[]).includes(s)) throw new ConfigError(field, `"${s}" is not one of ${START_MODES.map((m) => `"${m}"`).join(', ')}`);
  return s as StartMode;
}

export interface DaemonConfig {
  /** The management socket, if any. */
  control: { path: string } | { systemd: string } | null;
  logLevel: LogLevel | null;
  logFormat: LogFormat | null;
  /** Where the Prometheus metrics are served, if anywhere (opt-in). */
  metrics: MetricsAddress | null;
  /** Device worker threads kept booted for device-add (host/device/spare-workers.ts). */
  spareWorkers: number;
  /** When a device that does not say ("start") starts its worker. */
  start: StartMode;
  devices: DeviceSpec[];
}

/** Spare worker threads by default: two adds in a row both find one; each costs ~11 MiB while it waits. */
export const DEFAULT_SPARE_WORKERS = 2;
const MAX_SPARE_WORKERS = 16;

/** Ids and tenants: what appears in logs and socket listings, so nothing that needs quoting. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const NAME_RULE = '1-64 characters of letters, digits, ".", "_" or "-", starting with a letter or digit';

type Obj = Record<string, unknown>;

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `a ${typeof v} (${JSON.stringify(v)})`;
}

function object(v: unknown, field: string, allowed: readonly string[]): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(field, `must be an object, not ${typeName(v)}`);
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) {
      throw new ConfigError(field === '' ? k : `${field}.${k}`, `unknown field (allowed here: ${allowed.join(', ')})`);
    }
  }
  return v as Obj;
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string') throw new ConfigError(field, `must be a string, not ${typeName(v)}`);
  if (v === '') throw new ConfigError(field, 'is empty');
  if (v.includes('\0')) throw new ConfigError(field, 'contains a NUL byte');
  return v;
}

function bool(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') throw new ConfigError(field, `must be true or false, not ${typeName(v)}`);
  return v;
}

function int(v: unknown, field: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new ConfigError(field, `must be a whole number, not ${typeName(v)}`);
  if (v < min || v > max) throw new ConfigError(field, `${v} is out of range (${min}..${max})`);
  return v;
}

function name(v: unknown, field: string): string {
  const s = str(v, field);
  if (!NAME.test(s)) throw new ConfigError(field, `"${s}" is not a valid name (${NAME_RULE})`);
  return s;
}

/** A CPU share: a fraction of one CPU, more than 0 (0.5: half a CPU; 2: two). */
export function cpuShare(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(field, `must be a number of CPUs (0.5: half of one), not ${typeName(v)}`);
  if (v < MIN_CPU_SHARE || v > MAX_CPU_SHARE) throw new ConfigError(field, `${v} is out of range (${MIN_CPU_SHARE}..${MAX_CPU_SHARE} CPUs)`);
  return v;
}

/** A size: a number of bytes, or a string such as "64M" (the command line's syntax). */
function size(v: unknown, field: string): number {
  if (typeof v === 'number') return int(v, field, 1);
  return asConfigError(field, () => parseSize(str(v, field), field));
}

/** Runs a command-line parser, turning its UsageError (which names a flag) into one naming the field. */
function asConfigError<T>(field: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof UsageError) throw new ConfigError(field, e.message.replace(/^[^:]*: /, ''));
    throw e;
  }
}

/** Paths in a config file are relative to the file's directory; over the control socket, absolute only. */
export type PathBase = { dir: string } | 'absolute-only';

function path(v: unknown, field: string, base: PathBase): string {
  const p = str(v, field);
  if (isAbsolute(p)) return p;
  if (base === 'absolute-only') throw new ConfigError(field, `"${p}" is relative: give an absolute path (the daemon's working directory is not yours)`);
  return resolve(base.dir, p);
}

/** The I/O throttle's fields, in a device's "limits" and in set-limits. */
export const THROTTLE_FIELDS = ['iops', 'iopsBurst', 'bytesPerSecond', 'bytesBurst'] as const;
/** Bounds that keep the token arithmetic exact in a double; far beyond any device. */
const DEVICE_FIELDS = ['id', 'tenant', 'socket', 'fd', 'systemd', 'plugin', 'module', 'grants', 'limits', 'migration', 'queueThreads', 'throttleGroup', 'options', 'start'] as const;
const GRANT_FIELDS = ['entropy', 'storage', 'direct', 'sharedDir', 'tag', 'xattr', 'readOnly', 'migrationOnError', 'network', 'inodeFileHandles', 'cache', 'translateUid', 'translateGid', 'xattrmap'] as const;
const LIMIT_FIELDS = ['memory', 'callDeadlineMs', 'openFiles', 'cpuShare', 'networkRate', ...THROTTLE_FIELDS] as const;
const MIGRATION_FIELDS = ['stateReturnMemfd', 'experimentalRfcStateShm', 'statePipeSize'] as const;


/**
 * The throttle fields of `o` (a device's "limits", or set-limits' params), over `base` (the
 * limits in force; NO_THROTTLE for a new device). Null when `o` has none of them. A rate of 0
 * lifts that limit; a rate given without its burst gets the default burst (a tenth of a second).
 */
export function parseThrottle(o: Obj, field: (k: string) => string, base: ThrottleLimits = NO_THROTTLE): ThrottleLimits | null {
  if (THROTTLE_FIELDS.every((k) => o[k] === undefined)) return null;
  const rate = (k: 'iops' | 'bytesPerSecond', max: number): number => {
    const v = o[k];
    if (v === undefined) return k === 'iops' ? base.iops : base.bytesPerSecond;
    if (v === 0 || v === '0') return 0;
    const n = k === 'iops' ? int(v, field(k), 0, max) : size(v, field(k));
    if (n > max) throw new ConfigError(field(k), `${n} is out of range (0..${max})`);
    return n;
  };
  const iops = rate('iops', MAX_IOPS);
  const bytesPerSecond = rate('bytesPerSecond', MAX_BYTES_PER_SECOND);
  const burst = (k: 'iopsBurst' | 'bytesBurst', r: number, rateField: string, old: number, oldRate: number): number => {
    const v = o[k];
    if (v === undefined) return r === oldRate && old > 0 ? old : defaultBurst(r);
    if (r === 0) throw new ConfigError(field(k), `is a burst of "${rateField}", which is not limited: give "${rateField}" too`);
    const n = k === 'iopsBurst' ? int(v, field(k), 1, MAX_IOPS * 60) : size(v, field(k));
    if (n < r / 1000) throw new ConfigError(field(k), `${n} is less than a millisecond's worth of "${rateField}" (${Math.ceil(r / 1000)}): the bucket could never fill`);
    return n;
  };
  return {
    iops,
    iopsBurst: burst('iopsBurst', iops, 'iops', base.iopsBurst, base.iops),
    bytesPerSecond,
    bytesBurst: burst('bytesBurst', bytesPerSecond, 'bytesPerSecond', base.bytesBurst, base.bytesPerSecond),
  };
}

/** The most fds one share may be allowed (the share's own ceiling, host/fs/share.ts). */
const MAX_OPEN_FILES = 65536;

/** The longest call deadline accepted (a minute: beyond that a hung plugin is never noticed). */
export const MAX_CALL_DEADLINE_MS = 60_000;

/** One device, at `field` ("devices[0]", or "params" for device-add). */
export function parseDeviceSpec(v: unknown, field: string, base: PathBase): DeviceSpec {
  const o = object(v, field, DEVICE_FIELDS);
  const f = (k: string) => `${field}.${k}`;
  if (o.id === undefined) throw new ConfigError(f('id'), 'missing: every device needs an id (its name in logs and in the management API)');
  const id = name(o.id, f('id'));
  const tenant = o.tenant === undefined ? null : name(o.tenant, f('tenant'));

  const listens = (['socket', 'fd', 'systemd'] as const).filter((k) => o[k] !== undefined);
  if (listens.length !== 1) {
    throw new ConfigError(
      field,
      listens.length === 0
        ? 'nowhere to listen: give "socket" (a path), "fd" (an inherited listening socket) or "systemd" (a socket-activation name)'
        : `give one place to listen, not ${listens.join(' and ')}`,
    );
  }
  let listen: ListenSpec;
  if (o.socket !== undefined) listen = { path: path(o.socket, f('socket'), base) };
  else if (o.fd !== undefined) {
    if (base === 'absolute-only') throw new ConfigError(f('fd'), 'an fd cannot be handed over the management API: give "socket"');
    listen = { fd: int(o.fd, f('fd'), 0) };
  } else {
    if (base === 'absolute-only') throw new ConfigError(f('systemd'), 'socket activation applies at start-up only: give "socket"');
    listen = { systemd: name(o.systemd, f('systemd')) };
  }

  if ((o.plugin === undefined) === (o.module === undefined)) {
    throw new ConfigError(field, o.plugin === undefined ? 'no device: give "plugin" (a .wasm file)' : '"plugin" and "module" are exclusive: give one device');
  }
  const device = o.plugin !== undefined ? { plugin: path(o.plugin, f('plugin'), base) } : { module: path(o.module, f('module'), base) };

  const g = o.grants === undefined ? {} : object(o.grants, f('grants'), GRANT_FIELDS);
  const gf = (k: string) => `${f('grants')}.${k}`;
  const readOnly = g.readOnly === undefined ? false : bool(g.readOnly, gf('readOnly'));
  const direct = g.direct === undefined ? false : bool(g.direct, gf('direct'));
  const xattr = g.xattr === undefined ? false : bool(g.xattr, gf('xattr'));
  let storage: StorageSpec | null = null;
  if (g.storage !== undefined) {
    const text = str(g.storage, gf('storage'));
    // "memory:SIZE" as on the command line; anything else is a path.
    const spec = asConfigError(gf('storage'), () => parseStorage(text.startsWith('memory:') ? text : path(text, gf('storage'), base), readOnly, direct));
    storage = spec;
  } else if (g.direct !== undefined) throw new ConfigError(gf('direct'), 'applies to "storage": give grants.storage too');
  let filesystem: FilesystemSpec | null = null;
  if (g.sharedDir !== undefined) {
    const dir = path(g.sharedDir, gf('sharedDir'), base);
    const tag = g.tag === undefined ? undefined : str(g.tag, gf('tag'));
    const onError = g.migrationOnError === undefined ? undefined : str(g.migrationOnError, gf('migrationOnError'));
    const optional = (k: 'inodeFileHandles' | 'cache' | 'xattrmap') => (g[k] === undefined ? undefined : str(g[k], gf(k)));
    const strings = (k: 'translateUid' | 'translateGid') => {
      const v = g[k];
      if (v === undefined) return undefined;
      if (!Array.isArray(v)) throw new ConfigError(gf(k), `must be a list of rules (virtiofsd's syntax, e.g. ["map:0:1000:1"]), not ${typeName(v)}`);
      return v.map((r, i) => str(r, `${gf(k)}[${i}]`));
    };
    const more = { cache: optional('cache'), translateUid: strings('translateUid'), translateGid: strings('translateGid'), xattrmap: optional('xattrmap') };
    // parseSharedDir's messages start with the command-line option they are about.
    const byOption: Record<string, string> = {
      '--tag': 'tag',
      '--migration-on-error': 'migrationOnError',
      '--inode-file-handles': 'inodeFileHandles',
      '--cache': 'cache',
      '--translate-uid': 'translateUid',
      '--translate-gid': 'translateGid',
      '--xattrmap': 'xattrmap',
    };
    const fieldOf = (msg: string) => gf(byOption[/^--[a-z-]+/.exec(msg)?.[0] ?? ''] ?? 'sharedDir');
    try {
      filesystem = parseSharedDir(dir, readOnly, tag, onError, xattr, optional('inodeFileHandles'), more);
    } catch (e) {
      if (e instanceof UsageError) throw new ConfigError(fieldOf(e.message), e.message.replace(/^[^:]*: /, ''));
      throw e;
    }
  } else {
    for (const k of ['tag', 'xattr', 'migrationOnError', 'inodeFileHandles', 'cache', 'translateUid', 'translateGid', 'xattrmap'] as const) {
      if (g[k] !== undefined) throw new ConfigError(gf(k), 'applies to "sharedDir": give grants.sharedDir too');
    }
  }
  if (storage && filesystem) throw new ConfigError(f('grants'), '"storage" and "sharedDir" are for different devices (blk, fs): give one');
  if (g.readOnly !== undefined && !storage && !filesystem) throw new ConfigError(gf('readOnly'), 'applies to "storage" or "sharedDir": give one of them too');
  const entropy = g.entropy === undefined ? false : bool(g.entropy, gf('entropy'));
  let network: string[] = [];
  if (g.network !== undefined) {
    if (!Array.isArray(g.network)) throw new ConfigError(gf('network'), 'must be a list of network names (["seg0"], or ["tap:IFNAME"])');
    try {
      network = parseNetworks(g.network as string[], gf('network'));
    } catch (e) {
      if (e instanceof UsageError) throw new ConfigError(gf('network'), e.message.replace(/^[^:]*: /, ''));
      throw e;
    }
  }
  if (storage && 'module' in device) throw new ConfigError(gf('storage'), 'is granted to "plugin" devices only');

  // The command line's defaults: a block device holds a whole batch of request data and takes
  // longer per call (see args.ts).
  const l = o.limits === undefined ? {} : object(o.limits, f('limits'), LIMIT_FIELDS);
  const limits = {
    memoryLimitBytes: l.memory === undefined ? (storage ? 256 : 64) * 2 ** 20 : size(l.memory, `${f('limits')}.memory`),
    callDeadlineMs: l.callDeadlineMs === undefined ? (storage ? 1000 : 100) : int(l.callDeadlineMs, `${f('limits')}.callDeadlineMs`, 1, MAX_CALL_DEADLINE_MS),
    openFiles: l.openFiles === undefined ? null : int(l.openFiles, `${f('limits')}.openFiles`, 1, MAX_OPEN_FILES),
    throttle: parseThrottle(l, (k) => `${f('limits')}.${k}`),
    cpuShare: l.cpuShare === undefined ? DEFAULT_CPU_SHARE : cpuShare(l.cpuShare, `${f('limits')}.cpuShare`),
    // "FRAMES" or "FRAMES:BYTES" per second, as --network-rate.
    ...(l.networkRate === undefined ? {} : { networkRate: asConfigError(`${f('limits')}.networkRate`, () => parseNetworkRate(str(l.networkRate, `${f('limits')}.networkRate`))) }),
  };
  if (limits.networkRate && network.length === 0) throw new ConfigError(`${f('limits')}.networkRate`, 'limits what a device sends on its networks: give grants.network too');
  const throttleGroup = o.throttleGroup === undefined ? null : name(o.throttleGroup, f('throttleGroup'));
  if (limits.openFiles !== null && filesystem === null) {
    throw new ConfigError(`${f('limits')}.openFiles`, 'limits the fds of a "sharedDir": give grants.sharedDir too (other devices hold a fixed few)');
  }
  if (filesystem && limits.openFiles !== null) filesystem = { ...filesystem, maxHandles: limits.openFiles };

  const m = o.migration === undefined ? {} : object(o.migration, f('migration'), MIGRATION_FIELDS);
  const mf = (k: string) => `${f('migration')}.${k}`;
  const migration = {
    stateReturnMemfd: m.stateReturnMemfd === undefined ? false : bool(m.stateReturnMemfd, mf('stateReturnMemfd')),
    experimentalRfcStateShm: m.experimentalRfcStateShm === undefined ? false : bool(m.experimentalRfcStateShm, mf('experimentalRfcStateShm')),
    statePipeBytes: m.statePipeSize === undefined ? STATE_PIPE_SIZE : m.statePipeSize === 0 || m.statePipeSize === '0' ? 0 : size(m.statePipeSize, mf('statePipeSize')),
  };

  const queueThreads = o.queueThreads === undefined ? 1 : int(o.queueThreads, f('queueThreads'), 1, MAX_QUEUE_THREADS);

  let pluginOptions: PluginOptions;
  try {
    pluginOptions = checkPluginOptions(o.options, f('options'));
  } catch (e) {
    throw new ConfigError(f('options'), (e as Error).message.replace(/^[^:]*: /, ''));
  }
  if (Object.keys(pluginOptions).length && 'module' in device) throw new ConfigError(f('options'), 'are given to "plugin" devices only');

  const start = o.start === undefined ? null : startMode(o.start, f('start'));

  return { id, tenant, listen, device, grants: { entropy, storage, filesystem, network }, limits, throttleGroup, migration, queueThreads, pluginOptions, start };
}

/** Two devices may not share an id, a socket path or an fd. */
export function checkUnique(devices: readonly DeviceSpec[], field: (i: number) => string): void {
  const seen = new Map<string, number>();
  devices.forEach((d, i) => {
    const keys = [`id ${d.id}`, 'path' in d.listen ? `socket ${d.listen.path}` : 'fd' in d.listen ? `fd ${d.listen.fd}` : `systemd ${d.listen.systemd}`];
    for (const k of keys) {
      const j = seen.get(k);
      if (j !== undefined) {
        const what = k.slice(0, k.indexOf(' '));
        throw new ConfigError(`${field(i)}.${what === 'id' ? 'id' : what}`, `${k.slice(what.length + 1)} is already used by ${field(j)}`);
      }
      seen.set(k, i);
    }
  });
}

/** A throttle group is a tenant's: its key in the daemon. */
export function throttleGroupKey(d: Pick<DeviceSpec, 'tenant' | 'throttleGroup'>): string | null {
  return d.throttleGroup === null ? null : `${d.tenant ?? ''}/${d.throttleGroup}`;
}

function sameThrottle(a: ThrottleLimits, b: ThrottleLimits): boolean {
  return a.iops === b.iops && a.iopsBurst === b.iopsBurst && a.bytesPerSecond === b.bytesPerSecond && a.bytesBurst === b.bytesBurst;
}

/**
 * The devices of one throttle group share one budget, so those that state limits must state the
 * same ones (the others take the group's). `known` holds groups that exist already (device-add).
 */
export function checkThrottleGroups(devices: readonly DeviceSpec[], field: (i: number) => string, known: ReadonlyMap<string, ThrottleLimits> = new Map()): void {
  const groups = new Map<string, { limits: ThrottleLimits; by: string }>();
  for (const [k, limits] of known) groups.set(k, { limits, by: `the group's current limits` });
  devices.forEach((d, i) => {
    const key = throttleGroupKey(d);
    if (key === null || d.limits.throttle === null) return;
    const g = groups.get(key);
    if (g && !sameThrottle(g.limits, d.limits.throttle)) {
      throw new ConfigError(
        `${field(i)}.limits`,
        `throttle group "${d.throttleGroup}"${d.tenant ? ` of tenant ${d.tenant}` : ''} is already limited to ${JSON.stringify(g.limits)} by ${g.by}: give the same limits or none (set-limits changes a whole group)`,
      );
    }
    if (!g) groups.set(key, { limits: d.limits.throttle, by: field(i) });
  });
}

/** The whole file. `file` is its path (relative paths in it are resolved against its directory). */
export function parseDaemonConfig(text: string, file: string): DaemonConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ConfigError('(file)', `${file} is not valid JSON: ${(e as Error).message}`);
  }
  const base: PathBase = { dir: dirname(resolve(file)) };
  const o = object(doc, '', ['control', 'logLevel', 'logFormat', 'metrics', 'spareWorkers', 'start', 'devices']);
  let control: DaemonConfig['control'] = null;
  if (o.control !== undefined) {
    if (typeof o.control === 'string') control = { path: path(o.control, 'control', base) };
    else {
      const c = object(o.control, 'control', ['path', 'systemd']);
      if ((c.path === undefined) === (c.systemd === undefined)) throw new ConfigError('control', 'give "path" or "systemd" (one)');
      control = c.path !== undefined ? { path: path(c.path, 'control.path', base) } : { systemd: name(c.systemd, 'control.systemd') };
    }
  }
  let logLevel: LogLevel | null = null;
  if (o.logLevel !== undefined) {
    const s = str(o.logLevel, 'logLevel');
    if (!isLogLevel(s)) throw new ConfigError('logLevel', `"${s}" is not one of ${LOG_LEVELS.join(', ')}`);
    logLevel = s;
  }
  let logFormat: LogFormat | null = null;
  if (o.logFormat !== undefined) {
    const s = str(o.logFormat, 'logFormat');
    if (!isLogFormat(s)) throw new ConfigError('logFormat', `"${s}" is not one of ${LOG_FORMATS.join(', ')}`);
    logFormat = s;
  }
  let metrics: MetricsAddress | null = null;
  if (o.metrics !== undefined) {
    const text = str(o.metrics, 'metrics');
    try {
      metrics = parseMetricsAddress(text);
    } catch (e) {
      if (e instanceof MetricsAddressError) throw new ConfigError('metrics', e.message);
      throw e;
    }
  }
  const spareWorkers = o.spareWorkers === undefined ? DEFAULT_SPARE_WORKERS : int(o.spareWorkers, 'spareWorkers', 0, MAX_SPARE_WORKERS);
  const start = o.start === undefined ? DEFAULT_START : startMode(o.start, 'start');
  if (o.devices === undefined) throw new ConfigError('devices', 'missing: list the devices to serve (it may be [] when "control" is given)');
  if (!Array.isArray(o.devices)) throw new ConfigError('devices', `must be an array, not ${typeName(o.devices)}`);
  const devices = o.devices.map((d, i) => parseDeviceSpec(d, `devices[${i}]`, base));
  if (devices.length === 0 && control === null) throw new ConfigError('devices', 'is empty and there is no "control" socket to add devices through: nothing to serve');
  checkUnique(devices, (i) => `devices[${i}]`);
  checkThrottleGroups(devices, (i) => `devices[${i}]`);
  return { control, logLevel, logFormat, metrics, spareWorkers, start, devices };
}
