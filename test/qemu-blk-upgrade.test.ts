// Live plugin upgrade under a real guest (issue 15, item 3; docs/upgrade.md): vhost-user-blk-pci
// of QEMU 7.2 (two vCPUs, two queues) and of QEMU 10 (one queue) served by the single-device
// host, whose blk plugin is replaced four times (0.2.0 -> 0.3.0 -> 0.2.0 ...) with
// `vhost-wasm upgrade --socket S --plugin FILE` while the guest writes and verifies patterns
// from eight direct-I/O dd processes at once. The guest must see no I/O error and every round
// must verify; the image, read on the host at the end, holds what the last round wrote.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { hasQemu, type BootResult } from './guest/qemu.ts';
import { ensureQemu10 } from './guest/qemu10.ts';
import { patternRoundsScript, SLOT_BYTES } from './guest/pattern-rounds.ts';
import { REPO, runCli, startHost, type HostProcess } from './helpers/host-process.ts';
import { assertRoundsPassed, bootPatternGuest, RoundActions, scratchDisk, slotsNotFrom } from './helpers/pattern-disk.ts';
import { buildPlugin } from '../plugins/build-plugins.mjs';
import type { MethodResults } from '../host/daemon/methods.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const BLK030 = join(REPO, 'dist', 'test-plugins', 'upgrade-blk-0.3.0.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu();
const guestTest = skip ? test.serial.skip : test.serial;

const KiB = 1024;
const MiB = 1024 * KiB;
const PATTERNS = Array.from({ length: 5 }, () => randomBytes(SLOT_BYTES));
const ROUNDS = 40;
const UPGRADE_IN_ROUNDS = [3, 10, 17, 24];

/** A 4 KiB block written again and again, one direct write at a time, "T n" after each (ticker). */
const TICK_BLOCK = (4 * MiB) / (4 * KiB);

/** The rounds of test/guest/pattern-rounds.ts; with `ticker`, the single-write ticker beside them. */
const PATTERN_SCRIPT = (rounds: number, ticker = false) => patternRoundsScript({ rounds, patterns: PATTERNS, ...(ticker ? { tickBlock: TICK_BLOCK } : {}) });

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  await buildPlugin({ root: REPO, sources: [join(REPO, 'test', 'fixtures', 'plugins', 'upgrade-blk.c')], outFile: BLK030 });
});

