// What this host speaks: the names in wit/device.wit as they appear in a component and
// in jco's generated glue. Kept in one place so a WIT version bump is one edit here.

export const WIT_PACKAGE = 'vhost:device';
/**
 * Every version a plugin may be built for, oldest first; the last is this host's own. 0.2.x
 * releases only add (each addition marked `@since` in wit/device.wit), so what a 0.2.0
 * component imports is a subset of what this host provides; a plugin of a newer 0.2.x may
 * import what this host lacks, and is refused (docs/plugin-abi.md, "Versioning").
 */
export const WIT_ACCEPTED = ['0.2.0', '0.2.1', '0.2.2'] as const;
export const WIT_VERSION = WIT_ACCEPTED[WIT_ACCEPTED.length - 1];
export const DEVICE_INTERFACE = `${WIT_PACKAGE}/device@${WIT_VERSION}`;
/** The device export's name for each accepted version. */
export const DEVICE_INTERFACES: readonly string[] = WIT_ACCEPTED.map((v) => `${WIT_PACKAGE}/device@${v}`);

/** Interfaces a plugin may import; each is granted (or stubbed to trap) per device. */
export const IMPORTABLE = ['log', 'entropy', 'storage', 'filesystem', 'network', 'options'] as const;
export type Importable = (typeof IMPORTABLE)[number];
/**
 * Interfaces of types only (no functions): a component that uses them (device uses `types`)
 * lists them among its imports, with nothing for the host to provide.
 */
export const TYPE_ONLY = ['types'] as const;

/** The device interface's functions, in jco's camelCase spelling. */
export const DEVICE_FUNCTIONS = [
  'identity',
  'info',
  'readConfig',
  'writeConfig',
  'activate',
  'reset',
  'handle',
  'getState',
  'setState',
  'finishLoad',
] as const;

/**
 * The cases of the WIT's `log.level` enum, as the glue lifts them. The host's own levels are
 * host/log's `LogLevel`; pluginLogLevel (imports.ts) maps one onto the other.
 */
export const WIT_LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace'] as const;
