// The base of every error class the host raises, and how an error crosses a thread boundary.
// Each class carries a stable `code` (docs/errors.md lists them): logs, the management surface
// and tests match on the code, never on message text, which may be reworded at any time.

/** What a property of an error may hold to survive the trip to another thread unchanged. */
type Primitive = string | number | boolean | bigint | null | undefined;

export interface VhostWasmErrorOptions {
  cause?: unknown;
  /** Facts about the failure for logs and tools (a queue index, a plugin name, ...). */
  details?: Record<string, Primitive>;
}

/** A class that extends VhostWasmError: `static override readonly code = 'ERR_...'`. */
export interface VhostWasmErrorClass {
  readonly code: string;
  /** Every code its instances may carry, when more than `code` (PluginError: one per kind). */
  readonly codes?: readonly string[];
  readonly prototype: VhostWasmError;
}

export class VhostWasmError extends Error {
  /** Overridden by every subclass; the base code is never thrown on its own. */
  static readonly code: string = 'ERR_VHOST_WASM';
  static readonly codes?: readonly string[];
  override name = 'VhostWasmError';
  /** Set only when given, so an error without details prints without the key. */
  declare readonly details?: Record<string, Primitive>;

  constructor(message: string, options?: VhostWasmErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    if (options?.details !== undefined) Object.defineProperty(this, 'details', { value: options.details, enumerable: true });
  }

  /** The stable code of this error's class (see docs/errors.md). */
  get code(): string {
    return (this.constructor as unknown as VhostWasmErrorClass).code;
  }
}

/** The stable code of any error: a VhostWasmError's, a Node system error's ('EBADF'), or undefined. */
export function errorCode(e: unknown): string | undefined {
  if (e instanceof VhostWasmError) return e.code;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** An error for a log line: its message, then its code when it has one ("... [ERR_PLUGIN_LOAD]"). */
export function describeError(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  const code = errorCode(e);
  return code === undefined ? message : `${message} [${code}]`;
}

// --- across a thread boundary ------------------------------------------------------------------

/** An error as it crosses between threads (structured-cloneable, no class needed to read it). */
export interface SerializedError {
  /** The class's stable code, or a system error's code; absent for a plain Error. */
  code?: string;
  name: string;
  message: string;
  /** The error's own primitive properties (QueueFault's queue, PluginError's kind, ...). */
  props?: Record<string, Primitive>;
  details?: Record<string, Primitive>;
  cause?: SerializedError;
  /** Where it was thrown, in the other thread: what a bug report needs. */
  stack?: string;
}

/** How deep a chain of causes is carried: a cycle or a pathological chain stops here. */
const MAX_CAUSE_DEPTH = 4;

export function serializeError(e: unknown, depth = 0): SerializedError {
  if (!(e instanceof Error)) return { name: 'Error', message: String(e) };
  const out: SerializedError = { name: e.name, message: e.message };
  if (typeof e.stack === 'string') out.stack = e.stack;
  const code = errorCode(e);
  if (code !== undefined) out.code = code;
  const props: Record<string, Primitive> = {};
  for (const [k, v] of Object.entries(e)) {
    if (k === 'name' || k === 'message' || k === 'stack' || k === 'code' || k === 'cause' || k === 'details') continue;
    if (v === null || ['string', 'number', 'boolean', 'bigint', 'undefined'].includes(typeof v)) props[k] = v as Primitive;
  }
  if (Object.keys(props).length > 0) out.props = props;
  if (e instanceof VhostWasmError && e.details !== undefined) out.details = { ...e.details };
  if (e.cause !== undefined && depth < MAX_CAUSE_DEPTH) out.cause = serializeError(e.cause, depth + 1);
  return out;
}

/**
 * Rebuilds an error on this thread: an instance of the class in `classes` whose code matches
 * (instanceof works, its properties are back), else a plain Error carrying the name and code.
 * The class's constructor is not run (subclasses take different arguments, and the message is
 * final): Error's is, with the class as new.target, so the result is a real Error of that class.
 */
export function deserializeError(s: SerializedError, classes: readonly VhostWasmErrorClass[]): Error {
  const cls = s.code === undefined ? undefined : classes.find((c) => c.code === s.code || c.codes?.includes(s.code!));
  const e: Error = cls ? (Reflect.construct(Error, [s.message], cls as unknown as NewableFunction) as Error) : new Error(s.message);
  for (const [k, v] of Object.entries(s.props ?? {})) {
    Object.defineProperty(e, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  const own = (k: string, value: unknown) => Object.defineProperty(e, k, { value, enumerable: false, writable: true, configurable: true });
  own('message', s.message);
  own('name', s.name);
  // The stack of this thread would point at the reply handler; the other thread's says where.
  own('stack', s.stack ?? `${s.name}: ${s.message}\n    (thrown in another thread)`);
  if (cls && s.details !== undefined) {
    Object.defineProperty(e, 'details', { value: s.details, enumerable: true });
  } else if (!cls && s.code !== undefined) {
    Object.defineProperty(e, 'code', { value: s.code, enumerable: true, writable: true, configurable: true });
  }
  if (s.cause !== undefined) own('cause', deserializeError(s.cause, classes));
  return e;
}
