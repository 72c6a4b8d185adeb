// The virtio-net plugin (plugins/net) under the real loader and glue: what it offers and
// reports, how it fills rx buffers, checks and forwards tx frames, learns MACs, applies its
// policy option and carries its state. Frames are built byte by byte here, as a guest would.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPlugin, PluginError, type PluginDevice } from '../host/plugin/index.ts';
import type { Answer, DeviceAction, DeviceEvent, Send } from '../host/device/device.ts';
import { REPO } from './helpers/host-process.ts';
import { mac } from './helpers/mac.ts';

const NET = join(REPO, 'dist', 'plugins', 'net.wasm');
const cacheDir = mkdtempSync(join(tmpdir(), 'net-plugin-test-'));
let bytes: Buffer;
const HDR = 12;
const F = { MTU: 3, MAC: 5, MRG_RXBUF: 15, STATUS: 16 };
const bit = (b: number) => 1n << BigInt(b);
const MRG = bit(F.MRG_RXBUF);

test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'inherit' });
  bytes = readFileSync(NET);
});
test.after.always(() => rmSync(cacheDir, { recursive: true, force: true }));

interface Net {
  dev: PluginDevice;
  logs: string[];
}

async function load(options: Record<string, string> = {}, networks = [{ mtu: 1500 }]): Promise<Net> {
  const logs: string[] = [];
  const dev = await loadPlugin(bytes, { grants: { networks, options, log: (l, m) => logs.push(`${l}: ${m}`) }, cacheDir });
  return { dev, logs };
}

const A = '52:54:00:00:00:0a';
const B = '52:54:00:00:00:0b';
const C = '52:54:00:00:00:0c';
const BROADCAST = 'ff:ff:ff:ff:ff:ff';
const ip = (s: string) => Buffer.from(s.split('.').map(Number));

/** An Ethernet frame: IPv4 + TCP/UDP/ICMP headers, padded to `len` bytes. */
function ipFrame(o: { src: string; dst: string; srcIp: string; dstIp: string; proto: 'tcp' | 'udp' | 'icmp'; sport?: number; dport?: number; len?: number }): Buffer {
  const len = o.len ?? 100;
  const f = Buffer.alloc(len);
  mac(o.dst).copy(f, 0);
  mac(o.src).copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45;
  f.writeUInt16BE(len - 14, 16);
  f[23] = { tcp: 6, udp: 17, icmp: 1 }[o.proto];
  ip(o.srcIp).copy(f, 26);
  ip(o.dstIp).copy(f, 30);
  if (o.proto !== 'icmp') {
    f.writeUInt16BE(o.sport ?? 40000, 34);
    f.writeUInt16BE(o.dport ?? 5000, 36);
  }
  return f;
}

function arpFrame(src: string, srcIp: string, dstIp: string): Buffer {
  const f = Buffer.alloc(42);
  mac(BROADCAST).copy(f, 0);
  mac(src).copy(f, 6);
  f.writeUInt16BE(0x0806, 12);
  f.writeUInt16BE(1, 14);
  f.writeUInt16BE(0x0800, 16);
  f[18] = 6;
  f[19] = 4;
  f.writeUInt16BE(1, 20);
  mac(src).copy(f, 22);
  ip(srcIp).copy(f, 28);
  ip(dstIp).copy(f, 38);
  return f;
}

/** A tx chain as the guest writes it: the 12-byte virtio-net header, then the frame. */
function txPrefix(frame: Buffer, flags = 0, gso = 0): Buffer {
  const h = Buffer.alloc(HDR);
  h[0] = flags;
  h[1] = gso;
  return Buffer.concat([h, frame]);
}

let nextId = 1;
const tx = (frame: Buffer, flags = 0, gso = 0): DeviceEvent => {
  const whole = txPrefix(frame, flags, gso);
  return { kind: 'request', request: { id: nextId++, queue: 1, prefix: whole.subarray(0, 128), readableLen: whole.length, writableLen: 0 } };
};
const rxBuf = (writableLen: number): DeviceEvent => ({ kind: 'request', request: { id: nextId++, queue: 0, prefix: new Uint8Array(0), readableLen: 0, writableLen } });
let nextFrame = 1;
const frame = (bytes: Buffer, fromPort: number, network = 0): DeviceEvent => ({
  kind: 'frame',
  frame: { id: nextFrame++, network, fromPort, len: bytes.length, prefix: bytes.subarray(0, 128) },
});

