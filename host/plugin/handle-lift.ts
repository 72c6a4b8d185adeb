// `handle`'s events and actions between the TypeScript seam (host/device/device.ts) and the
// values jco's glue lowers and lifts for wit/device.wit (variants as {tag, val}, u64 as
// bigint, option as undefined). The glue has already checked every list against the plugin's
// memory and the call's budget (lift-guard.ts); what is checked here is only the shape, so the
// answer checks (host/device/answer-check.ts) see numbers and kinds they can reason about.

import type { BackingOp, BackingOpKind, DeviceAction, DeviceEvent, Piece, Transfer } from '../device/device.ts';

export type WitEvent =
  | { tag: 'request'; val: { id: number; queue: number; prefix: Uint8Array; readableLen: number; writableLen: number } }
  | { tag: 'io-failed'; val: { id: number; errno: number } }
  | { tag: 'frame'; val: { id: number; network: number; fromPort: number; len: number; prefix: Uint8Array } }
  | { tag: 'timer'; val: bigint };

interface WitExtent {
  backing: number;
  offset: bigint;
  len: number;
}

export type WitAction =
  | {
      tag: 'answer';
      val: {
        id: number;
        transfers: { source: number; to: WitExtent }[];
        ops: { kind: BackingOpKind; backing: number; offset: bigint; len: bigint }[];
        reply: ({ tag: 'bytes'; val: Uint8Array } | { tag: 'backing-read'; val: WitExtent } | { tag: 'zeroes' | 'skip'; val: number } | { tag: 'frame-read'; val: { frame: number; offset: number; len: number } })[];
        lengthAt: number | undefined;
        barrier: boolean;
      };
    }
  | { tag: 'hold'; val: number }
  | { tag: 'send'; val: { network: number; request: number; source: number; len: number; to: number | undefined } }
  | { tag: 'wake-after'; val: [bigint, bigint] };

export function lowerEvents(events: readonly DeviceEvent[]): WitEvent[] {
  const out: WitEvent[] = new Array(events.length);
  for (let i = 0; i < events.length; i++) {
    const e = events[i];
    switch (e.kind) {
      case 'request':
        out[i] = { tag: 'request', val: e.request };
        break;
      case 'io-failed':
        out[i] = { tag: 'io-failed', val: { id: e.id, errno: e.errno } };
        break;
      case 'frame':
        out[i] = { tag: 'frame', val: e.frame };
        break;
      case 'timer':
        out[i] = { tag: 'timer', val: e.token };
        break;
    }
  }
  return out;
}

/**
 * u64 offsets as numbers: past 2^53 they lose precision but stay far past any backing, so the
 * extent checks still refuse them (with the range in the message).
 */
const num = (b: unknown): number => (typeof b === 'bigint' ? Number(b) : NaN);

function bad(what: string): never {
  throw new Error(`returned a malformed ${what}`);
}

function extent(e: WitExtent) {
  return { backing: e.backing, offset: num(e.offset), len: e.len };
}

export function liftActions(raw: unknown): DeviceAction[] {
  if (!Array.isArray(raw)) bad('result (not a list of actions)');
  const out: DeviceAction[] = new Array(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const a = raw[i] as WitAction;
    switch (a?.tag) {
      case 'answer': {
        const v = a.val;
        const transfers: Transfer[] = new Array(v.transfers.length);
        for (let k = 0; k < transfers.length; k++) {
          const t = v.transfers[k];
          transfers[k] = { source: t.source, to: extent(t.to) };
        }
        const ops: BackingOp[] = new Array(v.ops.length);
        for (let k = 0; k < ops.length; k++) {
          const o = v.ops[k];
          ops[k] = { kind: o.kind, backing: o.backing, offset: num(o.offset), len: num(o.len) };
        }
        const reply: Piece[] = new Array(v.reply.length);
        for (let k = 0; k < reply.length; k++) {
          const p = v.reply[k];
          switch (p.tag) {
            case 'bytes':
              reply[k] = { kind: 'bytes', bytes: p.val };
              break;
            case 'backing-read':
              reply[k] = { kind: 'backing-read', extent: extent(p.val) };
              break;
            case 'zeroes':
            case 'skip':
              reply[k] = { kind: p.tag, len: p.val };
              break;
            case 'frame-read':
              reply[k] = { kind: 'frame-read', slice: { frame: p.val.frame, offset: p.val.offset, len: p.val.len } };
              break;
            default:
              bad(`piece ${k} of action ${i}`);
          }
        }
        out[i] = { kind: 'answer', answer: { id: v.id, transfers, ops, reply, lengthAt: v.lengthAt ?? null, barrier: v.barrier } };
        break;
      }
      case 'hold':
        out[i] = { kind: 'hold', id: a.val };
        break;
      case 'send': {
        const v = a.val;
        out[i] = { kind: 'send', send: { network: v.network, request: v.request, source: v.source, len: v.len, to: v.to ?? null } };
        break;
      }
      case 'wake-after':
        out[i] = { kind: 'wake-after', nanoseconds: a.val[0], token: a.val[1] };
        break;
      default:
        bad(`action ${i}`);
    }
  }
  return out;
}
