// The daemon's configuration (`vhost-wasm serve --config FILE`: JSON, or TOML for a FILE ending
// in .toml; and the `device-add` request of the management API, which takes one device in the
// same shape). One schema checks it all: every error names the field as a path
// ("devices[2].grants.storage") and says why in plain words, and the whole document is checked
// before anything starts, so a bad file never leaves a daemon half up. The size, storage,
// shared-directory and network parsers are the single-device command line's (cli/args.ts), run
// from the schema's transforms, so the two cannot drift apart. docs/config.schema.json is the
// schema's input side as JSON Schema (configJsonSchema(); a test keeps the file current).
//
// The schema library is zod (4), not ajv with a hand-written JSON Schema: the schema is
// TypeScript, so what it returns is typed from it; its transforms run our own parsers in place
// (ajv validates, then a second pass would have to convert and check again); its issues carry
// the path we name fields by; and z.toJSONSchema gives the published JSON Schema from the same
// source instead of a second document to keep in step. TOML is read by smol-toml (TOML 1.0,
// errors with line and column).

import { z } from 'zod';
import { parse as parseToml, TomlError } from 'smol-toml';
import { checkPluginOptions, PluginOptionError, type PluginOptions } from '../plugin/plugin-options.ts';
import { dirname, extname, isAbsolute, resolve } from 'node:path';
import { VhostWasmError } from '../errors.ts';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../log/logger.ts';
import { MAX_QUEUE_THREADS, parseSize, parseStorage, parseSharedDir, parseNetworks, parseNetworkRate, UsageError } from '../cli/args.ts';
import type { StorageSpec } from '../storage/backing.ts';
import type { FilesystemSpec } from '../fs/option.ts';
import { STATE_PIPE_SIZE } from '../migration/channel.ts';
import { MetricsAddressError, parseMetricsAddress, type MetricsAddress } from '../metrics/address.ts';
import { DEFAULT_CPU_SHARE, MAX_CPU_SHARE, MIN_CPU_SHARE } from '../limits/cpu-share.ts';
import { defaultBurst, MAX_BYTES_PER_SECOND, MAX_IOPS, NO_THROTTLE, type ThrottleLimits } from '../limits/token-bucket.ts';
import { DEFAULT_POLL_MAX_NS, MAX_POLL_MAX_NS } from '../device/poll-window.ts';

export class ConfigError extends VhostWasmError {
  static override readonly code = 'ERR_CONFIG';
  override name = 'ConfigError';
  constructor(
    /** The field at fault, as a path into the document: `devices[1].limits.memory`. */
    readonly field: string,
    /** What is wrong with it, in plain words (the message is `field: why`). */
    readonly why: string,
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
  /** --poll-max-ns: adaptive polling of the device's rings before its worker waits for a kick (0: off). */
  pollMaxNs: number;
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
/** The most fds one share may be allowed (the share's own ceiling, host/fs/share.ts). */
const MAX_OPEN_FILES = 65536;
/** The longest call deadline accepted (a minute: beyond that a hung plugin is never noticed). */
export const MAX_CALL_DEADLINE_MS = 60_000;

/** Ids and tenants: what appears in logs and socket listings, so nothing that needs quoting. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const NAME_RULE = '1-64 characters of letters, digits, ".", "_" or "-", starting with a letter or digit';

// ---- Plain words for what is wrong ----------------------------------------------------------

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'bigint') return `a number too large (${v})`;
  // TOML has values JSON.stringify has no word for: it would print inf and nan as null, a date as an object.
  if (typeof v === 'number' && !Number.isFinite(v)) return `a number (${Number.isNaN(v) ? 'nan' : v > 0 ? 'inf' : '-inf'})`;
  if (v instanceof Date) return `a date-time (${Number.isNaN(v.getTime()) ? String(v) : v.toISOString()})`;
  return typeof v === 'object' ? 'an object' : `a ${typeof v} (${JSON.stringify(v)})`;
}

type RawIssue = { input?: unknown; code?: string };

/** An error map for one schema: "missing" (or `missing`) for an absent value, `why` otherwise. */
const wording =
  (why: (input: unknown) => string, missing = 'missing') =>
  (iss: RawIssue): string =>
    iss.input === undefined ? missing : why(iss.input);

/** Anything a schema below did not word itself (every leaf does; this is the net under them). */
function plainWords(iss: RawIssue): string {
  if (iss.input === undefined) return 'missing';
  return `is not valid here (${typeName(iss.input)})`;
}

/**
 * A problem found by a transform: where (relative to the schema that found it) and why. Thrown
 * inside a transform and always caught by checked(), which makes it one of the parse's issues:
 * it never leaves this module, so it is no Error class of the host's (docs/errors.md).
 */
class FieldIssue {
  constructor(
    readonly path: (string | number)[],
    readonly why: string,
  ) {}
}

/** What a command-line parser's message starts with to name its flag ("--cache: ", "--storage memory:SIZE: ", "size: "): the field is named instead. */
const FLAG_PREFIX = /^(?:--[a-z-]+(?: memory:SIZE)?|[a-z]+(?:\.[a-z]+)*): /i;

/** Runs a command-line parser: its UsageError (which names a flag) becomes a FieldIssue at `path`. */
function usage<T>(path: (string | number)[], fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof UsageError) throw new FieldIssue(path, e.message.replace(FLAG_PREFIX, ''));
    throw e;
  }
}