const answers = (acts: DeviceAction[]) => acts.filter((a): a is Extract<DeviceAction, { kind: 'answer' }> => a.kind === 'answer').map((a) => a.answer);
const sends = (acts: DeviceAction[]) => acts.filter((a): a is Extract<DeviceAction, { kind: 'send' }> => a.kind === 'send').map((a) => a.send);
const holds = (acts: DeviceAction[]) => acts.filter((a) => a.kind === 'hold').map((a) => (a as { id: number }).id);
const idOf = (e: DeviceEvent) => (e.kind === 'request' ? e.request.id : -1);
const frameIdOf = (e: DeviceEvent) => (e.kind === 'frame' ? e.frame.id : -1);

/** Every tx request is answered with nothing written (used length 0). */
function answeredEmpty(t: ExecutionContext, acts: DeviceAction[], reqs: DeviceEvent[]): void {
  for (const r of reqs) {
    const a = answers(acts).find((x) => x.id === idOf(r));
    t.truthy(a, `tx request ${idOf(r)} answered`);
    t.deepEqual(a?.reply, [], 'nothing written to a tx chain');
  }
}

function rxHeader(a: Answer): Buffer {
  const p = a.reply[0];
  if (p?.kind !== 'bytes') throw new Error(`the first piece is ${p?.kind}, not the header bytes`);
  return Buffer.from(p.bytes);
}

test('offers virtio-net: id 1, rx/tx queues, MTU/MAC/MRG_RXBUF/STATUS and no offloads; config from options and the network', async (t) => {
  const { dev } = await load({ mac: '02:00:00:aa:bb:cc' }, [{ mtu: 9000 }]);
  t.deepEqual(dev.identity.name, 'net');
  t.like(dev.info, { deviceId: 1, numQueues: 2, configSize: 12, prefixLen: 128, queuesIndependent: false });
  t.is(dev.info.features, bit(F.MTU) | bit(F.MAC) | bit(F.MRG_RXBUF) | bit(F.STATUS));
  const cfg = Buffer.from(dev.readConfig(0, 12));
  t.is(cfg.subarray(0, 6).toString('hex'), '020000aabbcc');
  t.is(cfg.readUInt16LE(6), 1, 'status LINK_UP');
  t.is(cfg.readUInt16LE(8), 1, 'one queue pair');
  t.is(cfg.readUInt16LE(10), 9000, "the network's MTU");
  t.is(Buffer.from(dev.readConfig(6, 2)).readUInt16LE(0), 1, 'a partial read');
});

test('without a network, or with a bad mac or policy option, the plugin refuses to load and says why', async (t) => {
  for (const [options, networks, said] of [
    [{}, [], 'virtio-net needs a network to be a port of: grant one (--network NAME)'],
    [{ mac: '52:54:00:00:00' }, [{ mtu: 1500 }], 'option mac: not a MAC address (aa:bb:cc:dd:ee:ff): 52:54:00:00:00'],
    [{ mac: '01:00:5e:00:00:01' }, [{ mtu: 1500 }], 'option mac: a multicast address cannot be a device\'s: 01:00:5e:00:00:01'],
    [{ policy: 'allow any any; permit 10.0.0.1 any' }, [{ mtu: 1500 }], "option policy: policy rule 2: must start with allow or deny, not 'permit'"],
    [{ policy: 'allow 10.0.0.1:80 any icmp' }, [{ mtu: 1500 }], 'option policy: policy rule 1: a port needs protocol tcp or udp'],
    [{ policy: 'allow 10.0.0.300 any' }, [{ mtu: 1500 }], "option policy: policy rule 1: bad endpoint (any, aa:bb:cc:dd:ee:ff, IPV4[/BITS][:PORT] or *:PORT) '10.0.0.300'"],
  ] as const) {
    const logs: string[] = [];
    const err = await t.throwsAsync(
      loadPlugin(bytes, { grants: { networks: [...networks], options: { ...options }, log: (l, m) => logs.push(`${l}: ${m}`) }, cacheDir }),
    );
    t.true(err instanceof PluginError, String(err));
    t.true(logs.includes(`error: ${said}`), `logged "${said}": ${logs.join(' | ')}`);
  }
});

test('rx: buffers are held; a frame fills the oldest with the header and a frame-read of the whole frame', async (t) => {
  const { dev } = await load();
  dev.activate(MRG);
  const bufs = [rxBuf(1526), rxBuf(1526)];
  t.deepEqual(holds(dev.handle(bufs)), bufs.map(idOf), 'rx buffers held until a frame comes');
  const f = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 3);
  const acts = dev.handle([f]);
  const [a] = answers(acts);
  t.is(answers(acts).length, 1);
  t.is(a.id, idOf(bufs[0]), 'the buffer the guest gave first');
  const h = rxHeader(a);
  t.is(h.length, HDR);
  t.is(h[0] | h[1], 0, 'no flags, no GSO');
  t.is(h.readUInt16LE(10), 1, 'num_buffers 1');
  t.deepEqual(a.reply[1], { kind: 'frame-read', slice: { frame: frameIdOf(f), offset: 0, len: 100 } });
  t.is(a.reply.length, 2);
});

