// A TypeScript device whose every answer is chosen by the request: its first readable bytes
// (up to PREFIX, NUL-padded ASCII) are a command, the payload follows. It exercises the WIT 0.2
// data path from the device side: holds, io-failed round trips, transfers and backing reads,
// and each kind of answer the host must refuse (`bad <rule>`).
//
//   echo ...             the command bytes back, as one literal piece
//   hold                 held; answered by a later `release`
//   hold-write OFFSET    held; `release` answers it as `write OFFSET` (the payload read only then)
//   hold-read OFFSET LEN held; `release` answers it as `read OFFSET LEN` (its readable part not read again)
//   release              every held request answered (in hold order): "R", or a hold-write's
//                        write, or a hold-read's read; then this one with "released"
//   write OFFSET         the payload (readable bytes from PREFIX on) to backing 0 at OFFSET;
//                        reply: status byte 0 (OK), or 0xEE when the write failed (io-failed)
//   read OFFSET LEN      LEN bytes of backing 0 at OFFSET into the writable area
//   bad RULE             an answer breaking RULE (see BAD below); the host must fail the device
//   burn MS              runs MS ms of its thread's CPU in this call, then answers "burnt"
//
// Backing 0 is options.file (a raw file, opened read-write) or a 1 MiB memory disk; backing 1
// is a 64 KiB read-only memory disk.
import type { Answer, DeviceAction, DeviceEvent, DeviceFactory, DeviceRequest, Piece, Transfer, VirtioDevice } from '../../host/device/device.ts';
import { BackingTable, storageIoBacking } from '../../host/io/backing-table.ts';
import { MemoryBacking } from '../../host/storage/memory.ts';
import { FileBacking } from '../../host/storage/file.ts';
import { native } from '../../host/native/index.ts';
import { ownThreadId } from '../../host/device/thread-state.ts';

export const PREFIX = 32;
export const STATUS_OK = 0x00;
export const STATUS_IOERR = 0xee;

/** A command, NUL-padded to PREFIX bytes, as the first readable buffer of a request. */
export function command(text: string): Buffer {
  const b = Buffer.alloc(PREFIX);
  b.write(text, 'latin1');
  return b;
}

const answer = (id: number, reply: Piece[], transfers: Transfer[] = [], extra: Partial<Answer> = {}): DeviceAction => ({
  kind: 'answer',
  answer: { id, transfers, ops: [], reply, lengthAt: null, barrier: false, ...extra },
});
const bytes = (s: string | number[]): Piece => ({ kind: 'bytes', bytes: typeof s === 'string' ? Buffer.from(s, 'latin1') : new Uint8Array(s) });

/** Each hostile answer, by the rule it breaks. */
const BAD: Record<string, (r: DeviceRequest, table: BackingTable) => DeviceAction[]> = {
  'piece-past-writable': (r) => [answer(r.id, [{ kind: 'zeroes', len: r.writableLen + 1 }])],
  'transfer-outside-readable': (r) => [answer(r.id, [bytes([0])], [{ source: r.readableLen - 1, to: { backing: 0, offset: 0, len: 2 } }])],
  'extent-past-backing': (r, t) => [answer(r.id, [{ kind: 'backing-read', extent: { backing: 0, offset: t.get(0)!.size - 1, len: 2 } }])],
  'write-read-only': (r) => [answer(r.id, [bytes([0])], [{ source: 0, to: { backing: 1, offset: 0, len: 1 } }])],
  'backing-not-granted': (r) => [answer(r.id, [{ kind: 'backing-read', extent: { backing: 7, offset: 0, len: 1 } }])],
  'unknown-id': (r) => [answer(r.id, [bytes('x')]), answer(r.id + 1000, [bytes('x')])],
  'duplicate-answer': (r) => [answer(r.id, [bytes('x')]), answer(r.id, [bytes('y')])],
  'missing-answer': () => [],
  'length-at-outside-reply': (r) => [answer(r.id, [bytes([0, 0])], [], { lengthAt: 0 })],
  'too-many-pieces': (r) => [answer(r.id, Array.from({ length: 2000 }, () => ({ kind: 'skip', len: 0 })))],
  'send-without-network': (r) => [answer(r.id, [bytes('x')]), { kind: 'send', send: { network: 0, request: r.id, source: 0, len: 60, to: null } }],
};
export const BAD_RULES = Object.keys(BAD);

