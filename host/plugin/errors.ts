// One error type for everything a plugin can do wrong, so callers (the worker, the
// session) can tell a misbehaving plugin from a host bug and name the culprit.

import { VhostWasmError } from '../errors.ts';

/**
 * - `load`: the bytes are not a usable plugin (not a component, wrong world/version).
 * - `trap`: the plugin's code trapped (or a host import it called failed); the instance
 *   is dead afterwards.
 * - `error`: the plugin answered with an error result (e.g. rejected a state).
 * - `invalid`: the plugin answered, but the answer breaks the contract (too many bytes,
 *   inconsistent state sizes, ...). The instance is treated as dead.
 */
export type PluginErrorKind = 'load' | 'trap' | 'error' | 'invalid';

/** The stable code of each kind (docs/errors.md). */
const PLUGIN_ERROR_CODES = {
  load: 'ERR_PLUGIN_LOAD',
  trap: 'ERR_PLUGIN_TRAP',
  error: 'ERR_PLUGIN_ERROR',
  invalid: 'ERR_PLUGIN_INVALID',
} as const satisfies Record<PluginErrorKind, string>;

export class PluginError extends VhostWasmError {
  static override readonly code = PLUGIN_ERROR_CODES.trap;
  static override readonly codes: readonly string[] = Object.values(PLUGIN_ERROR_CODES);
  override readonly name = 'PluginError';
  constructor(
    readonly plugin: string,
    readonly call: string,
    readonly kind: PluginErrorKind,
    /** The message without the "plugin X: call:" prefix. */
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`plugin ${plugin}: ${call}: ${detail}`, options);
  }

  /** One code per kind: a trap and a rejected state are different facts for a log reader. */
  override get code(): string {
    return PLUGIN_ERROR_CODES[this.kind];
  }
}