function explain(r: BootResult, h: HostProcess): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n--- console ---\n${r.output.slice(-5000)}\n` +
    `--- qemu stderr ---\n${r.qemuStderr.slice(-3000)}\n--- host log ---\n${h.log().slice(-4000)}`;
}

const QEMU7 = { name: 'QEMU 7.2', binary: async () => 'qemu-system-x86_64', queues: 2 };
const QEMU10 = { name: 'QEMU 10', binary: async () => (await ensureQemu10()).binary, queues: 1 };

for (const qemu of [QEMU7, QEMU10]) {
  guestTest(`${qemu.name} vhost-user-blk, ${qemu.queues} queue(s): the plugin upgraded 4 times with vhost-wasm upgrade under direct I/O at depth 8; no guest error, every round verifies`, async (t) => {
    t.timeout(600_000);
    const qemuBinary = await qemu.binary();
    const { dir, image, sock } = scratchDisk('vhost-wasm-qemu-upgrade-', 8 * MiB);
    const h = await startHost(['--socket-path', sock, '--plugin', BLK, '--storage', image, ...(qemu.queues > 1 ? ['--queue-threads', '2'] : [])]);
    const outcomes: { round: number; code: number | null; stderr: string; result?: MethodResults['plugin-upgrade']; guestDone: boolean }[] = [];
    const upgrades = new RoundActions(UPGRADE_IN_ROUNDS, async (round, k) => {
      const r = await runCli(['upgrade', '--socket', sock, '--plugin', k % 2 === 0 ? BLK030 : BLK, '--json']);
      outcomes.push({ round, code: r.code, stderr: r.stderr, guestDone: /DONE/.test(upgrades.seen), ...(r.code === 0 ? { result: JSON.parse(r.stdout) as MethodResults['plugin-upgrade'] } : {}) });
    });
    let r: BootResult | undefined;
    try {
      r = await bootPatternGuest({ qemuBinary, queues: qemu.queues, sock, patterns: PATTERNS, script: PATTERN_SCRIPT(ROUNDS), onOutput: (c) => upgrades.feed(c) });
      await upgrades.settled();
      assertRoundsPassed(t, r, ROUNDS, explain(r, h));
      t.is(outcomes.length, UPGRADE_IN_ROUNDS.length);
      for (const [k, o] of outcomes.entries()) {
        t.is(o.code, 0, `upgrade in round ${o.round}: ${o.stderr}`);
        t.false(o.guestDone, `the upgrade in round ${o.round} ended after the guest's I/O: it proves nothing`);
        t.like(o.result, { name: 'blk', frontEnd: true, fromVersion: k % 2 === 0 ? '0.2.0' : '0.3.0', toVersion: k % 2 === 0 ? '0.3.0' : '0.2.0' });
        t.deepEqual(o.result!.rings, qemu.queues === 2 ? [0, 1] : [0], 'every ring the guest runs moved');
      }
      t.log(`rings stopped per upgrade (rounds ${outcomes.map((o) => o.round).join(', ')}): ${outcomes.map((o) => `${o.result?.stoppedMs.toFixed(1)} ms`).join(', ')}; guest ${ROUNDS} rounds in ${r.durationMs} ms`);
    } finally {
      await upgrades.settled();
      await h.stop();
    }
    t.deepEqual(slotsNotFrom(image, PATTERNS, ROUNDS), [], 'slots of the image not holding what the last round wrote');
    rmSync(dir, { recursive: true, force: true });
  });
}

// Host upgrade (docs/upgrade.md, "Host upgrade"): a new host process started with --take-over
// three times during the guest's rounds. `--take-over-mode socket` (the fallback): each time
// the old host hands over its sockets and closes the connection, QEMU reconnects to the new
// host and gives it the inflight area. The default (live): the connected session moves with
// them, and QEMU, started without any reconnect option, keeps its connection. The ticker's
// gaps measure what the guest sees: the longest gap around each take-over, against the median
// gap of the run (docs/BENCHMARKS.md, "Host upgrade").
const TAKEOVER_ROUNDS = 30;
const TAKEOVER_IN_ROUNDS = [3, 12, 21];
const QEMU7_RECONNECT = { ...QEMU7, reconnect: 'reconnect=1', live: false };
const QEMU10_RECONNECT = { ...QEMU10, reconnect: 'reconnect-ms=100', live: false };
const QEMU10_LIVE = { ...QEMU10, reconnect: 'no reconnect option (live handover)', live: true };
// QEMU 7.2 has its own vhost-user-blk start/stop sequence and two queues on two queue threads here.
const QEMU7_LIVE = { ...QEMU7, reconnect: 'no reconnect option (live handover)', live: true };

