// A TypeScript net device for testing the host's network path without the C plugin: queue 0
// holds rx buffers, queue 1 takes tx frames. It does what a virtio-net plugin does at its
// simplest (a 4-byte header instead of virtio-net's): a frame that arrives is read into the
// oldest held rx buffer behind the port it came from (u32 LE); a tx frame is checked by the
// device's own rules (14 to MTU + 14 bytes, else answered with status 1 and not sent) and sent
// to port NN when its destination MAC is 02:00:00:00:00:NN, else flooded.
//
// Frames of ethertype 0x88b5 (local experimental) carry commands instead, so a test can make
// the device misbehave on cue: "deaf" (never read a frame again; rx buffers stay held for
// ever), "bad-long" / "bad-range" / "bad-net" (a send the host must refuse), "bad-read" (a
// frame-read of a frame the call did not deliver), "bad-timers" (65 wake-afters), "timer N"
// (wake-after N ms, token N, answered in an rx buffer as "TIMER N"), "block" (wait inside
// handle() until the test clears options.gate[0], with gate[1] set meanwhile: the worker takes
// no frames then), "buffers" (every frame read from now on is followed in the rx buffer by the
// u32 LE size of the shared buffer the host handed its bytes in: what that frame keeps alive).
import type { DeviceAction, DeviceEvent, DeviceFactory, DeviceRequest, Frame, Piece, VirtioDevice } from '../../host/device/device.ts';

export const RX = 0;
export const TX = 1;
export const HEADER = 4;
export const PREFIX_LEN = 64;
export const COMMAND_ETHERTYPE = 0x88b5;
export const STATUS_SENT = 0;
export const STATUS_REFUSED = 1;

/** A frame to port `port` (02:00:00:00:00:port), or broadcast. */
export function frame(to: number | 'broadcast', payload: Uint8Array | string, from = 1): Uint8Array {
  const body = typeof payload === 'string' ? new TextEncoder().encode(payload) : payload;
  const f = new Uint8Array(14 + body.length);
  f.set(to === 'broadcast' ? [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] : [2, 0, 0, 0, 0, to], 0);
  f.set([2, 0, 0, 0, 1, from], 6);
  f.set([0x08, 0x00], 12);
  f.set(body, 14);
  return f;
}

export function command(text: string): Uint8Array {
  const f = frame('broadcast', text);
  f.set([COMMAND_ETHERTYPE >> 8, COMMAND_ETHERTYPE & 0xff], 12);
  return f;
}

const answer = (id: number, reply: Piece[]): DeviceAction => ({ kind: 'answer', answer: { id, transfers: [], ops: [], reply, lengthAt: null, barrier: false } });
const bytes = (b: Uint8Array | string): Piece => ({ kind: 'bytes', bytes: typeof b === 'string' ? new TextEncoder().encode(b) : b });
const u32 = (n: number) => new Uint8Array(new Uint32Array([n]).buffer);

