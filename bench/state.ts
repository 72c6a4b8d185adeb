// Device-state SAVE/LOAD throughput between real host processes (the large-state TS device),
// over a pipe and over a memfd, in both directions, against a plain memcpy of the same number of
// bytes in this process. Run: node --import tsx bench/state.ts [MiB ...]   (default: 64)
//
// What each line measures (wall time, front-end's view):
//   save/pipe       SET_DEVICE_STATE_FD(SAVE, pipe) -> read to EOF in 1 MiB chunks -> CHECK
//   save/memfd      SET_DEVICE_STATE_FD(SAVE, memfd) -> CHECK (the back-end wrote the file)
//   save/own-memfd  the back-end returns its own memfd (--state-return-memfd) -> read it
//   load/pipe       SET_DEVICE_STATE_FD(LOAD, pipe) -> write 1 MiB chunks -> close -> CHECK
//   load/memfd      SET_DEVICE_STATE_FD(LOAD, memfd already holding the state) -> CHECK
//   migrate/pipe    the whole migration: stop, SAVE source -> pump -> LOAD destination, CHECK both, restart
//   (blk) direct-pipe  the same with one pipe from the source host to the destination host (no relay)
//   (blk) handover     the disk's memfd handed to the destination while the source runs (protocol
//                      feature 61), then the container without the disk over direct-pipe: the
//                      disk's bytes are not copied; its MiB/s is the disk's size over the transfer
//                      time, the rate a copying channel would need to match it
//   migrate/memfd   the same with one memfd handed from source to destination
//   save/rfc-shm    EXPERIMENTAL RFC extension: RFC_SET_STATE_AREA(SAVE, 1 MiB memfd) -> GET_STATE
//                   chunk by chunk, copying each out of the area -> detach (= the final check)
//   load/rfc-shm    RFC_SET_STATE_AREA(LOAD) -> copy 1 MiB into the area + SET_STATE, repeated -> detach
//   migrate/rfc-shm the whole migration, one area attached to both back-ends (no front-end copy),
//                   GET_STATE on the source / SET_STATE on the destination in turn; also with a 16 MiB area
// Then (unless --no-blk) the blk plugin with a 256 MiB memory disk (every MiB written first), one
// migration per channel: stop-to-resume time (rings stopped on the source -> running on the
// destination), the disk travelling as section 0x100.
// Each includes the device's own getState/setState work (the test device generates and checks a
// pattern), the worker RPC, the container's CRC and the channel.

import { startHost, type HostProcess } from '../test/helpers/host-process.ts';
import { BIG_DEVICE } from '../test/devices/migration-helpers.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { DeviceStateDirection, DeviceStatePhase } from '../host/protocol/constants.ts';
import { loadState, migrate, readToEnd, saveState, writeAll, type StateChannelMode } from '../host/frontend/migrate.ts';
import { native } from '../host/native/index.ts';
import { FRONTEND_PROTOCOL_FEATURES } from '../host/frontend/driver.ts';
import { BlkDevice } from '../host/frontend/blk.ts';
import { featureBit } from '../host/protocol/constants.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE } from '../host/protocol/rfc-state-shm.ts';
import { DISK_HANDOVER_PROTOCOL_FEATURE } from '../host/protocol/precopy.ts';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { REPO } from '../test/helpers/host-process.ts';

const args = process.argv.slice(2);
const noBlk = args.includes('--no-blk');
const onlyBlk = args.includes('--only-blk') || args.includes('--only-precopy');
const onlyPrecopy = args.includes('--only-precopy');
// --prealloc: both hosts' memory disks are memory:256M,prealloc=on (pages made at start).
const DISK_ARG = args.includes('--prealloc') ? 'memory:256M,prealloc=on' : 'memory:256M';
/** The load average now (the machine is shared: figures are read next to it). */
const load = () => `load ${loadavg().map((n) => n.toFixed(2)).join(' ')}`;
// --final=direct-pipe: the pre-copy migrations' last transfer (the state without the disk) over
// one pipe host to host instead of the relayed pipe.
const FINAL_CHANNEL = (args.find((a) => a.startsWith('--final='))?.slice('--final='.length) ?? 'pipe') as StateChannelMode;
const sizes = args.map(Number).filter((n) => n > 0);
if (sizes.length === 0 && !onlyBlk) sizes.push(64);