/** A transform whose FieldIssues become issues of the parse, at their path under the value transformed. */
function checked<I, O>(build: (input: I) => O) {
  return (input: I, ctx: z.RefinementCtx<I>): O => {
    try {
      return build(input);
    } catch (e) {
      if (e instanceof FieldIssue) {
        ctx.issues.push({ code: 'custom', path: e.path, message: e.why, input });
        return z.NEVER;
      }
      throw e;
    }
  };
}

// ---- Leaves ----------------------------------------------------------------------------------

/** A non-empty string without NUL bytes (paths, tags, rules). */
function text(missing?: string) {
  return z
    .string({ error: wording((v) => `must be a string, not ${typeName(v)}`, missing) })
    .min(1, { error: 'is empty' })
    .refine((s) => !s.includes('\0'), { error: 'contains a NUL byte' });
}

function name(missing?: string) {
  return text(missing).regex(NAME, { error: (iss) => `"${String(iss.input)}" is not a valid name (${NAME_RULE})` });
}

function bool() {
  return z.boolean({ error: wording((v) => `must be true or false, not ${typeName(v)}`) });
}

function int(min: number, max = Number.MAX_SAFE_INTEGER) {
  const range = (iss: RawIssue) => `${String(iss.input)} is out of range (${min}..${max})`;
  return z
    .int({ error: wording((v) => `must be a whole number, not ${typeName(v)}`) })
    .min(min, { error: range })
    .max(max, { error: range });
}

function oneOf<T extends string>(values: readonly T[], quoted: boolean) {
  const list = values.map((v) => (quoted ? `"${v}"` : v)).join(', ');
  return z.enum(values as unknown as [T, ...T[]], { error: wording((v) => (typeof v === 'string' ? `"${v}" is not one of ${list}` : `must be a string, not ${typeName(v)}`)) });
}

/**
 * A size: a number of bytes, or a string such as "64M" (the command line's syntax). `zero`: 0
 * (or "0") is allowed and means "none"; `max`: the largest accepted.
 */