const factory: DeviceFactory = (raw) => {
  const o = raw as { networks?: { mtu: number }[]; gate?: SharedArrayBuffer };
  const mtu = o.networks?.[0]?.mtu ?? 1500;
  const gate = o.gate ? new Int32Array(o.gate) : null;
  let rx: DeviceRequest[] = [];
  let deaf = false;
  let buffers = false;

  const tx = (r: DeviceRequest, out: DeviceAction[]): void => {
    const p = r.prefix;
    if (p.length >= 14 && ((p[12] << 8) | p[13]) === COMMAND_ETHERTYPE) {
      const [cmd, arg] = Buffer.from(p.subarray(14)).toString('latin1').replace(/\0+$/, '').split(' ');
      if (cmd === 'bad-read') {
        out.push(answer(r.id, [{ kind: 'frame-read', slice: { frame: 99, offset: 0, len: 1 } }]));
        return;
      }
      out.push(answer(r.id, [bytes(new Uint8Array([STATUS_SENT]))]));
      switch (cmd) {
        case 'deaf':
          deaf = true;
          return;
        case 'buffers':
          buffers = true;
          return;
        case 'bad-long':
          out.push({ kind: 'send', send: { network: 0, request: r.id, source: 0, len: mtu + 19, to: null } });
          return;
        case 'bad-range':
          out.push({ kind: 'send', send: { network: 0, request: r.id, source: 1, len: r.readableLen, to: null } });
          return;
        case 'bad-net':
          out.push({ kind: 'send', send: { network: 7, request: r.id, source: 0, len: r.readableLen, to: null } });
          return;
        case 'timer':
          out.push({ kind: 'wake-after', nanoseconds: BigInt(arg) * 1_000_000n, token: BigInt(arg) });
          return;
        case 'bad-timers':
          for (let i = 0; i < 65; i++) out.push({ kind: 'wake-after', nanoseconds: 1_000_000_000n, token: BigInt(i) });
          return;
        case 'block':
          // The test releases it: until then this worker takes no frames off its inbox.
          if (gate) {
            Atomics.store(gate, 1, 1);
            while (Atomics.load(gate, 0) !== 0) Atomics.wait(gate, 0, 1, 50);
            Atomics.store(gate, 1, 0);
          }
          return;
        default:
          throw new Error(`net test device: unknown command ${cmd}`);
      }
    }
    // The device's own rules, as a plugin must apply them before it asks the host to send.
    if (r.readableLen < 14 || r.readableLen > mtu + 14) {
      out.push(answer(r.id, [bytes(new Uint8Array([STATUS_REFUSED]))]));
      return;
    }
    const unicast = p[0] === 2 && p[1] === 0 && p[2] === 0 && p[3] === 0 && p[4] === 0;
    out.push({ kind: 'send', send: { network: 0, request: r.id, source: 0, len: r.readableLen, to: unicast ? p[5] : null } });
    out.push(answer(r.id, [bytes(new Uint8Array([STATUS_SENT]))]));
  };

  const deliver = (f: Frame, out: DeviceAction[]): void => {
    if (deaf) return;
    const i = rx.findIndex((b) => b.writableLen >= HEADER + f.len + (buffers ? 4 : 0));
    if (i < 0) return; // no room: the host drops it and counts it
    const [b] = rx.splice(i, 1);
    const read: Piece[] = [bytes(u32(f.fromPort)), { kind: 'frame-read', slice: { frame: f.id, offset: 0, len: f.len } }];
    if (buffers) read.push(bytes(u32(f.prefix.buffer.byteLength)));
    out.push(answer(b.id, read));
  };

  const dev: VirtioDevice = {
    info: { deviceId: 1, name: 'net-test', numQueues: 2, maxQueueSize: 256, features: 0n, configSize: 0, prefixLen: PREFIX_LEN, queuesIndependent: false },
    readConfig: (_offset, size) => new Uint8Array(size),
    writeConfig: () => {},
    activate: () => {},
    reset: () => {
      rx = [];
      deaf = false;
      buffers = false;
    },
    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      const out: DeviceAction[] = [];
      const fresh: DeviceRequest[] = [];
      for (const e of events) {
        if (e.kind === 'request') {
          if (e.request.queue === RX) {
            fresh.push(e.request);
            out.push({ kind: 'hold', id: e.request.id });
          } else tx(e.request, out);
        }
      }
      // Buffers of this call may take this call's frames: a hold and an answer of the same
      // request cannot share a result, so the fresh ones are held and the held ones answered.
      for (const e of events) {
        if (e.kind === 'frame') deliver(e.frame, out);
        else if (e.kind === 'timer') {
          const b = rx.shift();
          if (b) out.push(answer(b.id, [bytes(`TIMER ${e.token}`)]));
        }
      }
      rx.push(...fresh);
      return out;
    },
    getState: () => ({ bytes: new Uint8Array(0), remaining: 0 }),
    setState: () => {},
    finishLoad: () => null,
  };
  return dev;
};

export default factory;