const RFC_FLAGS = ['--experimental-rfc-state-shm'];

function host(mib: number, returnMemfd = false): Promise<HostProcess> {
  const flags = [...RFC_FLAGS, ...(returnMemfd ? ['--state-return-memfd'] : [])];
  return startHost(['--socket-path', '{socket}', '--device-module', BIG_DEVICE, '--call-deadline', '10000', ...flags], {
    env: { VHOST_WASM_TEST_STATE_BYTES: String(mib << 20) },
  }).catch(async (e) => {
    throw e;
  });
}

const feOpts = {
  memoryBytes: 4 << 20,
  queues: [64],
  features: 1n << BigInt(VIRTIO_F_VERSION_1),
  protocolFeatures: FRONTEND_PROTOCOL_FEATURES | featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE),
};

async function stopped(h: HostProcess): Promise<VhostUserFrontend> {
  const fe = await VhostUserFrontend.connect(h.socketPath, feOpts);
  await fe.stopQueue(0);
  return fe;
}

function memcpyMBps(bytes: number): number {
  const a = Buffer.alloc(Math.min(bytes, 256 << 20), 1);
  const b = Buffer.alloc(a.length);
  let best = Infinity;
  for (let rep = 0; rep < 3; rep++) {
    const t0 = performance.now();
    for (let done = 0; done < bytes; done += a.length) a.copy(b, 0, 0, Math.min(a.length, bytes - done));
    best = Math.min(best, performance.now() - t0);
  }
  return bytes / 2 ** 20 / (best / 1000);
}

async function timed(fn: () => Promise<number>): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  const bytes = await fn();
  return { ms: performance.now() - t0, bytes };
}

async function benchSize(mib: number): Promise<void> {
  const [a, b, own] = await Promise.all([host(mib), host(mib), host(mib, true)]);
  const rows: { name: string; ms: number; bytes: number }[] = [];
  let held: Buffer | null = null;
  try {
    const fa = await stopped(a);
    const fb = await stopped(b);
    const fo = await stopped(own);

    // save/pipe: stream, keeping the bytes once for the loads below.
    rows.push({
      name: 'save/pipe',
      ...(await timed(async () => {
        const [r, w] = native.pipe2();
        await fa.conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, w);
        native.close(w);
        const parts: Buffer[] = [];
        const n = await readToEnd(r, (c) => void parts.push(Buffer.from(c)));
        native.close(r);
        await fa.conn.checkDeviceState();
        held = Buffer.concat(parts);
        return n;
      })),
    });
    const state = held as unknown as Buffer;

    const m = native.memfdCreate('bench-state', false);
    rows.push({
      name: 'save/memfd',
      ...(await timed(async () => {
        await fa.conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, m);
        await fa.conn.checkDeviceState();
        return native.fstat(m).size;
      })),
    });

    rows.push({
      name: 'save/own-memfd',
      ...(await timed(async () => {
        const [r, w] = native.pipe2();
        const ret = await fo.conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, w);
        native.close(w);
        native.close(r);
        if (ret === null) throw new Error('the back-end did not return its memfd');
        let n = 0;
        await readToEnd(ret, (c) => {
          n += c.length;
        });
        native.close(ret);
        await fo.conn.checkDeviceState();
        return n;
      })),
    });

    rows.push({ name: 'load/pipe', ...(await timed(async () => (await loadState(fb.conn, state, 'pipe'), state.length))) });
    rows.push({
      name: 'load/memfd',
      ...(await timed(async () => {
        await fb.conn.setDeviceStateFd(DeviceStateDirection.LOAD, DeviceStatePhase.STOPPED, m);
        await fb.conn.checkDeviceState();
        return native.fstat(m).size;
      })),
    });
    native.close(m);
    rows.push({ name: 'save/rfc-shm', ...(await timed(async () => (await saveState(fa.conn, 'rfc-shm')).length)) });
    rows.push({ name: 'load/rfc-shm', ...(await timed(async () => (await loadState(fb.conn, state, 'rfc-shm'), state.length))) });
    // Also measure writing the memfd (what a front-end does before load/memfd).
    rows.push({
      name: '(fill memfd)',
      ...(await timed(async () => {
        const f = native.memfdCreate('bench-fill', false);
        await writeAll(f, state, 0);
        native.close(f);
        return state.length;
      })),
    });
    held = null;
    await Promise.all([fa.close(), fb.close(), fo.close()]);

    const runs: { channel: StateChannelMode; label: string; area?: number }[] = [
      { channel: 'pipe', label: 'pipe' },
      { channel: 'memfd', label: 'memfd' },
      { channel: 'rfc-shm', label: 'rfc-shm' },
      { channel: 'rfc-shm', label: 'rfc-shm 16M', area: 16 << 20 },
    ];
    for (const run of runs) {
      const fe = await VhostUserFrontend.connect(a.socketPath, feOpts);
      const r = await migrate(fe, b.socketPath, { channel: run.channel, rfcAreaSize: run.area });
      rows.push({ name: `migrate/${run.label}`, ms: r.transferMs, bytes: r.bytes });
      rows.push({ name: `  (downtime ${run.label})`, ms: r.downtimeMs, bytes: r.bytes });
      await fe.close();
    }

    const copy = memcpyMBps(state.length);
    console.log(`\n${mib} MiB of device state (${state.length} container bytes); memcpy in one process: ${copy.toFixed(0)} MiB/s`);
    console.log('what'.padEnd(22) + 'ms'.padStart(10) + 'MiB/s'.padStart(10) + 'x memcpy'.padStart(11));
    for (const r of rows) {
      const mbps = r.bytes / 2 ** 20 / (r.ms / 1000);
      console.log(r.name.padEnd(22) + r.ms.toFixed(1).padStart(10) + mbps.toFixed(0).padStart(10) + (mbps / copy).toFixed(3).padStart(11));
    }
  } finally {
    await Promise.all([a.stop(), b.stop(), own.stop()]);
  }
}