function size(o: { zero?: boolean; max?: number } = {}) {
  const min = o.zero ? 0 : 1;
  const max = o.max ?? Number.MAX_SAFE_INTEGER;
  return z
    .union([z.number(), z.string()], { error: wording((v) => `must be a number of bytes or a size such as "64M", not ${typeName(v)}`) })
    .transform(
      checked((v: number | string): number => {
        if (o.zero && (v === 0 || (typeof v === 'string' && v.trim() === '0'))) return 0;
        if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new FieldIssue([], `must be a whole number of bytes, not ${typeName(v)}`);
        const n = typeof v === 'number' ? v : usage([], () => parseSize(v, 'size'));
        if (n < min || n > max) throw new FieldIssue([], `${n} is out of range (${min}..${max})`);
        return n;
      }),
    );
}

/** A CPU share: a fraction of one CPU, more than 0 (0.5: half a CPU; 2: two). */
const CPU_SHARE = z
  .number({ error: wording((v) => `must be a number of CPUs (0.5: half of one), not ${typeName(v)}`) })
  .min(MIN_CPU_SHARE, { error: (iss) => `${String(iss.input)} is out of range (${MIN_CPU_SHARE}..${MAX_CPU_SHARE} CPUs)` })
  .max(MAX_CPU_SHARE, { error: (iss) => `${String(iss.input)} is out of range (${MIN_CPU_SHARE}..${MAX_CPU_SHARE} CPUs)` });

const CALL_DEADLINE = int(1, MAX_CALL_DEADLINE_MS);

/** An object that takes only the fields of `shape`: anything else is named, with what is allowed. */
function fields<S extends z.core.$ZodLooseShape>(shape: S, what = 'an object') {
  const allowed = Object.keys(shape).join(', ');
  return z.strictObject(shape, {
    error: (iss: RawIssue) => (iss.code === 'unrecognized_keys' ? `unknown field (allowed here: ${allowed})` : iss.input === undefined ? 'missing' : `must be ${what}, not ${typeName(iss.input)}`),
  });
}

/** The I/O throttle's fields, in a device's "limits" and in set-limits. */
export const THROTTLE_FIELDS = ['iops', 'iopsBurst', 'bytesPerSecond', 'bytesBurst'] as const;
/** Bounds that keep the token arithmetic exact in a double; far beyond any device. */
const THROTTLE_LEAVES = {
  iops: int(0, MAX_IOPS).describe('requests per second (0: no limit)'),
  iopsBurst: int(1, MAX_IOPS * 60).describe('requests that may go at once after an idle spell (default: a tenth of a second\'s worth)'),
  bytesPerSecond: size({ zero: true, max: MAX_BYTES_PER_SECOND }).describe('request bytes per second, a number or a size such as "200M" (0: no limit)'),
  bytesBurst: size().describe('bytes that may go at once after an idle spell (default: a tenth of a second\'s worth)'),
};

// ---- The document's shape ----------------------------------------------------------------------

const rules = () =>
  z
    .array(text(), { error: wording((v) => `must be a list of rules (virtiofsd's syntax, e.g. ["map:0:1000:1"]), not ${typeName(v)}`) })
    .describe('id mapping rules, virtiofsd\'s syntax (["map:0:1000:1"])');

const GRANTS = fields({
  entropy: bool().optional().describe('the host\'s entropy source (--entropy)'),
  storage: text().optional().describe('a disk: a file or block device path, or "memory:SIZE" with ",prealloc=on" to commit its memory at start (--storage)'),
  direct: bool().optional().describe('O_DIRECT on the storage file (--direct)'),
  sharedDir: text().optional().describe('a directory shared with the guest (--shared-dir)'),
  tag: text().optional().describe('the virtio-fs mount tag (--tag)'),
  xattr: bool().optional().describe('extended attributes (--xattr)'),
  posixAcl: bool().optional().describe('POSIX ACLs, implies xattr (--posix-acl)'),
  readOnly: bool().optional().describe('the storage or shared directory read-only (--read-only)'),
  migrationOnError: text().optional().describe('"abort" or "guest-error" (--migration-on-error)'),
  network: z
    .array(text(), { error: wording(() => 'must be a list of network names (["seg0"], or ["tap:IFNAME"])') })
    .optional()
    .describe('networks of the daemon\'s switch the device joins, in order (--network repeated)'),
  inodeFileHandles: text().optional().describe('--inode-file-handles'),
  cache: text().optional().describe('--cache'),
  translateUid: rules().optional(),
  translateGid: rules().optional(),
  xattrmap: text().optional().describe('--xattrmap (with xattr)'),
});