test('rx with MRG_RXBUF: a frame longer than one buffer spans several, in order, num_buffers in the first header', async (t) => {
  const { dev } = await load({}, [{ mtu: 9000 }]);
  dev.activate(MRG);
  const bufs = [rxBuf(1500), rxBuf(1500), rxBuf(1500), rxBuf(1500)];
  dev.handle(bufs);
  const f = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp', len: 4000 }), 3);
  const as = answers(dev.handle([f]));
  t.deepEqual(as.map((a) => a.id), bufs.slice(0, 3).map(idOf));
  t.is(rxHeader(as[0]).readUInt16LE(10), 3);
  const fid = frameIdOf(f);
  t.deepEqual(as[0].reply[1], { kind: 'frame-read', slice: { frame: fid, offset: 0, len: 1488 } });
  t.deepEqual(as[1].reply, [{ kind: 'frame-read', slice: { frame: fid, offset: 1488, len: 1500 } }]);
  t.deepEqual(as[2].reply, [{ kind: 'frame-read', slice: { frame: fid, offset: 2988, len: 1012 } }]);
  // The fourth buffer is still held: the next frame lands there.
  const g = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 3);
  t.deepEqual(answers(dev.handle([g])).map((a) => a.id), [idOf(bufs[3])]);
});

test('rx: without MRG_RXBUF a frame larger than the next buffer is dropped and the buffer kept; without buffers frames are not read', async (t) => {
  const { dev } = await load({}, [{ mtu: 9000 }]);
  dev.activate(0n);
  const small = rxBuf(1526);
  dev.handle([small]);
  const big = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp', len: 3000 }), 3);
  t.deepEqual(dev.handle([big]), [], 'not read: the host drops it');
  const fits = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 3);
  t.deepEqual(answers(dev.handle([fits])).map((a) => a.id), [idOf(small)], 'the kept buffer takes the next frame that fits');
  t.deepEqual(dev.handle([frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 3)]), [], 'no buffer: not read');
  // A buffer too small for even the header goes back empty at once (never held).
  const tiny = rxBuf(8);
  const acts = dev.handle([tiny]);
  t.deepEqual(answers(acts).map((a) => [a.id, a.reply.length]), [[idOf(tiny), 0]]);
  t.deepEqual(holds(acts), []);
});

test('rx: frames shorter than an Ethernet header or longer than MTU + 14, and unicast to another MAC, are not delivered', async (t) => {
  const { dev } = await load({ mac: A });
  dev.activate(MRG);
  dev.handle([rxBuf(9000), rxBuf(9000)]);
  const tooShort: DeviceEvent = { kind: 'frame', frame: { id: nextFrame++, network: 0, fromPort: 1, len: 13, prefix: new Uint8Array(13) } };
  const tooLong = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp', len: 1515 }), 1);
  const notOurs = frame(ipFrame({ src: B, dst: C, srcIp: '10.0.0.2', dstIp: '10.0.0.3', proto: 'udp' }), 1);
  t.deepEqual(dev.handle([tooShort, tooLong, notOurs]), []);
  const broadcast = frame(arpFrame(B, '10.0.0.2', '10.0.0.1'), 1);
  t.is(answers(dev.handle([broadcast])).length, 1, 'broadcast is delivered');
});

test('tx: a good frame is answered and flooded; once the destination was learned from a frame it goes to that port only', async (t) => {
  const { dev } = await load();
  dev.activate(MRG);
  const out = ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'tcp' });
  const r1 = tx(out);
  const acts = dev.handle([r1]);
  answeredEmpty(t, acts, [r1]);
  t.deepEqual(sends(acts), [{ network: 0, request: idOf(r1), source: HDR, len: out.length, to: null }] satisfies Send[]);
  // B answers from port 7: learned.
  dev.handle([rxBuf(1526), frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'tcp' }), 7)]);
  const r2 = tx(out);
  t.deepEqual(sends(dev.handle([r2])), [{ network: 0, request: idOf(r2), source: HDR, len: out.length, to: 7 }]);
  // B moves to port 9: relearned. Broadcast is always flooded.
  dev.handle([rxBuf(1526), frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'tcp' }), 9)]);
  const r3 = tx(out);
  const r4 = tx(arpFrame(A, '10.0.0.1', '10.0.0.2'));
  const both = sends(dev.handle([r3, r4]));
  t.deepEqual(both.map((s) => [s.request, s.to]), [[idOf(r3), 9], [idOf(r4), null]]);
});

