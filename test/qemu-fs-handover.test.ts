// Host upgrade under a real virtio-fs guest (docs/upgrade.md, "Host upgrade"): QEMU 10's
// vhost-user-fs-pci, whose chardev has no reconnect option (QEMU cannot reconnect a vhost-user-fs
// device at all), served by the fs plugin, while the host is taken over twice by new host
// processes started with `--take-over` (live handover, the default). The guest
// (test/fixtures/guest/fs-rounds.c) keeps one file open from before the first handover to after
// the last and runs rounds of: write a pattern through that fd, fsync, read it back; write a
// whole file, fsync, read it back (page cache dropped: the bytes come from the host); stat;
// readdir; a ticker beside it fsyncs another kept-open file and prints "T n" (its gaps are the
// guest-visible pauses). The guest runs until the test creates `stop` in the share, which it does
// only after both handovers and a few more rounds each.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, hasQemu, type BootResult } from './guest/qemu.ts';
import { ensureQemu10 } from './guest/qemu10.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');
const ROUNDS_SRC = join(REPO, 'test', 'fixtures', 'guest', 'fs-rounds.c');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu();
const guestTest = skip ? test.serial.skip : test.serial;
const TAG = 'hofs';
const HANDOVERS = 2;
/** Rounds the guest completes on each new host before the next step (handover or stop). */
const ROUNDS_AFTER = 3;
const FILE_BYTES = 64 * 1024;
const KEEP_BYTES = 4096;
const FILES = 4;
/** A few rounds take well under a second; this long without one, the guest's I/O is stuck. */
const STUCK_MS = 30_000;

const SCRIPT = `set -e
mount -t virtiofs ${TAG} /mnt
/bin/fs-rounds /mnt ${ROUNDS_AFTER * (HANDOVERS + 1)} 5000
umount /mnt
echo FS-HANDOVER-DONE
`;

/** fs-rounds.c's fill(): the bytes the guest wrote for `seed`. */
function fill(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = (Math.imul(seed, 2654435761) + 12345) >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = (x >>> 16) & 0xff;
  }
  return b;
}

/** The console, watched: waits for a pattern to show, failing once the guest has ended without it. */
class Console {
  text = '';
  ended = false;
  private waiters: { re: RegExp; resolve: () => void; reject: (e: Error) => void }[] = [];
  feed(c: string): void {
    this.text += c;
    for (const w of [...this.waiters]) if (w.re.test(this.text)) (this.waiters.splice(this.waiters.indexOf(w), 1), w.resolve());
  }
  end(): void {
    this.ended = true;
    for (const w of this.waiters.splice(0)) w.reject(new Error(`the guest ended before ${w.re} showed`));
  }
  /** Rejects if `re` has not shown in `ms` (a guest that lost its device hangs for ever). */
  waitFor(re: RegExp, ms: number): Promise<void> {
    if (re.test(this.text)) return Promise.resolve();
    if (this.ended) return Promise.reject(new Error(`the guest ended before ${re} showed`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.re !== re);
        reject(new Error(`${re} did not show in ${ms} ms: the guest's I/O is stuck`));
      }, ms);
      this.waiters.push({ re, resolve: () => (clearTimeout(timer), resolve()), reject: (e) => (clearTimeout(timer), reject(e)) });
    });
  }
  /** The last round the guest completed. */
  lastAck(): number {
    const all = [...this.text.matchAll(/^ACK (\d+)$/gm)];
    return all.length ? Number(all[all.length - 1][1]) : 0;
  }
}