/** User + system CPU milliseconds a host process has used so far (/proc/PID/stat, 10 ms ticks). */
function cpuMs(h: HostProcess): number {
  const f = readFileSync(`/proc/${h.child.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** Writes every MiB of the disk's first `bytes`, eight writes in flight. */
async function fillDisk(blk: BlkDevice, bytes: number): Promise<void> {
  const mib = Buffer.alloc(1 << 20, 'disk');
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < bytes) {
      const o = next;
      next += 1 << 20;
      await blk.write(o / 512, mib);
    }
  }));
}

async function benchBlk(): Promise<void> {
  const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
  const DISK = 256 << 20;
  const runs: { name: string; channel: StateChannelMode; srcFlags?: string[] }[] = [
    { name: 'pipe', channel: 'pipe' },
    { name: 'direct-pipe', channel: 'direct-pipe' },
    { name: 'front-end memfd', channel: 'memfd' },
    { name: 'back-end memfd', channel: 'pipe', srcFlags: ['--state-return-memfd'] },
    { name: 'rfc-shm (1 MiB area)', channel: 'rfc-shm' },
    // The disk's memfd goes to the destination by reference (no byte of it copied); the
    // container without the disk over direct-pipe. Its rate is the disk's size over the transfer
    // time: what a copying channel would have to reach to match it, not bytes that moved.
    { name: 'handover', channel: 'handover' },
  ];
  console.log(`\nblk plugin, --storage ${DISK_ARG} (fully written), one migration per channel; ${load()}`);
  console.log('  (transfer = SAVE on the source + LOAD on the destination, both CHECKs: the ratios are of that, against');
  console.log('  this script\'s memcpy of the disk\'s bytes between resident buffers and a plain 1 MiB pipe carrying them');
  console.log('  from a child process, both measured just before each migration: the machine is shared and noisy)');
  console.log(
    'channel'.padEnd(24) + 'bytes'.padStart(12) + 'transfer ms'.padStart(13) + 'stop->resume ms'.padStart(17) + 'MiB/s'.padStart(8) + 'x memcpy'.padStart(10) +
      'x pipe'.padStart(8) + 'host CPU ms'.padStart(13),
  );
  // --channels pipe,front-end-memfd: only these rows (names with spaces as dashes).
  const only = args.find((a) => a.startsWith('--channels='))?.slice('--channels='.length).split(',');
  for (const run of runs.filter((r) => !only || only.includes(r.name.split(' ')[0] === 'rfc-shm' ? 'rfc-shm' : r.name.replace(/ /g, '-')))) {
    const args = ['--socket-path', '{socket}', '--plugin', BLK, '--storage', DISK_ARG];
    const [a, b] = await Promise.all([startHost([...args, ...RFC_FLAGS, ...(run.srcFlags ?? [])]), startHost([...args, ...RFC_FLAGS])]);
    try {
      const handover = run.channel === 'handover' ? featureBit(DISK_HANDOVER_PROTOCOL_FEATURE) : 0n;
      const fe = await VhostUserFrontend.connect(a.socketPath, { ...feOpts, protocolFeatures: feOpts.protocolFeatures | handover, memoryBytes: 32 << 20, queues: [128] });
      await fillDisk(new BlkDevice(fe.queues[0]), DISK);
      const mem = memcpyRate(DISK);
      const pipe = await plainPipeRate(DISK);
      // CPU time of both host processes (all threads) during the migration: less at the mercy of
      // other load on the machine than wall time.
      const [a0, b0] = [cpuMs(a), cpuMs(b)];
      const r = await migrate(fe, b.socketPath, { channel: run.channel });
      const [aCpu, bCpu] = [cpuMs(a) - a0, cpuMs(b) - b0];
      const cpu = aCpu + bCpu;
      // Over direct-pipe no byte passes through this script: the source's log counts them.
      const bytes = run.channel === 'direct-pipe' || run.channel === 'handover' ? Number(a.log().match(/device state saved: (\d+) bytes/)?.[1]) : r.bytes;
      // handover: the disk's size over the time (effective: its bytes are not copied).
      const rate = (run.channel === 'handover' ? DISK : bytes) / (r.transferMs / 1000);
      console.log(
        run.name.padEnd(24) + String(bytes).padStart(12) + r.transferMs.toFixed(1).padStart(13) + r.downtimeMs.toFixed(1).padStart(17) +
          (rate / 2 ** 20).toFixed(0).padStart(8) + (rate / mem).toFixed(3).padStart(10) + (rate / pipe).toFixed(2).padStart(8) + String(cpu).padStart(13) +
          // Each side's own time, from its log (the SAVE and the LOAD overlap on a pipe).
          `   (save ${a.log().match(/device state saved: .* in ([\d.]+) ms/)?.[1] ?? '?'} ms, load ${b.log().match(/device state loaded: .* in ([\d.]+) ms/)?.[1] ?? '?'} ms; ` +
          (r.handoverMs !== undefined ? `disk memfd handed over with the rings running in ${r.handoverMs.toFixed(1)} ms, not copied; ` : '') +
          `CPU ms source ${aCpu}, destination ${bCpu}; memcpy ${(mem / 2 ** 20).toFixed(0)}, plain pipe ${(pipe / 2 ** 20).toFixed(0)} MiB/s; ${load()})`,
      );
      await fe.close();
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  }
}

/** Bytes/s of a plain pipe (1 MiB capacity) carrying `total` bytes from a child process to this one. */
async function plainPipeRate(total: number): Promise<number> {
  const { spawn } = await import('node:child_process');
  const [r, w] = native.pipe2();
  native.setPipeSize?.(w, 1 << 20);
  native.setNonBlocking(w, false); // the child's end blocks, as a plain writer's would
  const child = spawn(
    process.execPath,
    ['-e', `const fs=require('fs');const b=Buffer.alloc(1<<20,1);let n=${total};while(n>0){const k=fs.writeSync(3,b,0,Math.min(b.length,n));n-=k;}`],
    { stdio: ['ignore', 'ignore', 'inherit', w] },
  );
  native.close(w);
  const t0 = performance.now();
  const got = await readToEnd(r, () => {});
  const ms = performance.now() - t0;
  native.close(r);
  await new Promise((res) => child.on('exit', res));
  if (got !== total) throw new Error(`plain pipe: ${got} of ${total} bytes`);
  return total / (ms / 1000);
}

/** memcpy of `total` bytes between two buffers already in memory (both touched first). */
function memcpyRate(total: number): number {
  const a = Buffer.alloc(total, 1);
  const b = Buffer.alloc(total, 2);
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    a.copy(b);
    best = Math.min(best, performance.now() - t0);
  }
  return total / (best / 1000);
}

/**
 * The blk plugin's 256 MiB memory disk (every MiB written) with pre-copy (docs/migration.md,
 * "Pre-copy"): one full round alone (the disk, host to host through a pipe, no writes), against
 * the same script's plain pipe and memcpy of the same bytes; then whole migrations with 2 live
 * rounds, with no writes and under a writer (4 KiB random writes back to back, queue depth 1 or 8),
 * stop-to-resume being the time the rings are stopped.
 */
async function benchPrecopy(): Promise<void> {
  const { PRECOPY_PROTOCOL_FEATURE, PrecopyPhase } = await import('../host/protocol/precopy.ts');
  const { VhostUserConnection } = await import('../host/frontend/connection.ts');
  const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
  const DISK = 256 << 20;
  const hostArgs = ['--socket-path', '{socket}', '--plugin', BLK, '--storage', DISK_ARG];
  const opts = { ...feOpts, memoryBytes: 32 << 20, queues: [128], protocolFeatures: FRONTEND_PROTOCOL_FEATURES | featureBit(PRECOPY_PROTOCOL_FEATURE) };
  let mem = memcpyRate(DISK);
  let pipe = await plainPipeRate(DISK);
  console.log(`\npre-copy, blk with --storage ${DISK_ARG}; same-script peers: memcpy ${(mem / 2 ** 20).toFixed(0)} MiB/s, plain pipe ${(pipe / 2 ** 20).toFixed(0)} MiB/s; ${load()}`);
  const fill = (blk: BlkDevice) => fillDisk(blk, DISK);
  // One full round alone, three times.
  {
    const [a, b] = await Promise.all([startHost(hostArgs), startHost(hostArgs)]);
    try {
      const fe = await VhostUserFrontend.connect(a.socketPath, opts);
      await fill(new BlkDevice(fe.queues[0]));
      const dst = VhostUserConnection.connect(b.socketPath);
      await dst.getFeatures();
      await dst.setProtocolFeatures((await dst.getProtocolFeatures()) & opts.protocolFeatures);
      await dst.setOwner();
      const round = async (phase: number) => {
        const [r, w] = native.pipe2();
        native.setPipeSize?.(w, 1 << 20);
        await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, phase, w);
        native.close(w);
        await dst.setDeviceStateFd(DeviceStateDirection.LOAD, PrecopyPhase.ROUND, r);
        native.close(r);
        await fe.conn.checkDeviceState();
        await dst.checkDeviceState();
      };
      for (let i = 0; i < 3; i++) {
        // The peers again, just before the round (the machine is shared: its figures move).
        mem = memcpyRate(DISK);
        pipe = await plainPipeRate(DISK);
        const cpu0 = cpuMs(a) + cpuMs(b);
        const t0 = performance.now();
        const [r, w] = native.pipe2();
        native.setPipeSize?.(w, 1 << 20);
        await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, PrecopyPhase.START, w);
        native.close(w);
        await dst.setDeviceStateFd(DeviceStateDirection.LOAD, PrecopyPhase.ROUND, r);
        native.close(r);
        await fe.conn.checkDeviceState();
        await dst.checkDeviceState();
        const ms = performance.now() - t0;
        const rate = DISK / (ms / 1000);
        console.log(
          `full round (SAVE+LOAD, disk -> pipe -> disk): ${ms.toFixed(0)} ms, ${(rate / 2 ** 20).toFixed(0)} MiB/s = ${(rate / pipe).toFixed(2)} x plain pipe, ` +
            `${(rate / mem).toFixed(3)} x memcpy (memcpy ${(mem / 2 ** 20).toFixed(0)}, plain pipe ${(pipe / 2 ** 20).toFixed(0)} MiB/s); host CPU ${cpuMs(a) + cpuMs(b) - cpu0} ms; ${load()}`,
        );
      }
      // A round of scattered blocks alone: 4 KiB writes at random offsets, then one round, no writer.
      const blkDev = new BlkDevice(fe.queues[0]);
      const page = Buffer.alloc(4096, 's');
      for (const blocks of [1000, 5000, 20000]) {
        let k = 0;
        await Promise.all(Array.from({ length: 8 }, async () => {
          while (k < blocks) {
            k++;
            await blkDev.write(Math.floor(Math.random() * (DISK / 4096)) * 8, page);
          }
        }));
        const cpu0 = cpuMs(a) + cpuMs(b);
        const t0 = performance.now();
        await round(PrecopyPhase.ROUND);
        const ms = performance.now() - t0;
        console.log(`round of ${blocks} random 4 KiB writes (scattered blocks): ${ms.toFixed(1)} ms, ${((blocks * 4096) / 2 ** 20 / (ms / 1000)).toFixed(0)} MiB/s at most; host CPU ${cpuMs(a) + cpuMs(b) - cpu0} ms`);
      }
      dst.close();
      await fe.close();
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  }
  // --rounds-only: the full rounds and scattered-block rounds above, not the migrations under writers.
  if (args.includes('--rounds-only')) return;
  console.log(`the state without the disk after the stopped round goes over: ${FINAL_CHANNEL}`);
  console.log('writers'.padEnd(30) + 'rounds ms (last: rings stopped)'.padEnd(34) + 'stop->resume ms'.padStart(16) + 'writes'.padStart(8) + '  auto-converge');
  for (const writers of [0, 1, 8]) {
    for (let rep = 0; rep < 2; rep++) {
      const [a, b] = await Promise.all([startHost(hostArgs), startHost(hostArgs)]);
      try {
        const fe = await VhostUserFrontend.connect(a.socketPath, opts);
        const blk = new BlkDevice(fe.queues[0]);
        await fill(blk);
        let running = true;
        let writes = 0;
        const page = Buffer.alloc(4096, 'w');
        const lanes = Array.from({ length: writers }, async () => {
          while (running) {
            await blk.write(Math.floor(Math.random() * (DISK / 4096)) * 8, page);
            writes++;
          }
        });
        const marks: [string, number][] = [];
        const r = await migrate(fe, b.socketPath, { channel: FINAL_CHANNEL, precopyRounds: 5, onStep: (st) => void marks.push([st, performance.now()]) });
        running = false;
        await Promise.all(lanes);
        // Where the stopped time went: from each step to the next, from stop-source on.
        const from = marks.findIndex(([st]) => st === 'stop-source');
        const split = marks.slice(from, -1).map(([st, at], i) => `${st} ${(marks[from + i + 1][1] - at).toFixed(1)}`).join(', ');
        // The source's auto-converge decisions (host/migration/auto-converge.ts), from its log.
        const rates = [...a.log().matchAll(/throttled to (\d+) bytes\/s/g)].map((m) => `${(Number(m[1]) / 2 ** 20).toFixed(1)} MiB/s`);
        console.log(
          (writers === 0 ? 'none' : `4 KiB random, QD ${writers}`).padEnd(30) + r.precopyMs.map((m) => m.toFixed(0)).join(' / ').padEnd(34) +
            r.downtimeMs.toFixed(1).padStart(16) + String(writes).padStart(8) + `  ${rates.length > 0 ? rates.join(' -> ') : 'none'}   (${split})`,
        );
        await fe.close();
      } finally {
        await Promise.all([a.stop(), b.stop()]);
      }
    }
  }
}

if (!onlyPrecopy) {
  for (const mib of sizes) await benchSize(mib);
  if (!noBlk) await benchBlk();
}
if (!noBlk && (onlyPrecopy || !args.includes('--only-blk'))) await benchPrecopy();