test('tx: garbage header flags or GSO, short, over-MTU and multicast-source frames are answered and never sent', async (t) => {
  const { dev } = await load();
  dev.activate(MRG);
  const ok = ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'udp' });
  const bad = [
    tx(ok, 0x01), // NEEDS_CSUM: no checksum offload was offered
    tx(ok, 0x80),
    tx(ok, 0, 1), // GSO_TCPV4: no TSO was offered
    tx(ok.subarray(0, 13)),
    tx(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'udp', len: 1515 })),
    tx(ipFrame({ src: '01:00:5e:00:00:01', dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'udp' })),
  ];
  const shortChain: DeviceEvent = { kind: 'request', request: { id: nextId++, queue: 1, prefix: new Uint8Array(5), readableLen: 5, writableLen: 0 } };
  const acts = dev.handle([...bad, shortChain]);
  answeredEmpty(t, acts, [...bad, shortChain]);
  t.deepEqual(sends(acts), []);
  // The largest legal frame still goes.
  const max = tx(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'udp', len: 1514 }));
  t.is(sends(dev.handle([max])).length, 1);
});

test('policy: an allow-list passes the listed flows both ways (ARP by IP too) and drops the rest, with a log line', async (t) => {
  const { dev, logs } = await load({ policy: 'allow 10.0.0.1 10.0.0.2 icmp; allow 10.0.0.1 10.0.0.2:5000 tcp; allow 10.0.0.1 10.0.0.2 arp' });
  dev.activate(MRG);
  const go = (f: Buffer) => sends(dev.handle([tx(f)])).length === 1;
  t.true(go(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'tcp', dport: 5000 })));
  t.true(go(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'icmp' })));
  t.true(go(arpFrame(A, '10.0.0.1', '10.0.0.2')));
  t.false(go(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'tcp', sport: 41000, dport: 6000 })));
  t.false(go(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'udp', dport: 5000 })));
  t.false(go(ipFrame({ src: A, dst: C, srcIp: '10.0.0.1', dstIp: '10.0.0.3', proto: 'icmp' })));
  t.true(logs.includes('info: policy denied tx tcp 10.0.0.1:41000 -> 10.0.0.2:6000 (no rule allows it)'), logs.join('\n'));
  // rx: the reply of the allowed flow comes in; the denied port does not.
  dev.handle([rxBuf(1526), rxBuf(1526)]);
  const reply = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'tcp', sport: 5000, dport: 40000 }), 2);
  const denied = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'tcp', sport: 6000, dport: 40000 }), 2);
  t.deepEqual(answers(dev.handle([reply, denied])).map((a) => (a.reply[1] as { slice: { frame: number } }).slice.frame), [frameIdOf(reply)]);
  t.true(logs.some((l) => l.startsWith('info: policy denied rx tcp 10.0.0.2:6000 -> 10.0.0.1:40000')));
  // A deny rule before a broader allow wins.
  const { dev: d2 } = await load({ policy: 'deny any *:22 tcp; allow any any' });
  d2.activate(MRG);
  t.is(sends(d2.handle([tx(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'tcp', dport: 22 }))])).length, 0);
  t.is(sends(d2.handle([tx(ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'tcp', dport: 23 }))])).length, 1);
});

function saveState(dev: PluginDevice): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let off = 0; ; ) {
    const c = dev.getState(off, 64);
    parts.push(c.bytes);
    off += c.bytes.length;
    if (c.remaining === 0) break;
  }
  return Buffer.concat(parts);
}

