// What a TypeScript plugin (plugins/rng-ts, built by the TS SDK with componentize-js) costs
// beside the same device in C (plugins/rng) and in plain TypeScript (bench/ts-rng-device.ts),
// behind the same VirtioDevice seam, and how long a cached load takes.
//
//   npx tsx bench/ts-plugin-call.ts [--seconds 1] [--sizes 64,4096] [--batches 1,16,64] [--plugin FILE[,FILE]]
//   (--plugin: TS plugin components to compare, default dist/plugins/rng-ts.wasm)
//
// seam: direct device.handle(events) calls in this thread; CPU time per request (user+system,
//       steadier than wall time on a shared machine), best of interleaved rounds.
// load: loadPlugin(bytes) with the transpile cache already filled (what a device worker does
//       for each new instance); wall time, median of 5.
// memory: a fresh instance (1 GiB cap) answers 200 batches of 64 x 4096-byte requests; the
//       growth of its linear memory per batch (a plugin that frees everything grows ~0).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { loadPlugin, preparePlugin } from '../host/plugin/index.ts';
import type { DeviceEvent, VirtioDevice } from '../host/device/device.ts';
import tsRng from './ts-rng-device.ts';

const { values: argv } = parseArgs({
  options: {
    seconds: { type: 'string', default: '1' },
    sizes: { type: 'string', default: '64,4096' },
    batches: { type: 'string', default: '1,16,64' },
    plugin: { type: 'string' },
  },
});
const seconds = Number(argv.seconds);
const sizes = argv.sizes!.split(',').map(Number);
const batches = argv.batches!.split(',').map(Number);
const root = join(import.meta.dirname, '..');
const ROUNDS = 3;

/** CPU microseconds per request of fn (which handles `perCall` requests), after a warm-up. */
function measure(fn: () => void, perCall: number, secs: number): number {
  const warmEnd = performance.now() + Math.min(200, secs * 300);
  while (performance.now() < warmEnd) fn();
  let calls = 0;
  const cpu0 = process.cpuUsage();
  const end = performance.now() + secs * 1000;
  while (performance.now() < end) {
    fn();
    calls++;
  }
  const cpu = process.cpuUsage(cpu0);
  return (cpu.user + cpu.system) / (calls * perCall);
}

const fmt = (n: number, d = 1) => n.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
const pad = (s: string, n: number) => s.padStart(n);

function batchOf(size: number, n: number): DeviceEvent[] {
  return Array.from({ length: n }, (_, id) => ({ kind: 'request', request: { id, queue: 0, prefix: new Uint8Array(0), readableLen: 0, writableLen: size } }));
}

function check(d: VirtioDevice, events: DeviceEvent[], size: number): void {
  const out = d.handle(events);
  const ok = out.length === events.length && out.every((a) => a.kind === 'answer' && a.answer.reply.reduce((n, p) => n + (p.kind === 'bytes' ? p.bytes.length : 0), 0) === Math.min(size, 65536));
  if (!ok) throw new Error(`${d.info.name} answered wrongly`);
}

async function main(): Promise<void> {
  execFileSync(process.execPath, [join(root, 'build.mjs'), '--only', 'plugins'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  const cacheDir = mkdtempSync(join(tmpdir(), 'ts-plugin-call-cache-'));
  try {
    const tsPlugins = (argv.plugin ?? join(root, 'dist', 'plugins', 'rng-ts.wasm')).split(',');
    const files: Record<string, string> = { c: join(root, 'dist', 'plugins', 'rng.wasm') };
    tsPlugins.forEach((f, i) => (files[`p${i}`] = f));
    const devices: Record<string, VirtioDevice> = { ts: tsRng({}) };
    const loadMs: Record<string, number> = {};
    for (const [name, file] of Object.entries(files)) {
      const bytes = readFileSync(file);
      await preparePlugin(bytes, cacheDir);
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t0 = performance.now();
        // 1 GiB: a TS plugin's memory grows with every batch (see "memory" below), and the
        // seam rounds must not run into the default 64 MiB cap.
        devices[name] = await loadPlugin(bytes, { grants: { entropy: true, log() {} }, cacheDir, memoryLimitBytes: 1 << 30 });
        times.push(performance.now() - t0);
      }
      loadMs[name] = times.sort((a, b) => a - b)[2];
      console.log(`${name === 'c' ? 'C rng' : `TS plugin ${name}`}: ${file} ${fmt(bytes.length / 1024, 0)} KiB, cached load ${fmt(loadMs[name])} ms (median of 5)`);
    }
    for (const d of Object.values(devices)) d.activate(0n);
    console.log(`\nSeam: device.handle(batch); CPU us per request, best of ${ROUNDS} interleaved rounds`);
    const names = Object.keys(devices);
    const ps = names.filter((n) => n.startsWith('p'));
    console.log(['size', 'batch', 'TS module', 'C plugin', ...ps.flatMap((p) => [p, `${p} / C`])].map((h) => pad(h, 10)).join(' '));
    for (const size of sizes) {
      for (const n of batches) {
        const events = batchOf(size, n);
        const best: Record<string, number> = Object.fromEntries(names.map((n) => [n, Infinity]));
        for (const d of Object.values(devices)) check(d, events, size);
        for (let r = 0; r < ROUNDS; r++) {
          for (const [name, d] of Object.entries(devices)) best[name] = Math.min(best[name], measure(() => d.handle(events), n, seconds / ROUNDS));
        }
        console.log([String(size), String(n), fmt(best.ts, 2), fmt(best.c, 2), ...ps.flatMap((p) => [fmt(best[p], 2), `${fmt(best[p] / best.c, 1)}x`])].map((c) => pad(c, 10)).join(' '));
      }
    }
    console.log('\nMemory: linear-memory growth over 200 batches of 64 x 4096 B (fresh instance, 1 GiB cap)');
    for (const [name, file] of Object.entries(files)) {
      const d = await loadPlugin(readFileSync(file), { grants: { entropy: true, log() {} }, cacheDir, memoryLimitBytes: 1 << 30 });
      const events = batchOf(4096, 64);
      d.handle(events);
      const before = d.memoryBytes();
      for (let i = 0; i < 200; i++) d.handle(events);
      const grown = (d.memoryBytes() - before) / 200;
      console.log(`${pad(name, 4)}: ${fmt(before / 1048576)} MiB after one batch, then +${fmt(grown / 1024, 0)} KiB per batch (${fmt(grown / (64 * 4096), 2)}x the bytes answered)`);
    }
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
}

await main();