guestTest('QEMU 10 virtio-fs without reconnect: the host taken over twice (--take-over, live); a file kept open still reads and writes, every round verifies, the share holds what the guest wrote', async (t) => {
  t.timeout(300_000);
  if (!existsSync(FS_PLUGIN)) return t.fail(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const qemu = (await ensureQemu10()).binary;
  const top = mkdtempSync(join(tmpdir(), 'qemu-fs-handover-'));
  const share = join(top, 'share');
  mkdirSync(share);
  const probe = join(top, 'fs-rounds');
  execFileSync('gcc', ['-static', '-O2', '-o', probe, ROUNDS_SRC], { stdio: 'pipe' });
  const sock = join(top, 'fs.sock');
  const hostArgs = ['--socket-path', sock, '--plugin', FS_PLUGIN, '--shared-dir', share, '--tag', TAG, '--call-deadline', '2000'];
  const hosts: HostProcess[] = [await startHost(hostArgs)];
  const con = new Console();
  const ticks: number[] = [];
  let partial = '';
  const windows: { from: number; to: number; ackBefore: number; ackAfter: number; oldExit: number | null }[] = [];

  const takeOver = async () => {
    const old = hosts[hosts.length - 1];
    const oldExit = new Promise<number | null>((resolve) => (old.child.exitCode !== null ? resolve(old.child.exitCode) : old.child.once('exit', (c) => resolve(c))));
    const ackBefore = con.lastAck();
    const from = performance.now();
    const fresh = await startHost([...hostArgs, '--take-over']);
    hosts.push(fresh);
    await fresh.waitForLog(/session taken over from the previous host process|its front-end reconnects here/, 60_000);
    windows.push({ from, to: performance.now(), ackBefore, ackAfter: con.lastAck(), oldExit: await oldExit });
  };
  const orchestrate = async () => {
    await con.waitFor(new RegExp(`^ACK ${ROUNDS_AFTER}$`, 'm'), 120_000);
    for (let k = 0; k < HANDOVERS; k++) {
      await takeOver();
      // A few rounds on the new host (they start after it took over) before the next step.
      await con.waitFor(new RegExp(`^ACK ${con.lastAck() + ROUNDS_AFTER}$`, 'm'), STUCK_MS);
    }
    writeFileSync(join(share, 'stop'), '');
  };

  let r: BootResult | undefined;
  try {
    // A failed step (the guest stuck, a take-over that failed) stops QEMU at once.
    const abort = new AbortController();
    const steps = orchestrate();
    steps.catch(() => abort.abort());
    r = await bootGuest({
      qemuBinary: qemu,
      timeoutMs: 200_000,
      signal: abort.signal,
      qemuArgs: ['-chardev', `socket,id=fs0,path=${sock}`, '-device', `vhost-user-fs-pci,chardev=fs0,tag=${TAG}`],
      files: { 'bin/fs-rounds': readFileSync(probe) },
      script: SCRIPT,
      onOutput: (c) => {
        partial += c;
        const lines = partial.split('\n');
        partial = lines.pop()!;
        const now = performance.now();
        for (const l of lines) if (/^T \d+$/.test(l)) ticks.push(now);
        con.feed(c);
      },
    });
    con.end();
    const stepError = await steps.then(() => undefined, (e: Error) => e);
    const out = r.scriptOutput;
    const why = `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n--- console ---\n${r.output.replace(/^T \d+\n/gm, '').slice(-5000)}\n` +
      `--- qemu stderr ---\n${r.qemuStderr.slice(-3000)}` + hosts.map((h, i) => `\n--- host ${i} ---\n${h.log().slice(-3000)}`).join('');
    t.is(stepError, undefined, `${stepError?.message}\n${why}`);
    t.is(r.exitCode, 0, why);
    t.regex(out, /FS-HANDOVER-DONE/, why);
    const done = Number(/^DONE (\d+)$/m.exec(out)?.[1]);
    t.notRegex(out, /^(ERR|BAD) /m, `the guest saw an error or read back wrong data\n${why}`);
    t.notRegex(out, /TOO-MANY-ROUNDS|Input\/output error|Transport endpoint is not connected|Stale file handle|No such device/, why);
    // The guest kernel's virtio and FUSE layers saw nothing wrong either.
    t.notRegex(r.output, /virtio.*(broken|error)|is not a head|fuse.*(error|fail|abort)|virtiofs.*(error|fail)|I\/O error/i, why);

    t.is(windows.length, HANDOVERS);
    t.is(hosts.length, HANDOVERS + 1);
    for (const [k, w] of windows.entries()) {
      t.is(w.oldExit, 0, `the old host of handover ${k + 1} exited cleanly\n${why}`);
      // The file opened before round 1 was written, fsynced and read back in rounds after this handover.
      t.true(done >= w.ackAfter + ROUNDS_AFTER, `rounds ran on the new host after handover ${k + 1} (ACK ${w.ackAfter}, DONE ${done})`);
    }
    for (const h of hosts.slice(1)) {
      t.regex(h.log(), /took the device and its connected front-end over/, why);
      t.regex(h.log(), /the session carries on here without a reconnect/, why);
      t.notRegex(h.log(), /front-end connected/, 'QEMU never connected again: its connection moved');
    }
    t.regex(hosts[0].log(), /front-end connected/, 'QEMU connected once, to the first host');
    // QEMU exiting at the end may reset the socket (ECONNRESET at ERROR level): not the device's doing.
    for (const [i, h] of hosts.entries()) {
      const problems = h.log().split('\n').filter((l) => / (ERROR|WARN) /.test(l) && !/ECONNRESET/.test(l));
      t.deepEqual(problems, [], `host ${i}\n${why}`);
    }

    // The share holds exactly what the guest wrote: the kept-open file, block by block, and each
    // of the whole files as its last round wrote it.
    const keep = readFileSync(join(share, 'keep'));
    t.is(keep.length, done * KEEP_BYTES, 'the kept-open file has one block per round');
    const badBlocks = Array.from({ length: done }, (_, i) => i + 1).filter((round) => !keep.subarray((round - 1) * KEEP_BYTES, round * KEEP_BYTES).equals(fill(KEEP_BYTES, 100000 + round)));
    t.deepEqual(badBlocks, [], 'rounds whose block of the kept-open file does not hold what the guest wrote');
    t.deepEqual(readdirSync(join(share, 'd')).sort(), Array.from({ length: FILES }, (_, k) => `f${k}`));
    for (let k = 0; k < FILES; k++) {
      const last = done - ((done - k) % FILES + FILES) % FILES;
      t.true(readFileSync(join(share, 'd', `f${k}`)).equals(fill(FILE_BYTES, last)), `d/f${k} holds what round ${last} wrote`);
    }

    // The guest-visible pause: the longest gap between two ticks around each handover.
    const gaps = ticks.slice(1).map((x, i) => ({ at: x, gap: x - ticks[i] }));
    const median = [...gaps].map((g) => g.gap).sort((a, b) => a - b)[Math.floor(gaps.length / 2)];
    const pauses = windows.map((w) => Math.max(...gaps.filter((g) => g.at >= w.from && g.at - g.gap <= w.to + 2000).map((g) => g.gap)));
    t.true(ticks.length > 20, `the ticker ran (${ticks.length} ticks)`);
    t.log(
      `guest: ${done} rounds, ${r.durationMs} ms; handovers after rounds ${windows.map((w) => w.ackBefore).join(', ')}; ${ticks.length} ticks, median gap ${median?.toFixed(0)} ms; ` +
        `longest gap around each handover: ${pauses.map((p) => `${p.toFixed(0)} ms`).join(', ')}; --take-over to the new host serving: ${windows.map((w) => `${(w.to - w.from).toFixed(0)} ms`).join(', ')}; ` +
        `rings stopped (old host): ${hosts.slice(0, -1).map((h) => /rings stopped ([\d.]+) ms/.exec(h.log())?.[1] ?? '?').join(', ')} ms`,
    );
  } finally {
    con.end();
    for (const h of hosts) if (h.child.exitCode === null) await h.stop();
    rmSync(top, { recursive: true, force: true });
  }
});
