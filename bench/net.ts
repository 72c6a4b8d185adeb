// Guest-to-guest networking: TCP throughput (busybox nc, /dev/zero) and ping round trip between
// two TCG guests, through our host's switch (two net plugin devices on one network of one
// `vhost-wasm serve`) and through QEMU's own user-space path (-netdev stream over a Unix
// socket, A listening, B connecting). Same kernel, image, memory, vCPUs and virtio-net-pci
// options (INTx: test/guest/net.ts NET_PCI_OPTIONS); ratios are ours/QEMU's.
//
//   node build.mjs && npx tsx bench/net.ts [--mib 64] [--runs 3] [--pings 20] [--only ours,stream]
//
// Under TCG the guests' own CPU is most of the cost on both paths; the figure compares the
// paths at what the guests can push, not line rate.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { bootGuest, type BootResult } from '../test/guest/qemu.ts';
import { NET_IMAGE, NET_PCI_OPTIONS, netSetup, vhostUserNetArgs } from '../test/guest/net.ts';
import { startDaemon } from '../test/helpers/daemon-process.ts';

const REPO = resolve(import.meta.dirname, '..');
const NET = join(REPO, 'dist', 'plugins', 'net.wasm');
const { values: argv } = parseArgs({
  options: {
    mib: { type: 'string', default: '64' },
    runs: { type: 'string', default: '3' },
    pings: { type: 'string', default: '20' },
    only: { type: 'string', default: 'ours,stream' },
  },
});
const MIB = Number(argv.mib);
const RUNS = Number(argv.runs);
const PINGS = Number(argv.pings);
const MAC_A = '52:54:00:00:00:0a';
const MAC_B = '52:54:00:00:00:0b';

const senderScript = `set -e
${netSetup('10.0.0.1')}
wait_for 10.0.0.2
ping -c 3 -W 1 10.0.0.2 >/dev/null || true
echo "ping: $(ping -c ${PINGS} -i 0.2 10.0.0.2 | tail -1)"
for i in $(seq ${RUNS}); do
  t0=$(cut -d' ' -f1 /proc/uptime)
  until dd if=/dev/zero bs=64k count=${MIB * 16} 2>/dev/null | nc 10.0.0.2 5000; do sleep 1; t0=$(cut -d' ' -f1 /proc/uptime); done
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "run: $t0 $t1"
done
until echo done | nc 10.0.0.2 5001; do sleep 1; done
`;
const receiverScript = `set -e
${netSetup('10.0.0.2')}
for i in $(seq ${RUNS}); do echo "received: $(nc -l -p 5000 <&3 | wc -c)"; done
nc -l -p 5001 <&3 >/dev/null
`;

interface Figures {
  rttMs: number;
  mibPerS: number[];
}

function figures(a: BootResult, b: BootResult, what: string): Figures {
  if (a.exitCode !== 0 || b.exitCode !== 0) throw new Error(`${what}: a guest failed\n--- A\n${a.output}\n${a.qemuStderr}\n--- B\n${b.output}\n${b.qemuStderr}`);
  const rtt = /round-trip min\/avg\/max = [\d.]+\/([\d.]+)\//.exec(a.scriptOutput);
  const runs = [...a.scriptOutput.matchAll(/^run: ([\d.]+) ([\d.]+)$/gm)].map((m) => MIB / (Number(m[2]) - Number(m[1])));
  const received = [...b.scriptOutput.matchAll(/^received: (\d+)$/gm)].map((m) => Number(m[1]));
  if (!received.every((n) => n === MIB << 20)) throw new Error(`${what}: the receiver counted ${received.join(', ')} bytes, not ${MIB << 20} each`);
  return { rttMs: Number(rtt?.[1]), mibPerS: runs };
}

const boot = (script: string, qemuArgs: string[]) => bootGuest({ image: NET_IMAGE, script, qemuArgs, timeoutMs: 900_000 });

async function ours(dir: string): Promise<Figures> {
  const sock = { a: join(dir, 'a.sock'), b: join(dir, 'b.sock') };
  const config = join(dir, 'net.json');
  writeFileSync(config, JSON.stringify({ devices: [
    { id: 'a', socket: sock.a, plugin: NET, grants: { network: ['seg0'] }, options: { mac: MAC_A }, limits: { callDeadlineMs: 1000 } },
    { id: 'b', socket: sock.b, plugin: NET, grants: { network: ['seg0'] }, options: { mac: MAC_B }, limits: { callDeadlineMs: 1000 } },
  ] }));
  const daemon = await startDaemon(['--config', config]);
  try {
    const [a, b] = await Promise.all([boot(senderScript, vhostUserNetArgs('n0', sock.a, MAC_A)), boot(receiverScript, vhostUserNetArgs('n0', sock.b, MAC_B))]);
    return figures(a, b, 'ours');
  } finally {
    await daemon.stop();
  }
}

async function stream(dir: string): Promise<Figures> {
  const path = join(dir, 'stream.sock');
  const netdev = (server: boolean) => ['-netdev', `stream,id=n0,server=${server ? 'on' : 'off'},addr.type=unix,addr.path=${path}`];
  const a = boot(senderScript, [...netdev(true), '-device', `virtio-net-pci,netdev=n0,mac=${MAC_A},${NET_PCI_OPTIONS}`]);
  // QEMU 7.2's stream client does not retry: start it once the listener exists.
  for (let i = 0; i < 500 && !existsSync(path); i++) await sleep(20);
  const b = boot(receiverScript, [...netdev(false), '-device', `virtio-net-pci,netdev=n0,mac=${MAC_B},${NET_PCI_OPTIONS}`]);
  const [ra, rb] = await Promise.all([a, b]);
  return figures(ra, rb, 'stream');
}

const median = (xs: number[]) => [...xs].sort((p, q) => p - q)[Math.floor(xs.length / 2)];
const dir = mkdtempSync(join(tmpdir(), 'bench-net-'));
try {
  const only = argv.only.split(',');
  const results: Record<string, Figures> = {};
  console.log(`load before: ${loadavg().map((l) => l.toFixed(1)).join(' ')}; ${MIB} MiB x ${RUNS} runs, ${PINGS} pings`);
  for (const [name, run] of [['ours', ours], ['stream', stream]] as const) {
    if (!only.includes(name)) continue;
    const f = await run(dir);
    results[name] = f;
    console.log(`${name.padEnd(7)} ping avg ${f.rttMs.toFixed(3)} ms; TCP ${f.mibPerS.map((x) => x.toFixed(1)).join(' / ')} MiB/s (median ${median(f.mibPerS).toFixed(1)}); load ${loadavg()[0].toFixed(1)}`);
  }
  if (results.ours && results.stream) {
    console.log(`ratio ours/stream: throughput ${(median(results.ours.mibPerS) / median(results.stream.mibPerS)).toFixed(2)}x, ping RTT ${(results.ours.rttMs / results.stream.rttMs).toFixed(2)}x (lower is better)`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