const LIMITS = fields({
  memory: size().optional().describe('the plugin\'s memory limit, a number or a size such as "64M" (--memory-limit)'),
  callDeadlineMs: CALL_DEADLINE.optional().describe('CPU deadline of one call into the plugin, ms (--call-deadline)'),
  openFiles: int(1, MAX_OPEN_FILES).optional().describe('most host fds a sharedDir device may hold'),
  cpuShare: CPU_SHARE.optional().describe('CPUs\' worth of time in long calls (2 ms or more of CPU) and spinning on its rings (pollMaxNs) before the device is demoted (default 0.5)'),
  networkRate: text().optional().describe('"FRAMES" or "FRAMES:BYTES" per second sent on its networks (--network-rate)'),
  iops: THROTTLE_LEAVES.iops.optional(),
  iopsBurst: THROTTLE_LEAVES.iopsBurst.optional(),
  bytesPerSecond: THROTTLE_LEAVES.bytesPerSecond.optional(),
  bytesBurst: THROTTLE_LEAVES.bytesBurst.optional(),
});

const MIGRATION = fields({
  stateReturnMemfd: bool().optional(),
  experimentalRfcStateShm: bool().optional(),
  statePipeSize: size({ zero: true }).optional().describe('the device-state pipe\'s size (0: left as the kernel makes it)'),
});

const PLUGIN_OPTIONS = z
  .record(
    z.string(),
    z.string({ error: wording((v) => `must be a string, not ${typeName(v)}`) }),
    { error: wording(() => 'plugin options must be an object of strings ({"mac": "52:54:00:00:00:01"})') },
  )
  .describe('what the plugin\'s options.get answers (--plugin-option KEY=VALUE)');

/** One device as written (the file's "devices" entries, device-add's params). */
const DEVICE = fields({
  id: name('missing: every device needs an id (its name in logs and in the management API)').describe('the device\'s name in logs and in the management API'),
  tenant: name().optional().describe('who the device belongs to'),
  socket: text().optional().describe('the socket path it listens on'),
  fd: int(0).optional().describe('an inherited listening socket'),
  systemd: name().optional().describe('a socket passed by systemd with this FileDescriptorName='),
  plugin: text().optional().describe('the .wasm component'),
  module: text().optional().describe('a JavaScript device module (development)'),
  grants: GRANTS.optional(),
  limits: LIMITS.optional(),
  migration: MIGRATION.optional(),
  queueThreads: int(1, MAX_QUEUE_THREADS).optional().describe('worker threads for a device with independent queues (--queue-threads)'),
  pollMaxNs: int(0, MAX_POLL_MAX_NS).optional().describe(`ns the device's worker spins on its rings before waiting for a kick, adapting as QEMU's iothreads do (--poll-max-ns; 0: off, the default is ${DEFAULT_POLL_MAX_NS})`),
  throttleGroup: name().optional().describe('devices of one tenant naming the same group share one I/O budget'),
  options: PLUGIN_OPTIONS.optional(),
  start: oneOf(START_MODES, true).optional().describe('when its worker starts (default: the daemon\'s "start")'),
});
type DeviceInput = z.output<typeof DEVICE>;

