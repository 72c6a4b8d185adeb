// Drives a device's handle() one request at a time the way the runner does, without rings:
// the request's prefix and lengths go in, the answer is checked by the host's own answer checks
// (host/device/answer-check.ts) and run by the host's synchronous executor against the device's
// real backing table (a share's files, a --storage store), and the writable area comes back.
// An I/O failure goes back to the device as an io-failed event, as the runner does.
import type { DeviceAction, DeviceEvent, DeviceRequest, Piece, VirtioDevice } from '../../host/device/device.ts';
import { checkActions, describeViolation } from '../../host/device/answer-check.ts';
import type { IoOp } from '../../host/io/executor.ts';
import { SyncExecutor } from '../../host/io/sync-executor.ts';
import type { BackingTable } from '../../host/io/backing-table.ts';

export interface Completed {
  /** The writable area up to the used length. */
  readonly data: Buffer;
  /** The errno of a failed first answer (0 when its I/O succeeded). */
  readonly ioErrno: number;
}

let nextId = 1;

function answerOf(actions: DeviceAction[], id: number) {
  const a = actions.find((x) => x.kind === 'answer' && x.answer.id === id);
  if (!a || a.kind !== 'answer') throw new Error(`request ${id} was not answered (actions: ${JSON.stringify(actions.map((x) => x.kind))})`);
  return a.answer;
}

function check(actions: DeviceAction[], req: DeviceRequest, table: BackingTable): void {
  const v = checkActions(actions, {
    due: new Map([[req.id, { readableLen: req.readableLen, writableLen: req.writableLen }]]),
    held: new Map(),
    backing: (i) => table.get(i),
  });
  if (v) throw new Error(`the host would refuse this answer: ${describeViolation(v, actions)}`);
}

/** One request through handle(), its answer run; a failed I/O answered again through io-failed. */
export function runRequest(dev: VirtioDevice, table: BackingTable, readable: Uint8Array, writableLen: number, queue = 1): Completed {
  const id = nextId++;
  const prefix = readable.subarray(0, Math.min(readable.length, dev.info.prefixLen));
  const req: DeviceRequest = { id, queue, prefix: new Uint8Array(prefix), readableLen: readable.length, writableLen };
  const actions = dev.handle([{ kind: 'request', request: req } satisfies DeviceEvent]);
  check(actions, req, table);
  const out = Buffer.alloc(writableLen);
  const answer = answerOf(actions, id);
  // Transfers and ops first, then the reply's backing-reads, as the executor contract says.
  const ops: IoOp[] = [];
  for (const tr of answer.transfers) {
    ops.push({ kind: 'write', backing: tr.to.backing, offset: tr.to.offset, from: [readable.subarray(tr.source, tr.source + tr.to.len)] });
  }
  for (const op of answer.ops) {
    ops.push(op.kind === 'flush' ? { kind: 'flush', backing: op.backing } : { kind: op.kind, backing: op.backing, offset: op.offset, len: op.len });
  }
  let at = 0;
  let lastRead: { end: number; start: number } | null = null;
  const literal: [number, Piece][] = [];
  for (const p of answer.reply) {
    if (p.kind === 'backing-read') {
      ops.push({ kind: 'read', backing: p.extent.backing, offset: p.extent.offset, into: [out.subarray(at, at + p.extent.len)] });
      lastRead = { start: at, end: at + p.extent.len };
      at += p.extent.len;
    } else {
      literal.push([at, p]);
      if (p.kind === 'frame-read') throw new Error('plugin-requests: frame-read pieces need a network (test them through the host)');
      at += p.kind === 'bytes' ? p.bytes.length : p.len;
    }
  }
  let used = at;
  let errno = 0;
  // The runner's step before a request's I/O starts (runner.ts start): a transfer's backing
  // may drop a renamed security.capability first, its errno failing the request.
  for (const tr of answer.transfers) {
    if (tr.to.len === 0 || errno) continue;
    errno = table.get(tr.to.backing)?.beforeWrite?.() ?? 0;
  }
  if (!errno) {
    new SyncExecutor(table).submit(ops, answer.barrier, (r) => {
      errno = r.errno;
      if (!errno && lastRead && lastRead.end === at && r.lastReadBytes < lastRead.end - lastRead.start) used = lastRead.start + r.lastReadBytes;
    });
  }
  if (errno) {
    // Nothing of the first answer is written; the device answers again.
    const again = dev.handle([{ kind: 'io-failed', id, errno }]);
    const second = answerOf(again, id);
    const w = Buffer.alloc(writableLen);
    let o = 0;
    for (const p of second.reply) {
      if (p.kind !== 'bytes') throw new Error(`a second answer with a ${p.kind} piece`);
      w.set(p.bytes, o);
      o += p.bytes.length;
    }
    return { data: w.subarray(0, o), ioErrno: errno };
  }
  for (const [o, p] of literal) {
    if (p.kind === 'bytes') out.set(p.bytes, o);
    else if (p.kind === 'zeroes') out.fill(0, o, o + p.len);
  }
  if (answer.lengthAt !== null && used < at) out.writeUInt32LE(used, answer.lengthAt);
  return { data: out.subarray(0, used), ioErrno: 0 };
}
