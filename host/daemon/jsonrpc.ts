// The management API's wire format: JSON-RPC 2.0 (https://www.jsonrpc.org/specification), one
// message per line (newline-delimited JSON) over the control socket. Requests take their
// parameters by name (an object). Batches are not served: one request per line.

import { VhostWasmError } from '../errors.ts';

export const JSONRPC = '2.0';

/** The specification's codes, and ours (-32000..-32099 is the range it leaves to servers). */
export const RpcCode = {
  parseError: -32700,
  invalidRequest: -32600,
  methodNotFound: -32601,
  invalidParams: -32602,
  internalError: -32603,
  /** The request was well formed but could not be done (no such device, its socket is taken, ...). */
  requestFailed: -32000,
  /** The peer is not allowed to manage this daemon (another uid). */
  permissionDenied: -32001,
} as const;

export type RequestId = string | number | null;

export interface RpcRequest {
  jsonrpc: typeof JSONRPC;
  method: string;
  params?: Record<string, unknown>;
  /** Absent: a notification, which gets no answer. */
  id?: RequestId;
}

export interface RpcErrorObject {
  code: number;
  message: string;
  /** For invalidParams: `field`; for requestFailed: the host error's stable `code` (docs/errors.md). */
  data?: { field?: string; code?: string };
}

export type RpcResponse = { jsonrpc: typeof JSONRPC; id: RequestId; result: unknown } | { jsonrpc: typeof JSONRPC; id: RequestId; error: RpcErrorObject };

/** A management request refused with a JSON-RPC error; thrown by method handlers, answered to the client. */
export class RpcError extends VhostWasmError {
  static override readonly code = 'ERR_CONTROL_REFUSED';
  override name = 'RpcError';
  constructor(
    readonly rpcCode: number,
    message: string,
    readonly data?: RpcErrorObject['data'],
  ) {
    super(message);
  }
}

/** The longest line accepted (a device-add is a few hundred bytes). */
export const MAX_MESSAGE_BYTES = 64 * 1024;

/**
 * One line as a request, or the error to answer it with (and the id to answer under, when one
 * could be read).
 */
export function parseRequest(line: string): RpcRequest | { error: RpcErrorObject; id: RequestId } {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (e) {
    return { id: null, error: { code: RpcCode.parseError, message: `not JSON: ${(e as Error).message}` } };
  }
  if (Array.isArray(v)) return { id: null, error: { code: RpcCode.invalidRequest, message: 'batches are not served: send one request per line' } };
  if (typeof v !== 'object' || v === null) return { id: null, error: { code: RpcCode.invalidRequest, message: 'a request is a JSON object' } };
  const o = v as Record<string, unknown>;
  const idOk = o.id === undefined || o.id === null || typeof o.id === 'string' || (typeof o.id === 'number' && Number.isFinite(o.id));
  const id: RequestId = idOk ? ((o.id as RequestId | undefined) ?? null) : null;
  const bad = (message: string) => ({ id, error: { code: RpcCode.invalidRequest, message } });
  if (!idOk) return bad('"id" must be a string, a number or null');
  if (o.jsonrpc !== JSONRPC) return bad('"jsonrpc" must be "2.0"');
  if (typeof o.method !== 'string' || o.method === '') return bad('"method" must be a non-empty string');
  for (const k of Object.keys(o)) if (!['jsonrpc', 'method', 'params', 'id'].includes(k)) return bad(`unknown member "${k}"`);
  if (o.params !== undefined && (typeof o.params !== 'object' || o.params === null || Array.isArray(o.params))) {
    return { id, error: { code: RpcCode.invalidParams, message: '"params" must be an object (parameters by name)' } };
  }
  return o as unknown as RpcRequest;
}