/** The whole document, with `device` for each entry of "devices". */
function documentShape<D extends z.ZodType>(device: D) {
  return fields({
    control: z
      .union([text(), fields({ path: text().optional(), systemd: name().optional() })], {
        error: wording((v) => `must be a socket path or {"path": ...} or {"systemd": NAME}, not ${typeName(v)}`),
      })
      .optional()
      .describe('the management socket'),
    logLevel: oneOf(LOG_LEVELS, false).optional(),
    logFormat: oneOf(LOG_FORMATS, false).optional(),
    metrics: text().optional().describe('where Prometheus metrics are served: IP:PORT or unix:PATH'),
    spareWorkers: int(0, MAX_SPARE_WORKERS).optional().describe('device worker threads kept booted for device-add (default 2)'),
    start: oneOf(START_MODES, true).optional().describe('when a device\'s worker starts (default "on-connect")'),
    devices: z
      .array(device, { error: wording((v) => `must be an array, not ${typeName(v)}`, 'missing: list the devices to serve (it may be [] when "control" is given)') })
      .describe('the devices to serve'),
  });
}

/** The config file's JSON Schema (docs/config.schema.json): what a document may hold, before the checks that relate fields. */
export function configJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(documentShape(DEVICE), { io: 'input' });
  return { ...schema, title: 'vhost-wasm serve --config', description: 'The daemon\'s config file (README.md, "Operating a daemon"). Generated from host/daemon/config.ts.' };
}

// ---- From what is written to what the daemon runs --------------------------------------------

/** Paths in a config file are relative to the file's directory; over the control socket, absolute only. */
export type PathBase = { dir: string } | 'absolute-only';

function pathAt(at: (string | number)[], p: string, base: PathBase): string {
  if (isAbsolute(p)) return p;
  if (base === 'absolute-only') throw new FieldIssue(at, `"${p}" is relative: give an absolute path (the daemon's working directory is not yours)`);
  return resolve(base.dir, p);
}

/**
 * The throttle fields of `o` (a device's "limits", or set-limits' params), over `base` (the
 * limits in force; NO_THROTTLE for a new device). Null when `o` has none of them. A rate of 0
 * lifts that limit; a rate given without its burst gets the default burst (a tenth of a second).
 */
