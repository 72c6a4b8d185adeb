// Calls across a thread boundary, typed from one table of operations. The table names each
// operation with its signature (and which buffers it moves rather than copies); the client side
// gets a method per operation returning a typed promise, the server side dispatches to an object
// implementing the same signatures. Adding an operation is one line in the table plus its
// implementation: the compiler finds the implementation missing, and there is no switch or
// hand-written wrapper to keep in step. Errors cross as SerializedError and are rebuilt as
// their own class (see host/errors.ts).

import { deserializeError, serializeError, type SerializedError, type VhostWasmErrorClass } from '../errors.ts';

// Any function: the table narrows each entry to its own signature.
type Fn = (...args: any[]) => unknown;

/** One operation: its signature (a type only) and the buffers it moves to the other thread. */
export interface OpSpec<F extends Fn = Fn> {
  /** Buffers of the arguments to transfer (they become unusable to the caller). */
  transferArgs?: (...args: Parameters<F>) => ArrayBuffer[];
  /** Buffers of the result to transfer (the server must not keep them). */
  transferResult?: (result: Awaited<ReturnType<F>>) => ArrayBuffer[];
  /** Never set: carries F for the type of the table. */
  readonly signature?: F;
}

/** Declares an operation with signature F: `ringNum: op<(index: number, num: number) => void>()`. */
export function op<F extends Fn>(spec: Omit<OpSpec<F>, 'signature'> = {}): OpSpec<F> {
  return spec;
}

/**
 * A copy of `bytes` in an ArrayBuffer of its own, safe to transfer. Uint8Array's slice, not the
 * value's own: a Buffer's slice is a view, and transferring its buffer would detach the memory
 * the bytes came from (a device's state, a section, another thread's chunk).
 */
export function ownCopy(bytes: Uint8Array): Uint8Array {
  return Uint8Array.prototype.slice.call(bytes);
}

export type OpTable = Record<string, OpSpec>;

/** The operations of a table as an interface: `{ ringNum(index: number, num: number): void; ... }`. */
export type ApiOf<T extends OpTable> = { [K in keyof T]: T[K] extends OpSpec<infer F> ? F : never };

/** What the calling side sees: every operation answers with a promise of its result. */
export type Remote<A> = { [K in keyof A]: A[K] extends (...args: infer P) => infer R ? (...args: P) => Promise<Awaited<R>> : never };

/** What the serving side provides: every operation, synchronous or not. */
export type Implementation<A> = { [K in keyof A]: A[K] extends (...args: infer P) => infer R ? (...args: P) => R | Promise<Awaited<R>> : never };

/** caller -> server */
export interface RpcRequest {
  id: number;
  method: string;
  args: unknown[];
}

/** server -> caller */
export type RpcReply = { type: 'reply'; id: number; ok: true; value: unknown } | { type: 'reply'; id: number; ok: false; error: SerializedError };

/** Sends one request (with the buffers to move) and settles with the reply's value. */
export type Send = (method: string, args: unknown[], transfer: ArrayBuffer[]) => Promise<unknown>;

/** The calling side: one method per operation of the table, each going through `send`. */
export function remote<T extends OpTable>(ops: T, send: Send): Remote<ApiOf<T>> {
  const api: Record<string, (...args: unknown[]) => Promise<unknown>> = {};
  for (const [method, spec] of Object.entries(ops)) {
    api[method] = (...args: unknown[]) => send(method, args, spec.transferArgs?.(...args) ?? []);
  }
  return api as Remote<ApiOf<T>>;
}

/**
 * Gives `target` a method per operation (see remote). An operation named like one of target's
 * own members would silently replace it: that is refused, loudly, when the first one is built.
 */
export function installRemote<T extends OpTable>(target: object, ops: T, send: Send): void {
  const api = remote(ops, send);
  for (const name of Object.keys(api)) {
    if (name in target) throw new Error(`operation ${name} would replace ${target.constructor.name}.${name}: rename the operation`);
  }
  Object.assign(target, api);
}

/** Runs one request against `impl` and builds its reply, errors included (never throws). */
export async function serve<T extends OpTable>(ops: T, impl: Implementation<ApiOf<T>>, req: RpcRequest): Promise<{ reply: RpcReply; transfer: ArrayBuffer[] }> {
  try {
    if (!Object.hasOwn(ops, req.method)) throw new Error(`no operation named ${JSON.stringify(req.method)}`);
    const fn = (impl as Record<string, Fn>)[req.method];
    const value = await fn.apply(impl, req.args);
    return { reply: { type: 'reply', id: req.id, ok: true, value }, transfer: ops[req.method].transferResult?.(value) ?? [] };
  } catch (e) {
    return { reply: { type: 'reply', id: req.id, ok: false, error: serializeError(e) }, transfer: [] };
  }
}

/** The calling side's bookkeeping: requests awaiting their reply, by id. */
export class PendingCalls {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  constructor(private readonly errorClasses: readonly VhostWasmErrorClass[]) {}

  /** A new request; `post` sends it. */
  start(method: string, args: unknown[], post: (req: RpcRequest) => void): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      try {
        post({ id, method, args });
      } catch (e) {
        // Not sent (an argument that cannot be cloned): no reply will ever come.
        this.pending.delete(id);
        throw e;
      }
    });
  }

  /** Settles the request a reply answers (a reply to nothing, after rejectAll, is dropped). */
  settle(r: RpcReply): void {
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    if (r.ok) p.resolve(r.value);
    else p.reject(deserializeError(r.error, this.errorClasses));
  }

  /** The server is gone: every request still waiting fails with `error()`. */
  rejectAll(error: () => Error): void {
    for (const p of this.pending.values()) p.reject(error());
    this.pending.clear();
  }
}
