// The host's checks on what a device returns from handle() (docs/design/wit-0.2.md, "What the
// host checks"), made on the whole batch before any byte moves: a device that names a range
// outside the request or its backing, writes through a read-only grant, or answers what it was
// not asked is broken, and the runner fails it (NEEDS_RESET) with the index of the first bad
// action and the rule it broke; nothing of that batch is written.

import type { Answer, DeviceAction, Extent } from './device.ts';
import type { IoBacking } from '../io/backing-table.ts';

/** Pieces, transfers and ops one answer may hold: far above what blk or fs need (2-3). */
export const MAX_ENTRIES_PER_ANSWER = 1024;
/** Entries (actions, pieces, transfers, ops) one handle() result may hold per answerable request, plus a fixed allowance. */
export const MAX_ENTRIES_PER_REQUEST = 64;
export const ENTRY_ALLOWANCE = 1024;
/** Sends one result may hold per answerable request (a frame to a few chosen ports). */
export const MAX_SENDS_PER_REQUEST = 4;
/** wake-after actions one result may hold, and timers waiting per device. */
export const MAX_TIMERS = 64;
/** The longest wake-after: a day. */
export const MAX_WAKE_NS = 86_400n * 1_000_000_000n;
/** The shortest frame: an Ethernet header (destination, source, ethertype). */
export const MIN_FRAME = 14;
/** A frame on a network of MTU m is at most m + 14 (header) + 4 (one VLAN tag) bytes. */
export const FRAME_OVERHEAD = 18;
/** A growable backing (an fs file) is never addressed past 2^53 - 1 bytes (JavaScript's exact integers). */
const MAX_FILE_OFFSET = Number.MAX_SAFE_INTEGER;

/** The rules, as the log names them. */
export const Rule = {
  shape: 'the result is a list of well-formed actions',
  unknownId: 'an answer or hold names a request in flight that awaits one',
  duplicate: 'exactly one answer or hold per request',
  missing: 'every request and io-failed event of the call gets an answer or a hold',
  replyFits: 'the reply pieces fit the writable area (writable-len)',
  transferInside: 'transfers lie inside the readable part [0, readable-len)',
  extentInside: "extents lie inside the backing's size",
  readOnly: 'no transfer, discard or write-zeroes through a read-only backing',
  granted: 'a backing index the device was granted',
  bounds: 'counts under the per-batch bounds',
  lengthAt: 'length-at names 4 bytes inside the reply',
  frameRead: 'a frame-read names a frame of this call and a range inside it',
  sendRequest: 'a send names a request answered or held in this same result',
  sendRange: "a send's bytes lie inside the request's readable part",
  sendLength: "a send is 14 to the network's MTU + 18 bytes",
  sendNetwork: 'a send names a network the device was granted',
  timers: 'wake-after asks for at most 86,400 s, and at most 64 timers wait per device',
} as const;
export type Rule = (typeof Rule)[keyof typeof Rule];

export interface Violation {
  /** Index of the offending action in the result; -1 when the result as a whole is wrong. */
  readonly index: number;
  readonly rule: Rule;
  readonly detail: string;
}

/** A request that may be answered in this call, as far as the checks need it. */
export interface Answerable {
  readonly readableLen: number;
  readonly writableLen: number;
}

export interface CheckContext {
  /** Requests of this call's request and io-failed events: each needs exactly one answer or hold. */
  readonly due: ReadonlyMap<number, Answerable>;
  /** Requests held in earlier calls: each may be answered (or held again) at most once. */
  readonly held: ReadonlyMap<number, Answerable>;
  /** The device's backing at `index`, or undefined when it was not granted that index. */
  backing(index: number): IoBacking | undefined;
  /** Lengths of this call's frame events, by frame id (empty without frames). */
  readonly frameLens?: readonly number[];
  /** MTUs of the device's network grants, by index (empty without a grant). */
  readonly networkMtus?: readonly number[];
  /** Timers the device may still ask for (MAX_TIMERS less those waiting). */
  readonly timersFree?: number;
}

/** Violation text for the log: "action 3 (answer to request 7): <rule>: <detail>". */
export function describeViolation(v: Violation, actions: unknown): string {
  const a = Array.isArray(actions) ? (actions[v.index] as { kind?: unknown; answer?: { id?: unknown }; id?: unknown } | undefined) : undefined;
  let what = '';
  if (a?.kind === 'answer') what = ` (answer to request ${String(a.answer?.id)})`;
  else if (a?.kind === 'hold') what = ` (hold of request ${String(a.id)})`;
  else if (typeof a?.kind === 'string') what = ` (${a.kind})`;
  const where = v.index < 0 ? 'the result' : `action ${v.index}${what}`;
  return `${where} breaks the rule "${v.rule}": ${v.detail}`;
}

