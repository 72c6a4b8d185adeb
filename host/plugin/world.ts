// What this host speaks: the names in wit/device.wit as they appear in a component and
// in jco's generated glue. Kept in one place so a WIT version bump is one edit here.

export const WIT_PACKAGE = 'vhost:device';
export const WIT_VERSION = '0.2.0';
export const DEVICE_INTERFACE = `${WIT_PACKAGE}/device@${WIT_VERSION}`;

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