test('state: counters and the MAC table migrate; loaded entries are not trusted until seen again; foreign state is refused', async (t) => {
  const { dev } = await load();
  dev.activate(MRG);
  dev.handle([rxBuf(1526), frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 7)]);
  const out = ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'udp' });
  t.is(sends(dev.handle([tx(out)]))[0].to, 7);
  const state = Buffer.from(saveState(dev));
  t.is(state.subarray(0, 4).toString(), 'VNET');
  const counters = state.readUInt32LE(8);
  const ctr = (i: number) => Number(state.readBigUInt64LE(12 + i * 8));
  t.is(counters, 16);
  t.deepEqual([ctr(0), ctr(1), ctr(8), ctr(9)], [1, 100, 1, 100], 'rx frames/bytes, tx frames/bytes');
  const tableAt = 12 + counters * 8 + 8;
  t.is(state.readUInt32LE(tableAt), 1);
  t.is(state.subarray(tableAt + 4, tableAt + 10).toString('hex'), mac(B).toString('hex'));
  t.is(state.readUInt32LE(tableAt + 16), 7, 'the port');

  const { dev: dst } = await load();
  dst.setState(0, state);
  t.is(dst.finishLoad(), null);
  t.deepEqual(Buffer.from(saveState(dst)), state, 'the same state comes out again');
  dst.activate(MRG);
  t.is(sends(dst.handle([tx(out)]))[0].to, null, 'a loaded port is another host\'s: flood until B is seen');
  dst.handle([rxBuf(1526), frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 4)]);
  t.is(sends(dst.handle([tx(out)]))[0].to, 4);

  const { dev: other } = await load();
  const bad = Buffer.from(state);
  bad.write('VBLK', 0);
  other.setState(0, bad);
  t.is(other.finishLoad(), 'plugin net: finish-load: not a net state (bad magic)');
  other.setState(0, state.subarray(0, state.length - 3));
  t.is(other.finishLoad(), 'plugin net: finish-load: net state: its length does not match its MAC table');
});

test('a reset forgets held rx buffers, the table and the counters', async (t) => {
  const { dev } = await load();
  dev.activate(MRG);
  dev.handle([rxBuf(1526), frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 7), rxBuf(1526)]);
  dev.reset();
  dev.activate(MRG);
  t.deepEqual(dev.handle([frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 7)]).filter((a) => a.kind === 'answer'), [], 'the held buffer is gone with the rings');
  const fresh = Buffer.from(saveState(dev));
  t.is(fresh.readBigUInt64LE(12), 0n, 'rx frames counter back to 0');
});

test('MAC aging: a 30 s timer ticks while the device runs; an address not seen for 10 ticks is flooded to again', async (t) => {
  const { dev } = await load();
  dev.activate(MRG);
  const first = dev.handle([rxBuf(1526), frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 7)]);
  const timers = first.filter((a) => a.kind === 'wake-after');
  t.deepEqual(timers, [{ kind: 'wake-after', nanoseconds: 30_000_000_000n, token: 1n }], 'one timer armed');
  const out = ipFrame({ src: A, dst: B, srcIp: '10.0.0.1', dstIp: '10.0.0.2', proto: 'udp' });
  t.is(sends(dev.handle([tx(out)]))[0].to, 7);
  t.deepEqual(dev.handle([tx(out)]).filter((a) => a.kind === 'wake-after'), [], 'no second timer while one is pending');
  const tick = () => dev.handle([{ kind: 'timer', token: 1n }]);
  for (let i = 0; i < 9; i++) t.is(tick().filter((a) => a.kind === 'wake-after').length, 1, 'each tick arms the next');
  t.is(sends(dev.handle([tx(out)]))[0].to, 7, 'nine ticks: still known');
  // Seen again: the age starts over.
  dev.handle([rxBuf(1526), frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 7)]);
  for (let i = 0; i < 9; i++) tick();
  t.is(sends(dev.handle([tx(out)]))[0].to, 7, 'refreshed by its frame');
  tick();
  t.is(sends(dev.handle([tx(out)]))[0].to, null, 'ten ticks unseen: forgotten, flooded');
});

test('rx buffers and frames in one call: a filled buffer is answered only, the rest held only (one answer or hold per request)', async (t) => {
  const { dev } = await load();
  dev.activate(MRG);
  const bufs = [rxBuf(1526), rxBuf(1526), rxBuf(1526)];
  const f = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 3);
  const acts = dev.handle([bufs[0], f, bufs[1], bufs[2]]);
  t.deepEqual(answers(acts).map((a) => a.id), [idOf(bufs[0])], 'the first buffer carries the frame');
  t.deepEqual(holds(acts), [idOf(bufs[1]), idOf(bufs[2])], 'the others are held');
  for (const b of bufs) {
    t.is(answers(acts).filter((a) => a.id === idOf(b)).length + holds(acts).filter((id) => id === idOf(b)).length, 1, `request ${idOf(b)}: exactly one answer or hold`);
  }
  // A held buffer of an earlier call is answered later without a second hold.
  const g = frame(ipFrame({ src: B, dst: A, srcIp: '10.0.0.2', dstIp: '10.0.0.1', proto: 'udp' }), 3);
  const later = dev.handle([g]);
  t.deepEqual([answers(later).map((a) => a.id), holds(later)], [[idOf(bufs[1])], []]);
});