const isU32 = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
const isOffset = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 0;

/**
 * Checks every action of one handle() result; null when the batch may run. The first
 * violation found is returned (actions in order, then the requests left unanswered).
 */
export function checkActions(actions: unknown, ctx: CheckContext): Violation | null {
  if (!Array.isArray(actions)) return { index: -1, rule: Rule.shape, detail: `handle() returned ${typeof actions}, not a list of actions` };
  const answerable = ctx.due.size + ctx.held.size;
  const limit = ENTRY_ALLOWANCE + MAX_ENTRIES_PER_REQUEST * answerable;
  // Every answer or hold names a distinct request; sends and wake-afters are bounded apart.
  const most = answerable * (1 + MAX_SENDS_PER_REQUEST) + MAX_TIMERS;
  if (actions.length > most) {
    const v = firstBad(actions as unknown[], ctx);
    if (v !== null) return v;
    return { index: most, rule: Rule.bounds, detail: `${actions.length} actions for ${answerable} answerable request(s)` };
  }
  let entries = actions.length;
  let sends = 0;
  let timers = 0;
  const seen = new Set<number>();
  for (let i = 0; i < actions.length; i++) {
    const v = checkOne(actions[i] as DeviceAction, i, ctx, seen);
    if (v !== null) return v;
    const a = actions[i] as DeviceAction;
    if (a.kind === 'answer') entries += a.answer.reply.length + a.answer.transfers.length + a.answer.ops.length;
    else if (a.kind === 'send' && ++sends > MAX_SENDS_PER_REQUEST * answerable) {
      return { index: i, rule: Rule.bounds, detail: `more than ${MAX_SENDS_PER_REQUEST} sends per answerable request (${answerable})` };
    } else if (a.kind === 'wake-after' && ++timers > (ctx.timersFree ?? MAX_TIMERS)) {
      return { index: i, rule: Rule.timers, detail: `${timers} wake-afters with ${MAX_TIMERS - (ctx.timersFree ?? MAX_TIMERS)} timer(s) already waiting` };
    }
    if (entries > limit) return { index: i, rule: Rule.bounds, detail: `the result holds more than ${limit} entries (actions, pieces, transfers, ops) for ${answerable} answerable request(s)` };
  }
  for (const id of ctx.due.keys()) {
    if (!seen.has(id)) return { index: -1, rule: Rule.missing, detail: `request ${id} got neither an answer nor a hold` };
  }
  // A send's request must be answered or held in this result: only then are its bytes the
  // device's to send now (checked once every answer and hold is known).
  if (sends > 0) {
    for (let i = 0; i < actions.length; i++) {
      const a = actions[i] as DeviceAction;
      if (a.kind === 'send' && !seen.has(a.send.request)) {
        return { index: i, rule: Rule.sendRequest, detail: `request ${a.send.request} is neither answered nor held in this result` };
      }
    }
  }
  return null;
}

function checkSend(a: DeviceAction & { kind: 'send' }, i: number, ctx: CheckContext): Violation | null {
  const s = a.send;
  if (typeof s !== 'object' || s === null || !isU32(s.network) || !isU32(s.request) || !isU32(s.source) || !isU32(s.len) || (s.to !== null && !isU32(s.to))) {
    return { index: i, rule: Rule.shape, detail: 'send is malformed' };
  }
  const mtus = ctx.networkMtus ?? [];
  const mtu = mtus[s.network];
  if (mtu === undefined) return { index: i, rule: Rule.sendNetwork, detail: `network ${s.network}, and the device was granted ${mtus.length} (give --network NAME)` };
  if (s.len < MIN_FRAME || s.len > mtu + FRAME_OVERHEAD) {
    return { index: i, rule: Rule.sendLength, detail: `a ${s.len}-byte frame on a network of MTU ${mtu} (${MIN_FRAME} to ${mtu + FRAME_OVERHEAD} bytes)` };
  }
  const req = ctx.due.get(s.request) ?? ctx.held.get(s.request);
  if (req === undefined) return { index: i, rule: Rule.sendRequest, detail: `request ${s.request} is not in flight awaiting an answer` };
  if (s.source + s.len > req.readableLen) {
    return { index: i, rule: Rule.sendRange, detail: `readable bytes [${s.source}, ${s.source + s.len}) of a request with ${req.readableLen}` };
  }
  return null;
}

