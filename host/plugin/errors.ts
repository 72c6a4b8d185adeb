// One error type for everything a plugin can do wrong, so callers (the worker, the
// session) can tell a misbehaving plugin from a host bug and name the culprit.

/**
 * - `load`: the bytes are not a usable plugin (not a component, wrong world/version).
 * - `trap`: the plugin's code trapped (or a host import it called failed); the instance
 *   is dead afterwards.
 * - `error`: the plugin answered with an error result (e.g. rejected a state).
 * - `invalid`: the plugin answered, but the answer breaks the contract (too many bytes,
 *   inconsistent state sizes, ...). The instance is treated as dead.
 */
export type PluginErrorKind = 'load' | 'trap' | 'error' | 'invalid';

export class PluginError extends Error {
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
}