export function parseThrottle(o: Record<string, unknown>, field: (k: string) => string, base: ThrottleLimits = NO_THROTTLE): ThrottleLimits | null {
  if (THROTTLE_FIELDS.every((k) => o[k] === undefined)) return null;
  const given = (k: (typeof THROTTLE_FIELDS)[number]): number | undefined => (o[k] === undefined ? undefined : checkValue(THROTTLE_LEAVES[k], o[k], field(k)));
  const iops = given('iops') ?? base.iops;
  const bytesPerSecond = given('bytesPerSecond') ?? base.bytesPerSecond;
  const burst = (k: 'iopsBurst' | 'bytesBurst', r: number, rateField: string, old: number, oldRate: number): number => {
    const n = given(k);
    if (n === undefined) return r === oldRate && old > 0 ? old : defaultBurst(r);
    if (r === 0) throw new ConfigError(field(k), `is a burst of "${rateField}", which is not limited: give "${rateField}" too`);
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

/** A CPU share (set-limits' cpuShare), checked as a device's limits.cpuShare. */
export function cpuShare(v: unknown, field: string): number {
  return checkValue(CPU_SHARE, v, field);
}

/** A call deadline (set-limits' callDeadlineMs), checked as a device's limits.callDeadlineMs. */
export function callDeadline(v: unknown, field: string): number {
  return checkValue(CALL_DEADLINE, v, field);
}

/** The checks that relate a device's fields, and its defaults: the command line's (see args.ts). */
function buildDevice(o: DeviceInput, base: PathBase): DeviceSpec {
  const listens = (['socket', 'fd', 'systemd'] as const).filter((k) => o[k] !== undefined);
  if (listens.length !== 1) {
    throw new FieldIssue(
      [],
      listens.length === 0
        ? 'nowhere to listen: give "socket" (a path), "fd" (an inherited listening socket) or "systemd" (a socket-activation name)'
        : `give one place to listen, not ${listens.join(' and ')}`,
    );
  }
  let listen: ListenSpec;
  if (o.socket !== undefined) listen = { path: pathAt(['socket'], o.socket, base) };
  else if (o.fd !== undefined) {
    if (base === 'absolute-only') throw new FieldIssue(['fd'], 'an fd cannot be handed over the management API: give "socket"');
    listen = { fd: o.fd };
  } else {
    if (base === 'absolute-only') throw new FieldIssue(['systemd'], 'socket activation applies at start-up only: give "socket"');
    listen = { systemd: o.systemd! };
  }

  if ((o.plugin === undefined) === (o.module === undefined)) {
    throw new FieldIssue([], o.plugin === undefined ? 'no device: give "plugin" (a .wasm file)' : '"plugin" and "module" are exclusive: give one device');
  }
  const device = o.plugin !== undefined ? { plugin: pathAt(['plugin'], o.plugin, base) } : { module: pathAt(['module'], o.module!, base) };

  const g: NonNullable<DeviceInput['grants']> = o.grants ?? {};
  const gp = (k: string) => ['grants', k];
  const readOnly = g.readOnly ?? false;
  let storage: StorageSpec | null = null;
  if (g.storage !== undefined) {
    const text = g.storage;
    // "memory:SIZE" as on the command line; anything else is a path.
    storage = usage(gp('storage'), () => parseStorage(text.startsWith('memory:') ? text : pathAt(gp('storage'), text, base), readOnly, g.direct ?? false));
  } else if (g.direct !== undefined) throw new FieldIssue(gp('direct'), 'applies to "storage": give grants.storage too');
  let filesystem: FilesystemSpec | null = null;
  if (g.sharedDir !== undefined) {
    const dir = pathAt(gp('sharedDir'), g.sharedDir, base);
    // parseSharedDir's messages start with the command-line option they are about.
    const byOption: Record<string, string> = {
      '--tag': 'tag',
      '--migration-on-error': 'migrationOnError',
      '--inode-file-handles': 'inodeFileHandles',
      '--cache': 'cache',
      '--translate-uid': 'translateUid',
      '--translate-gid': 'translateGid',
      '--xattrmap': 'xattrmap',
      '--posix-acl': 'posixAcl',
    };
    try {
      filesystem = parseSharedDir(dir, readOnly, g.tag, g.migrationOnError, g.xattr ?? false, g.inodeFileHandles, {
        cache: g.cache,
        translateUid: g.translateUid,
        translateGid: g.translateGid,
        xattrmap: g.xattrmap,
        posixAcl: g.posixAcl,
      });
    } catch (e) {
      if (e instanceof UsageError) throw new FieldIssue(gp(byOption[/^--[a-z-]+/.exec(e.message)?.[0] ?? ''] ?? 'sharedDir'), e.message.replace(FLAG_PREFIX, ''));
      throw e;
    }
  } else {
    for (const k of ['tag', 'xattr', 'posixAcl', 'migrationOnError', 'inodeFileHandles', 'cache', 'translateUid', 'translateGid', 'xattrmap'] as const) {
      if (g[k] !== undefined) throw new FieldIssue(gp(k), 'applies to "sharedDir": give grants.sharedDir too');
    }
  }
  if (storage && filesystem) throw new FieldIssue(['grants'], '"storage" and "sharedDir" are for different devices (blk, fs): give one');
  if (g.readOnly !== undefined && !storage && !filesystem) throw new FieldIssue(gp('readOnly'), 'applies to "storage" or "sharedDir": give one of them too');
  const network = g.network === undefined ? [] : usage(gp('network'), () => parseNetworks(g.network!, 'grants.network'));
  if (storage && 'module' in device) throw new FieldIssue(gp('storage'), 'is granted to "plugin" devices only');

  // The command line's defaults: a block device holds a whole batch of request data and takes
  // longer per call (see args.ts).
  const l: NonNullable<DeviceInput['limits']> = o.limits ?? {};
  const lp = (k: string) => ['limits', k];
  let throttle: ThrottleLimits | null;
  try {
    throttle = parseThrottle(l, (k) => k);
  } catch (e) {
    if (e instanceof ConfigError) throw new FieldIssue(lp(e.field), e.why);
    throw e;
  }
  const networkRate = l.networkRate === undefined ? undefined : usage(lp('networkRate'), () => parseNetworkRate(l.networkRate!));
  if (networkRate && network.length === 0) throw new FieldIssue(lp('networkRate'), 'limits what a device sends on its networks: give grants.network too');
  const limits: DeviceSpec['limits'] = {
    memoryLimitBytes: l.memory ?? (storage ? 256 : 64) * 2 ** 20,
    callDeadlineMs: l.callDeadlineMs ?? (storage ? 1000 : 100),
    openFiles: l.openFiles ?? null,
    throttle,
    cpuShare: l.cpuShare ?? DEFAULT_CPU_SHARE,
    // "FRAMES" or "FRAMES:BYTES" per second, as --network-rate.
    ...(networkRate ? { networkRate } : {}),
  };
  if (limits.openFiles !== null && filesystem === null) {
    throw new FieldIssue(lp('openFiles'), 'limits the fds of a "sharedDir": give grants.sharedDir too (other devices hold a fixed few)');
  }
  if (filesystem && limits.openFiles !== null) filesystem = { ...filesystem, maxHandles: limits.openFiles };

  const m: NonNullable<DeviceInput['migration']> = o.migration ?? {};
  const migration = {
    stateReturnMemfd: m.stateReturnMemfd ?? false,
    experimentalRfcStateShm: m.experimentalRfcStateShm ?? false,
    statePipeBytes: m.statePipeSize ?? STATE_PIPE_SIZE,
  };

  let pluginOptions: PluginOptions;
  try {
    // The keys' rule and the values' length are the worker's own check (shared with --plugin-option).
    pluginOptions = checkPluginOptions(o.options, 'options');
  } catch (e) {
    if (e instanceof PluginOptionError) throw new FieldIssue(['options'], e.message.replace(/^[^:]*: /, ''));
    throw e;
  }
  if (Object.keys(pluginOptions).length && 'module' in device) throw new FieldIssue(['options'], 'are given to "plugin" devices only');

  return {
    id: o.id,
    tenant: o.tenant ?? null,
    listen,
    device,
    grants: { entropy: g.entropy ?? false, storage, filesystem, network },
    limits,
    throttleGroup: o.throttleGroup ?? null,
    migration,
    queueThreads: o.queueThreads ?? 1,
    pollMaxNs: o.pollMaxNs ?? DEFAULT_POLL_MAX_NS,
    pluginOptions,
    start: o.start ?? null,
  };
}

function deviceSchema(base: PathBase) {
  return DEVICE.transform(checked((o: DeviceInput) => buildDevice(o, base)));
}

/** `root` and a path from an issue as one field name: "devices[2].grants.storage". */
function fieldName(root: string, path: readonly PropertyKey[]): string {
  let out = root;
  for (const k of path) out += typeof k === 'number' ? `[${k}]` : out === '' ? String(k) : `.${String(k)}`;
  return out === '' ? '(document)' : out;
}

type Issue = z.core.$ZodIssue;

/** The issue to report: the first, and inside a union of types the one the value's type chose. */
function reported(issues: readonly Issue[]): { path: PropertyKey[]; issue: Issue } {
  const first = issues[0];
  if (first.code === 'invalid_union') {
    // The option whose type the value has is the one whose first issue is not its type.
    const chosen = first.errors.find((opt) => opt.length > 0 && !(opt[0].code === 'invalid_type' && opt[0].path.length === 0));
    if (chosen) {
      const inner = reported(chosen);
      return { path: [...first.path, ...inner.path], issue: inner.issue };
    }
  }
  return { path: [...first.path], issue: first };
}

/** A failed parse as the ConfigError naming its field: `root` is where the value sits ("", "params"). */
function configError(error: z.ZodError, root: string): ConfigError {
  const { path, issue } = reported(error.issues);
  if (issue.code === 'unrecognized_keys') path.push(issue.keys[0]);
  return new ConfigError(fieldName(root, path), issue.message);
}

/** Parses `v` with `schema`, or throws the ConfigError naming `field` (or the field in it at fault). */
function checkValue<S extends z.ZodType>(schema: S, v: unknown, field: string): z.output<S> {
  const r = schema.safeParse(v, { error: plainWords });
  if (!r.success) throw configError(r.error, field);
  return r.data;
}

/** One device, at `field` ("devices[0]", or "params" for device-add). */
export function parseDeviceSpec(v: unknown, field: string, base: PathBase): DeviceSpec {
  return checkValue(deviceSchema(base), v, field);
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
        throw new ConfigError(`${field(i)}.${what}`, `${k.slice(what.length + 1)} is already used by ${field(j)}`);
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

type DocumentInput = z.output<ReturnType<typeof documentShape<ReturnType<typeof deviceSchema>>>>;

/** The checks that relate the document's fields (run once every field is valid). */
function buildDaemonConfig(o: DocumentInput, base: PathBase): DaemonConfig {
  let control: DaemonConfig['control'] = null;
  if (typeof o.control === 'string') control = { path: pathAt(['control'], o.control, base) };
  else if (o.control !== undefined) {
    const c = o.control;
    if ((c.path === undefined) === (c.systemd === undefined)) throw new FieldIssue(['control'], 'give "path" or "systemd" (one)');
    control = c.path !== undefined ? { path: pathAt(['control', 'path'], c.path, base) } : { systemd: c.systemd! };
  }
  let metrics: MetricsAddress | null = null;
  if (o.metrics !== undefined) {
    try {
      metrics = parseMetricsAddress(o.metrics);
    } catch (e) {
      if (e instanceof MetricsAddressError) throw new FieldIssue(['metrics'], e.message);
      throw e;
    }
  }
  const devices = o.devices;
  if (devices.length === 0 && control === null) throw new FieldIssue(['devices'], 'is empty and there is no "control" socket to add devices through: nothing to serve');
  // These name their field whole ("devices[1].socket"): the document is the root.
  checkUnique(devices, (i) => `devices[${i}]`);
  checkThrottleGroups(devices, (i) => `devices[${i}]`);
  return {
    control,
    logLevel: o.logLevel ?? null,
    logFormat: o.logFormat ?? null,
    metrics,
    spareWorkers: o.spareWorkers ?? DEFAULT_SPARE_WORKERS,
    start: o.start ?? DEFAULT_START,
    devices,
  };
}

/** The document in `text`: TOML for a file named *.toml, JSON otherwise. */
function readDocument(text: string, file: string): unknown {
  if (extname(file).toLowerCase() === '.toml') {
    try {
      return parseToml(text);
    } catch (e) {
      if (e instanceof TomlError) throw new ConfigError('(file)', `${file} is not valid TOML: line ${e.line}, column ${e.column}: ${e.message.split('\n')[0].replace(/^Invalid TOML document: /, '')}`);
      throw e;
    }
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ConfigError('(file)', `${file} is not valid JSON: ${(e as Error).message}`);
  }
}

/** The whole file. `file` is its path (relative paths in it are resolved against its directory; *.toml is TOML). */
export function parseDaemonConfig(text: string, file: string): DaemonConfig {
  const base: PathBase = { dir: dirname(resolve(file)) };
  const schema = documentShape(deviceSchema(base)).transform(checked((o: DocumentInput) => buildDaemonConfig(o, base)));
  return checkValue(schema, readDocument(text, file), '');
}