function checkWake(a: DeviceAction & { kind: 'wake-after' }, i: number): Violation | null {
  if (typeof a.nanoseconds !== 'bigint' || typeof a.token !== 'bigint' || a.nanoseconds < 0n || a.token < 0n || a.token >= 1n << 64n) {
    return { index: i, rule: Rule.shape, detail: 'wake-after is malformed' };
  }
  if (a.nanoseconds > MAX_WAKE_NS) return { index: i, rule: Rule.timers, detail: `wake-after of ${a.nanoseconds} ns` };
  return null;
}

/** The first per-action violation in a result that is too long anyway (a better message than "too many"). */
function firstBad(actions: unknown[], ctx: CheckContext): Violation | null {
  const seen = new Set<number>();
  for (let i = 0; i < actions.length; i++) {
    const v = checkOne(actions[i] as DeviceAction, i, ctx, seen);
    if (v !== null) return v;
  }
  return null;
}

function checkOne(a: DeviceAction, i: number, ctx: CheckContext, seen: Set<number>): Violation | null {
  if (typeof a !== 'object' || a === null) return { index: i, rule: Rule.shape, detail: `action is ${a === null ? 'null' : typeof a}` };
  switch (a.kind) {
    case 'hold':
      return claim(a.id, i, ctx, seen);
    case 'answer':
      return checkAnswer(a.answer, i, ctx, seen);
    case 'send':
      return checkSend(a, i, ctx);
    case 'wake-after':
      return checkWake(a, i);
    default:
      return { index: i, rule: Rule.shape, detail: `unknown action kind ${JSON.stringify((a as { kind?: unknown }).kind)}` };
  }
}

/** The request an answer or hold names, marked as taken in this call; or the violation. */
function claim(id: unknown, i: number, ctx: CheckContext, seen: Set<number>): Violation | null {
  if (!isU32(id)) return { index: i, rule: Rule.shape, detail: `request id ${String(id)} is not a u32` };
  if (seen.has(id)) return { index: i, rule: Rule.duplicate, detail: `request ${id} was already answered or held earlier in this result` };
  if (!ctx.due.has(id) && !ctx.held.has(id)) {
    return { index: i, rule: Rule.unknownId, detail: `request ${id} is not in flight awaiting an answer (never given, already answered, or its I/O is running)` };
  }
  seen.add(id);
  return null;
}

