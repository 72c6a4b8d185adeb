// --network tap:IFNAME through the host binary: the test makes a network namespace (ip netns
// add), runs the host inside it (ip netns exec) with a TypeScript net device on a TAP network,
// and checks both directions with the namespace's own kernel stack: a UDP datagram the kernel
// sends to the device's address arrives in the guest's rx buffer from the TAP port, and a UDP
// frame the guest sends reaches a socket listening in the namespace. Needs root.
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { HEADER, RX, STATUS_SENT, TX } from './devices/net-test-device.ts';

const NS = `vhw-tap-${process.pid}`;
const TAP = 'vhwtap0';
const DEVICE_MAC = [2, 0, 0, 0, 0, 2]; // the device is port 2 of tap:vhwtap0 (the interface is port 1)
const opts: FrontendOptions = { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: true, indirect: false };

let host: HostProcess;
const inNs = (...cmd: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...cmd], { encoding: 'utf8' });

test.before(async () => {
  execFileSync('ip', ['netns', 'add', NS]);
  host = await startHost(['--socket-path', '{socket}', '--device-module', join(REPO, 'test', 'devices', 'net-test-device.ts'), '--network', `tap:${TAP}`], {
    wrap: ['ip', 'netns', 'exec', NS],
  });
  await host.waitForLog(/serving net-test/);
  inNs('sysctl', '-qw', `net.ipv6.conf.all.disable_ipv6=1`);
  inNs('ip', 'link', 'set', TAP, 'up');
  inNs('ip', 'addr', 'add', '10.9.0.1/24', 'dev', TAP);
  inNs('ip', 'neigh', 'add', '10.9.0.2', 'lladdr', DEVICE_MAC.map((b) => b.toString(16).padStart(2, '0')).join(':'), 'dev', TAP);
});

test.after.always(async () => {
  await host?.stop();
  try {
    execFileSync('ip', ['netns', 'del', NS]);
  } catch {
    // never made
  }
});

function checksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i] << 8) | (b[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An Ethernet + IPv4 + UDP frame (UDP checksum 0: none, allowed over IPv4). */
function udpFrame(dstMac: number[], srcMac: number[], src: number[], dst: number[], sport: number, dport: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + payload.length);
  const dv = new DataView(f.buffer);
  f.set(dstMac, 0);
  f.set(srcMac, 6);
  dv.setUint16(12, 0x0800);
  const ip = f.subarray(14, 34);
  ip[0] = 0x45;
  dv.setUint16(16, 20 + 8 + payload.length);
  ip[8] = 64;
  ip[9] = 17;
  ip.set(src, 12);
  ip.set(dst, 16);
  dv.setUint16(24, checksum(ip));
  dv.setUint16(34, sport);
  dv.setUint16(36, dport);
  dv.setUint16(38, 8 + payload.length);
  f.set(payload, 42);
  return f;
}

test.serial('a datagram the namespace sends to the device arrives in the guest from the TAP port, and one the guest sends reaches a socket there', async (t) => {
  const fe = await VhostUserFrontend.connect(host.socketPath, opts);
  try {
    const rx = Array.from({ length: 32 }, () => fe.queues[RX].submit([], 2048));
    for (const p of rx) p.catch(() => {});
    while (!fe.queues[RX].ring.deviceIdle()) await sleep(5);

    // Kernel -> guest.
    const hello = 'hello-from-the-namespace';
    inNs('python3', '-c', `import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'${hello}', ('10.9.0.2', 9999))`);
    let found: { from: number; frame: Uint8Array } | null = null;
    for (const p of rx) {
      const c = await p;
      const frame = c.data.slice(HEADER, c.len);
      if (Buffer.from(frame).includes(hello)) {
        found = { from: new DataView(c.data.buffer, c.data.byteOffset).getUint32(0, true), frame };
        break;
      }
    }
    t.truthy(found, 'the datagram reached an rx buffer');
    t.is(found!.from, 1, 'from the TAP port');
    t.deepEqual([...found!.frame.subarray(0, 6)], DEVICE_MAC);

    // Guest -> kernel: a socket in the namespace gets the datagram.
    const tapMac = (JSON.parse(execFileSync('ip', ['-n', NS, '-j', 'link', 'show', TAP], { encoding: 'utf8' })) as { address: string }[])[0].address
      .split(':')
      .map((h) => parseInt(h, 16));
    const listener = spawn('ip', ['netns', 'exec', NS, 'python3', '-c', "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.9.0.1', 7777)); print('ready', flush=True); s.settimeout(20); d,a=s.recvfrom(2048); print(d.decode(), a[0], flush=True)"], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    listener.stdout.setEncoding('utf8');
    listener.stdout.on('data', (d: string) => (out += d));
    const done = new Promise<number | null>((resolve) => listener.once('close', resolve));
    while (!out.includes('ready')) await sleep(5);
    const payload = new TextEncoder().encode('hello-from-the-guest');
    const frame = udpFrame(tapMac, DEVICE_MAC, [10, 9, 0, 2], [10, 9, 0, 1], 5555, 7777, payload);
    const c = await fe.queues[TX].submit([frame], 1);
    t.is(c.data[0], STATUS_SENT);
    t.is(await done, 0);
    t.regex(out, /hello-from-the-guest 10\.9\.0\.2/);
  } finally {
    await fe.close().catch(() => {});
  }
});
