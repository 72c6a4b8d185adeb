// Requests/s through our front-end driver at a fixed queue depth: qemu-storage-daemon's
// null-co vhost-user-blk export (a C back-end, the reference) against our host running a
// TypeScript null device. Same driver, same request shape, so the ratio is the host's cost.
//
//   npx tsx bench/rings.ts [--seconds 3] [--warmup 1] [--depth 64] [--size 4096] [--ring 256]
//                          [--only qsd|host]
//
// Each side: start the back-end, connect, warm up, count completions for a fixed time, stop.
// A watchdog ends the process if anything hangs.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlkDevice } from '../host/frontend/blk.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { Host } from '../host/server/index.ts';
import { setLogLevel } from '../host/log/logger.ts';

const { values: argv } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '1' },
    depth: { type: 'string', default: '64' },
    size: { type: 'string', default: '4096' },
    ring: { type: 'string', default: '256' },
    only: { type: 'string' },
  },
});
const params = {
  seconds: Number(argv.seconds),
  warmup: Number(argv.warmup),
  depth: Number(argv.depth),
  size: Number(argv.size),
  ring: Number(argv.ring),
};

/** A back-end under test: started on a socket path, stopped when its side is done. */
interface Target {
  name: string;
  start(socketPath: string): Promise<Backend | null>;
}

interface Backend {
  stop(): Promise<void>;
  /** CPU time the back-end has used so far, when it runs in a process of its own. */
  cpuMs?(): number;
}

/** utime + stime of a process from /proc (clock ticks of 10 ms on Linux). */
function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const qsdNull: Target = {
  name: 'qemu-storage-daemon null-co (C)',
  async start(socketPath) {
    const child = spawn('qemu-storage-daemon', [
      '--blockdev', 'driver=null-co,node-name=n0,size=1073741824',
      '--export', `type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=${socketPath},writable=on`,
    ], { stdio: ['ignore', 'ignore', 'inherit'] });
    await waitForSocket(socketPath, child);
    return { stop: () => stopChild(child), cpuMs: () => processCpuMs(child.pid!) };
  },
};

/** Our host, in this process, with test/devices/null-device.ts on one socket. */
const hostNull: Target = {
  name: 'vhost-wasm host, TypeScript null device',
  async start(socketPath) {
    const device = new URL('../test/devices/null-device.ts', import.meta.url).href;
    const host = await Host.start([{
      label: 'bench',
      listen: { path: socketPath },
      source: { kind: 'module', url: device, options: { mode: 'zero', maxQueueSize: params.ring } },
      // A long deadline: the benchmark measures throughput, not the watchdog.
      callDeadlineMs: 10_000,
    }]);
    return { stop: () => host.close() };
  },
};

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!existsSync(path)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not create ${path}`);
    await sleep(10);
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const gone = new Promise((r) => child.once('close', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 3000);
  await gone;
  clearTimeout(t);
}

interface Result {
  name: string;
  requests: number;
  seconds: number;
  rps: number;
  kicks: number;
  calls: number;
  cpuMs: number;
  backendCpuMs: number | null;
}

async function measure(target: Target, dir: string): Promise<Result | null> {
  const socketPath = join(dir, `${target.name.split(' ')[0]}.sock`);
  const backend = await target.start(socketPath);
  if (backend === null) return null;
  let fe: VhostUserFrontend | null = null;
  try {
    fe = await VhostUserFrontend.connect(socketPath, {
      memoryBytes: 64 << 20,
      queues: [params.ring],
      features: 1n << BigInt(VIRTIO_F_VERSION_1),
      eventIdx: true,
    });
    const q = fe.queues[0];
    const blk = new BlkDevice(q);
    const sectors = (1 << 30) / 512;
    let phaseEnd = Date.now() + params.warmup * 1000;
    let counting = false;
    let done = 0;
    let next = 0;
    const worker = async () => {
      while (Date.now() < phaseEnd) {
        await blk.read(next, params.size);
        next = (next + params.size / 512) % (sectors - params.size / 512);
        if (counting) done++;
      }
    };
    await Promise.all(Array.from({ length: params.depth }, worker));
    const kicks0 = q.kicks;
    const calls0 = q.calls;
    const cpu0 = process.cpuUsage();
    const backendCpu0 = backend.cpuMs?.() ?? 0;
    const t0 = performance.now();
    counting = true;
    phaseEnd = Date.now() + params.seconds * 1000;
    await Promise.all(Array.from({ length: params.depth }, worker));
    const seconds = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const backendCpuMs = backend.cpuMs ? backend.cpuMs() - backendCpu0 : null;
    return {
      name: target.name,
      requests: done,
      seconds,
      rps: done / seconds,
      kicks: q.kicks - kicks0,
      calls: q.calls - calls0,
      cpuMs: (cpu.user + cpu.system) / 1000,
      backendCpuMs,
    };
  } finally {
    await fe?.close();
    // Let the back-end see the hang-up before it is told to shut down.
    await sleep(50);
    await backend.stop();
  }
}

async function main(): Promise<void> {
  // The host's per-connection INFO lines would interleave with the table.
  setLogLevel('warn');
  const watchdog = setTimeout(() => {
    console.error('bench: still running after the time budget; giving up');
    process.exit(2);
  }, (2 * (params.seconds + params.warmup) + 30) * 1000);
  watchdog.unref();

  const dir = mkdtempSync(join(tmpdir(), 'bench-rings-'));
  const results: Result[] = [];
  let missing: string | null = null;
  try {
    const targets = [qsdNull, hostNull].filter((t) => !argv.only || (argv.only === 'qsd' ? t === qsdNull : t === hostNull));
    for (const t of targets) {
      const r = await measure(t, dir);
      if (r === null) missing = t.name;
      else results.push(r);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  console.log(`bench/rings: ${params.size}-byte reads (VIRTIO_BLK_T_IN), queue depth ${params.depth}, ring ${params.ring}, ` +
    `EVENT_IDX on, ${params.warmup} s warm-up + ${params.seconds} s measured per side; node ${process.version}`);
  const rows = results.map((r) => [
    r.name, r.requests.toString(), r.seconds.toFixed(2), Math.round(r.rps).toString(),
    (r.kicks / r.requests).toFixed(3), (r.calls / r.requests).toFixed(3), (r.cpuMs * 1000 / r.requests).toFixed(1),
    r.backendCpuMs === null ? 'in-process' : (r.backendCpuMs * 1000 / r.requests).toFixed(1),
  ]);
  // Our host runs inside the bench process (main thread + device worker), so its CPU is in the
  // "bench process" column; qemu-storage-daemon's is measured from /proc.
  const head = ['back-end', 'requests', 's', 'req/s', 'kicks/req', 'calls/req', 'bench process CPU us/req', 'back-end process CPU us/req'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  const a = results.find((r) => r.name === qsdNull.name);
  const b = results.find((r) => r.name === hostNull.name);
  if (a && b) console.log(`ratio host/qsd: ${(b.rps / a.rps).toFixed(3)}`);
  if (missing) console.log(`(${missing}: not available yet, skipped)`);
}

await main();
