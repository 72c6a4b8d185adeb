// The operator's settings for a plugin (--plugin-option KEY=VALUE; the daemon config's
// "options"): what the `options` import answers. Checked once where they enter (the CLI, the
// config file), so the import itself only looks a key up.
import { VhostWasmError } from '../errors.ts';

export type PluginOptions = Readonly<Record<string, string>>;

export const MAX_PLUGIN_OPTIONS = 64;
export const MAX_OPTION_VALUE_BYTES = 4096;
const KEY = /^[a-z0-9._-]{1,64}$/;

export class PluginOptionError extends VhostWasmError {
  static override readonly code = 'ERR_PLUGIN_OPTION';
  override readonly name = 'PluginOptionError';
}

/** Why `key` = `value` cannot be given to a plugin, or null. */
function problem(key: string, value: unknown): string | null {
  if (!KEY.test(key)) return `plugin option key "${key}" must be 1-64 of a-z 0-9 . _ -`;
  if (typeof value !== 'string') return `plugin option ${key}: the value must be a string, not ${JSON.stringify(value)}`;
  if (value.includes('\0')) return `plugin option ${key}: the value contains a NUL byte`;
  if (Buffer.byteLength(value) > MAX_OPTION_VALUE_BYTES) return `plugin option ${key}: the value is longer than ${MAX_OPTION_VALUE_BYTES} bytes`;
  return null;
}

/** Checks an options object (the daemon config's "options", a worker's init message). */
export function checkPluginOptions(value: unknown, where: string): PluginOptions {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new PluginOptionError(`${where}: plugin options must be an object of strings ({"mac": "52:54:00:00:00:01"})`);
  }
  const entries = Object.entries(value);
  if (entries.length > MAX_PLUGIN_OPTIONS) throw new PluginOptionError(`${where}: more than ${MAX_PLUGIN_OPTIONS} plugin options`);
  const out: Record<string, string> = Object.create(null);
  for (const [k, v] of entries) {
    const p = problem(k, v);
    if (p) throw new PluginOptionError(`${where}: ${p}`);
    out[k] = v as string;
  }
  return Object.freeze(out);
}

/** Repeated KEY=VALUE flags -> options; a key given twice is an error, not a silent override. */
export function parsePluginOptionFlags(flags: readonly string[], flag = '--plugin-option'): PluginOptions {
  const out: Record<string, string> = {};
  for (const text of flags) {
    const eq = text.indexOf('=');
    if (eq <= 0) throw new PluginOptionError(`${flag}: "${text}" is not KEY=VALUE`);
    const key = text.slice(0, eq);
    if (Object.hasOwn(out, key)) throw new PluginOptionError(`${flag}: ${key} given twice`);
    out[key] = text.slice(eq + 1);
  }
  return checkPluginOptions(out, flag);
}