const factory: DeviceFactory = (raw) => {
  const o = raw as { file?: string };
  const disk = o.file ? FileBacking.open(o.file, false) : new MemoryBacking(1 << 20, false);
  const backings = new BackingTable(storageIoBacking(disk));
  backings.register(storageIoBacking(new MemoryBacking(64 * 1024, true)));
  /** Held requests in hold order: a plain hold, a write of its payload (readable bytes past PREFIX) to backing 0, or a read of backing 0. */
  let held: { id: number; write: { offset: number; len: number } | null; read?: { offset: number; len: number } }[] = [];
  const write = (id: number, offset: number, len: number): DeviceAction => answer(id, [bytes([STATUS_OK])], [{ source: PREFIX, to: { backing: 0, offset, len } }]);
  const read = (id: number, offset: number, len: number): DeviceAction => answer(id, [{ kind: 'backing-read', extent: { backing: 0, offset, len } }]);

  const one = (r: DeviceRequest): DeviceAction[] => {
    const text = Buffer.from(r.prefix).toString('latin1').replace(/\0+$/, '');
    const [cmd, ...args] = text.split(' ');
    switch (cmd) {
      case 'hold':
        held.push({ id: r.id, write: null });
        return [{ kind: 'hold', id: r.id }];
      case 'hold-write':
        held.push({ id: r.id, write: { offset: Number(args[0]), len: r.readableLen - PREFIX } });
        return [{ kind: 'hold', id: r.id }];
      case 'hold-read':
        held.push({ id: r.id, write: null, read: { offset: Number(args[0]), len: Number(args[1]) } });
        return [{ kind: 'hold', id: r.id }];
      case 'release': {
        const out = held.map((h) => (h.read ? read(h.id, h.read.offset, h.read.len) : h.write === null ? answer(h.id, [bytes('R')]) : write(h.id, h.write.offset, h.write.len)));
        held = [];
        out.push(answer(r.id, [bytes('released')]));
        return out;
      }
      case 'write':
        return [write(r.id, Number(args[0]), r.readableLen - PREFIX)];
      case 'read':
        return [read(r.id, Number(args[0]), Number(args[1]))];
      case 'burn': {
        const tid = ownThreadId();
        const until = native.threadCpuNs(tid) + Number(args[0]) * 1e6;
        while (native.threadCpuNs(tid) < until) {
          // CPU, not wall clock: what the host's meter reads for a long call
        }
        return [answer(r.id, [bytes('burnt')])];
      }
      case 'bad': {
        const make = BAD[args[0]];
        if (!make) throw new Error(`script device: no bad answer ${args[0]}`);
        return make(r, backings);
      }
      default:
        return [answer(r.id, [{ kind: 'bytes', bytes: r.prefix.slice(0, Math.min(text.length, r.writableLen)) }])];
    }
  };

  const dev: VirtioDevice & { backings: BackingTable } = {
    backings,
    info: { deviceId: 2, name: 'script-test', numQueues: 1, maxQueueSize: 256, features: 0n, configSize: 4, prefixLen: PREFIX, queuesIndependent: false },
    readConfig: (_offset, size) => new Uint8Array(size),
    writeConfig: () => {},
    activate: () => {},
    reset: () => {
      held = [];
    },
    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      const out: DeviceAction[] = [];
      for (const e of events) {
        if (e.kind === 'request') out.push(...one(e.request));
        // The second answer to a failed write: only its status byte.
        else if (e.kind === 'io-failed') out.push(answer(e.id, [bytes([STATUS_IOERR])]));
      }
      return out;
    },
    getState: () => ({ bytes: new Uint8Array(0), remaining: 0 }),
    setState: () => {},
    finishLoad: () => null,
    close: () => disk.close(),
  };
  return dev;
};

export default factory;