for (const qemu of [QEMU7_RECONNECT, QEMU10_RECONNECT, QEMU10_LIVE, QEMU7_LIVE]) {
  guestTest(`${qemu.name} vhost-user-blk, ${qemu.queues} queue(s), ${qemu.reconnect}: the host taken over 3 times (--take-over) under direct I/O; no guest error, every round verifies; the guest-visible pause is measured`, async (t) => {
    t.timeout(600_000);
    const qemuBinary = await qemu.binary();
    const { dir, image, sock } = scratchDisk('vhost-wasm-qemu-takeover-', 8 * MiB);
    const hostArgs = ['--socket-path', sock, '--plugin', BLK, '--storage', image, ...(qemu.queues > 1 ? ['--queue-threads', '2'] : [])];
    const hosts: HostProcess[] = [await startHost(hostArgs)];
    let partial = '';
    const ticks: number[] = [];
    const windows: { round: number; from: number; to: number; guestDone: boolean; oldExit: number | null }[] = [];
    const takeOver = async (round: number) => {
      const from = performance.now();
      const old = hosts[hosts.length - 1];
      const oldExit = new Promise<number | null>((resolve) => (old.child.exitCode !== null ? resolve(old.child.exitCode) : old.child.once('exit', (c) => resolve(c))));
      const fresh = await startHost([...hostArgs, '--take-over', ...(qemu.live ? [] : ['--take-over-mode', 'socket'])]);
      hosts.push(fresh);
      // Served once QEMU is connected again (live: the session runs on) and the rings run on the new host.
      await fresh.waitForLog(qemu.live ? /session taken over from the previous host process/ : /front-end connected/, 60_000);
      windows.push({ round, from, to: performance.now(), guestDone: /DONE/.test(takeOvers.seen), oldExit: await oldExit });
    };
    const takeOvers = new RoundActions(TAKEOVER_IN_ROUNDS, takeOver);
    const onOutput = (c: string) => {
      partial += c;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      const now = performance.now();
      for (const l of lines) if (/^T \d+\r?$/.test(l)) ticks.push(now);
      takeOvers.feed(c);
    };
    let r: BootResult | undefined;
    try {
      r = await bootPatternGuest({ qemuBinary, queues: qemu.queues, sock, chardev: qemu.live ? undefined : qemu.reconnect, patterns: PATTERNS, script: PATTERN_SCRIPT(TAKEOVER_ROUNDS, true), onOutput });
      await takeOvers.settled();
      const last = hosts[hosts.length - 1];
      const why = explain(r, last) + hosts.slice(0, -1).map((h, i) => `\n--- host ${i} ---\n${h.log().slice(-2000)}`).join('');
      assertRoundsPassed(t, r, TAKEOVER_ROUNDS, why);
      t.is(windows.length, TAKEOVER_IN_ROUNDS.length);
      t.is(hosts.length, TAKEOVER_IN_ROUNDS.length + 1);
      for (const w of windows) {
        t.false(w.guestDone, `the take-over in round ${w.round} ended after the guest's I/O`);
        t.is(w.oldExit, 0, `the old host of round ${w.round} exited cleanly`);
      }
      for (const h of hosts.slice(1)) {
        if (qemu.live) {
          t.regex(h.log(), /took the device and its connected front-end over/);
          t.notRegex(h.log(), /front-end connected/, 'QEMU never connected again: its connection moved');
        } else {
          t.regex(h.log(), /took the device over/);
        }
        t.regex(h.log(), new RegExp(`inflight area set: ${qemu.queues} queue`), 'the new host has the inflight area (QEMU handed it over again, or it moved with the session)');
      }
      // The guest-visible pause: the longest gap between two ticks around each take-over.
      const gaps = ticks.slice(1).map((x, i) => ({ at: x, gap: x - ticks[i] }));
      const median = [...gaps].map((g) => g.gap).sort((a, b) => a - b)[Math.floor(gaps.length / 2)];
      const pauses = windows.map((w) => Math.max(...gaps.filter((g) => g.at >= w.from && g.at - g.gap <= w.to + 2000).map((g) => g.gap)));
      t.true(ticks.length > 20, `the ticker ran (${ticks.length} ticks)`);
      t.log(
        `${qemu.name} ${qemu.reconnect}: ${ticks.length} ticks, median gap ${median.toFixed(0)} ms; longest gap around each take-over: ${pauses.map((p) => `${p.toFixed(0)} ms`).join(', ')}; ` +
          `take-over command to the new host serving QEMU: ${windows.map((w) => `${(w.to - w.from).toFixed(0)} ms`).join(', ')}` +
          (qemu.live ? `; rings stopped (old host): ${hosts.slice(0, -1).map((h) => /rings stopped ([\d.]+) ms/.exec(h.log())?.[1] ?? '?').join(', ')} ms` : ''),
      );
    } finally {
      await takeOvers.settled();
      for (const h of hosts) if (h.child.exitCode === null) await h.stop();
    }
    t.deepEqual(slotsNotFrom(image, PATTERNS, TAKEOVER_ROUNDS), [], 'slots of the image not holding what the last round wrote');
    rmSync(dir, { recursive: true, force: true });
  });
}