function checkAnswer(ans: Answer, i: number, ctx: CheckContext, seen: Set<number>): Violation | null {
  if (typeof ans !== 'object' || ans === null) return { index: i, rule: Rule.shape, detail: 'answer without a body' };
  const taken = claim(ans.id, i, ctx, seen);
  if (taken !== null) return taken;
  const req = (ctx.due.get(ans.id) ?? ctx.held.get(ans.id))!;
  const { transfers, ops, reply } = ans;
  if (!Array.isArray(transfers) || !Array.isArray(ops) || !Array.isArray(reply)) {
    return { index: i, rule: Rule.shape, detail: 'transfers, ops and reply must be lists' };
  }
  const n = transfers.length + ops.length + reply.length;
  if (n > MAX_ENTRIES_PER_ANSWER) return { index: i, rule: Rule.bounds, detail: `${n} pieces, transfers and ops in one answer (at most ${MAX_ENTRIES_PER_ANSWER})` };
  if (typeof ans.barrier !== 'boolean') return { index: i, rule: Rule.shape, detail: 'barrier is not a bool' };

  for (let k = 0; k < transfers.length; k++) {
    const t = transfers[k];
    if (typeof t !== 'object' || t === null || !isU32(t.source)) return { index: i, rule: Rule.shape, detail: `transfer ${k} is malformed` };
    const bad = extentProblem(t.to, 'transfer', k, i, ctx, true);
    if (bad !== null) return bad;
    if (t.source + t.to.len > req.readableLen) {
      return { index: i, rule: Rule.transferInside, detail: `transfer ${k} takes readable bytes [${t.source}, ${t.source + t.to.len}) of a request with ${req.readableLen}` };
    }
  }
  for (let k = 0; k < ops.length; k++) {
    const o = ops[k];
    if (typeof o !== 'object' || o === null || !isU32(o.backing) || !isOffset(o.offset) || !isOffset(o.len)) {
      return { index: i, rule: Rule.shape, detail: `op ${k} is malformed` };
    }
    if (o.kind !== 'flush' && o.kind !== 'discard' && o.kind !== 'write-zeroes') return { index: i, rule: Rule.shape, detail: `op ${k} has unknown kind ${JSON.stringify(o.kind)}` };
    const b = ctx.backing(o.backing);
    if (b === undefined) return { index: i, rule: Rule.granted, detail: `op ${k} (${o.kind}) names backing ${o.backing}, which the device was not granted` };
    if (o.kind === 'flush') continue;
    if (b.readOnly) return { index: i, rule: Rule.readOnly, detail: `op ${k} (${o.kind}) on read-only backing ${o.backing} (${b.describe})` };
    const end = o.offset + o.len;
    const max = b.growable ? MAX_FILE_OFFSET : b.size;
    if (end > max) return { index: i, rule: Rule.extentInside, detail: `op ${k} (${o.kind}) covers [${o.offset}, ${end}) of backing ${o.backing}, which has ${b.growable ? 'no bytes that far' : `${b.size} bytes`}` };
  }
  let used = 0;
  for (let k = 0; k < reply.length; k++) {
    const p = reply[k];
    let len: number;
    if (typeof p !== 'object' || p === null) return { index: i, rule: Rule.shape, detail: `piece ${k} is malformed` };
    switch (p.kind) {
      case 'bytes':
        if (!(p.bytes instanceof Uint8Array)) return { index: i, rule: Rule.shape, detail: `piece ${k} (bytes) holds no bytes` };
        len = p.bytes.length;
        break;
      case 'backing-read': {
        const bad = extentProblem(p.extent, 'piece', k, i, ctx, false);
        if (bad !== null) return bad;
        len = p.extent.len;
        break;
      }
      case 'frame-read': {
        const f = p.slice;
        if (typeof f !== 'object' || f === null || !isU32(f.frame) || !isU32(f.offset) || !isU32(f.len)) return { index: i, rule: Rule.shape, detail: `piece ${k} (frame-read) is malformed` };
        const flen = ctx.frameLens?.[f.frame];
        if (flen === undefined) return { index: i, rule: Rule.frameRead, detail: `piece ${k} reads frame ${f.frame}, and this call delivered ${ctx.frameLens?.length ?? 0} frame(s)` };
        if (f.offset + f.len > flen) return { index: i, rule: Rule.frameRead, detail: `piece ${k} reads bytes [${f.offset}, ${f.offset + f.len}) of frame ${f.frame}, which has ${flen}` };
        len = f.len;
        break;
      }
      case 'zeroes':
      case 'skip':
        if (!isU32(p.len)) return { index: i, rule: Rule.shape, detail: `piece ${k} (${p.kind}) has length ${String(p.len)}` };
        len = p.len;
        break;
      default:
        return { index: i, rule: Rule.shape, detail: `piece ${k} has unknown kind ${JSON.stringify((p as { kind?: unknown }).kind)}` };
    }
    used += len;
    if (used > req.writableLen) {
      return { index: i, rule: Rule.replyFits, detail: `pieces 0..${k} cover ${used} bytes of a request that can hold ${req.writableLen}` };
    }
  }
  if (ans.lengthAt !== null && ans.lengthAt !== undefined) {
    if (!isU32(ans.lengthAt) || ans.lengthAt + 4 > used) {
      return { index: i, rule: Rule.lengthAt, detail: `length-at ${String(ans.lengthAt)} with a ${used}-byte reply` };
    }
  }
  return null;
}

/** An extent of a transfer (a write: `writes`) or of a backing-read piece, checked against its backing. */
function extentProblem(e: Extent, what: 'transfer' | 'piece', k: number, i: number, ctx: CheckContext, writes: boolean): Violation | null {
  if (typeof e !== 'object' || e === null || !isU32(e.backing) || !isOffset(e.offset) || !isU32(e.len)) {
    return { index: i, rule: Rule.shape, detail: `${what} ${k}'s extent is malformed` };
  }
  const b = ctx.backing(e.backing);
  if (b === undefined) return { index: i, rule: Rule.granted, detail: `${what} ${k} names backing ${e.backing}, which the device was not granted` };
  if (writes && b.readOnly) return { index: i, rule: Rule.readOnly, detail: `${what} ${k} writes to read-only backing ${e.backing} (${b.describe})` };
  const end = e.offset + e.len;
  // A growable file: a read past its end comes back short (pread), a write extends it.
  if (b.growable ? end > MAX_FILE_OFFSET : end > b.size) {
    return { index: i, rule: Rule.extentInside, detail: `${what} ${k} covers [${e.offset}, ${end}) of backing ${e.backing} (${b.describe}), which has ${b.size} bytes` };
  }
  return null;
}
