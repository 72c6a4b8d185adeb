// A host SIGKILLed five times under a real guest's disk I/O and restarted on the same socket
// (issue 15, item 2): vhost-user-blk-pci of QEMU 7.2 (`-chardev socket,...,reconnect=1`) and of
// QEMU 10 (`reconnect-ms=1000`), one guest boot each, reconnects each time, hands the new host its inflight area (SET_INFLIGHT_FD) and the ring's
// used index, and the guest goes on without an I/O error.
//
// The image is served through a slow backing (test/guest/slow-disk.ts: writes throttled to 30
// per second), so that a round's 32 writes take about a second and a kill lands while the host
// works through a batch: the restarted host must then resubmit what the area marks in flight.
//
// The guest writes patterns with direct I/O from eight dd processes at once (so up to eight
// requests are in flight on the ring), while a ninth process reads one block below the slots
// over and over (direct I/O too): the backing answers those reads at once and throttles the
// writes, so reads made available after a write complete before it, and the ring completes out
// of order (the host logs the first such completion of each ring at debug level; the test wants
// one before every kill). The guest waits, reads every slot back (again eight at once) and
// checks it, round after round; each round's slots get other patterns than the last one's, so a
// write run twice (a stale copy landing after a newer one) or lost shows up as a wrong slot in a
// later check or in the image. A request completed twice would also make the guest's virtio
// driver report a used id that is not in flight and break the device. The host is killed at
// a random moment inside rounds 3, 8, 13, 18 and 23. At the end the image file, read on the host,
// holds in every slot what the guest's last acknowledged round wrote.

import test from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { hasQemu, hasStorageDaemon, type BootResult } from './guest/qemu.ts';
import { startSlowDisk, type SlowDisk } from './guest/slow-disk.ts';
import { ensureQemu10 } from './guest/qemu10.ts';
import { patternRoundsScript, SLOT_BYTES } from './guest/pattern-rounds.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { assertRoundsPassed, bootPatternGuest, RoundActions, scratchDisk, slotsNotFrom } from './helpers/pattern-disk.ts';

const BLK_PLUGIN = join(REPO, 'dist', 'plugins', 'blk.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu() || !hasStorageDaemon();
const guestTest = skip ? test.serial.skip : test.serial;

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK = 8 * MiB;
const PATTERNS = Array.from({ length: 5 }, () => randomBytes(SLOT_BYTES));
const ROUNDS = 28;
const KILL_IN_ROUNDS = [3, 8, 13, 18, 23];
// A 4 KiB block below the slots, read over and over beside the rounds.
const READ_BLOCK = 16;
const SCRIPT = patternRoundsScript({ rounds: ROUNDS, patterns: PATTERNS, startMarker: 'IO-START', readBlock: READ_BLOCK });
const FIRST_OVERTAKE = /ring (\d+): first out-of-order completion/g;

function explain(r: BootResult, hosts: HostProcess[]): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} aborted=${r.aborted} qemu=${r.qemuExitCode} ${r.durationMs} ms\n` +
    `--- console ---\n${r.output.slice(-6000)}\n--- qemu stderr ---\n${r.qemuStderr.slice(-4000)}\n` +
    hosts.map((h, i) => `--- host ${i} log ---\n${h.log().slice(-3000)}`).join('\n');
}

// QEMU 7.2 runs two vCPUs and two queues (each vCPU's I/O on its own ring, one inflight region each).
const QEMU7 = { name: 'QEMU 7.2', binary: async () => 'qemu-system-x86_64', reconnect: 'reconnect=1', packed: false, queues: 2 };
const QEMU10 = { name: 'QEMU 10', binary: async () => (await ensureQemu10()).binary, reconnect: 'reconnect-ms=1000', packed: false, queues: 1 };
// The same under a packed ring (the device's `packed=on`): the packed inflight region.
const QEMU10_PACKED = { ...QEMU10, packed: true };

for (const qemu of [QEMU7, QEMU10, QEMU10_PACKED]) {
guestTest(`${qemu.name} vhost-user-blk${qemu.packed ? ' (packed ring)' : ''}, ${qemu.queues} queue(s), ${qemu.reconnect}: the host SIGKILLed and restarted 5 times under direct I/O at depth 8; nothing acknowledged is lost, nothing runs twice`, async (t) => {
  t.timeout(600_000);
  const qemuBinary = await qemu.binary();
  if (!existsSync(BLK_PLUGIN)) return t.fail(`${BLK_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const { dir, image, sock } = scratchDisk('vhost-wasm-reconnect-', DISK);
  const slow: SlowDisk = await startSlowDisk({ image, mountpoint: join(dir, 'slow.img'), writeIops: 30 });
  // Debug: the runner says when a ring first completes a request out of order.
  const hostArgs = ['--socket-path', sock, '--plugin', BLK_PLUGIN, '--storage', slow.path, '--log-level', 'debug'];
  const hosts: HostProcess[] = [await startHost(hostArgs)];
  const current = () => hosts[hosts.length - 1];

  // Kills and restarts run one after another, off the console callback.
  const killErrors: unknown[] = [];
  const kills = new RoundActions(KILL_IN_ROUNDS, async () => {
    try {
      // Somewhere inside the round's second or so of throttled writes, once the eight dd
      // processes have started and their requests are on the ring or in the host's batch.
      await new Promise((r) => setTimeout(r, 200 + Math.floor(Math.random() * 300)));
      await current().stop('SIGKILL');
      hosts.push(await startHost(hostArgs));
    } catch (e) {
      killErrors.push(e);
    }
  });

  let r: BootResult | undefined;
  try {
    r = await bootPatternGuest({ qemuBinary, queues: qemu.queues, sock, chardev: qemu.reconnect, packed: qemu.packed, patterns: PATTERNS, script: SCRIPT, onOutput: (c) => kills.feed(c) });
    await kills.settled();
    t.deepEqual(killErrors, [], 'every kill and restart worked');
    t.log(`guest: ${ROUNDS} rounds in ${r.durationMs} ms across ${hosts.length} host processes`);
    assertRoundsPassed(t, r, ROUNDS, explain(r, hosts));
    t.deepEqual([...kills.started].sort((a, b) => a - b), KILL_IN_ROUNDS, 'the host was killed in each of the rounds planned');
    t.is(hosts.length, KILL_IN_ROUNDS.length + 1);
    for (let k = 1; k <= ROUNDS; k++) t.regex(r.scriptOutput, new RegExp(`^ACK ${k}$`, 'm'), `round ${k} not acknowledged`);

    // Every restarted host was given the area and started its ring from it.
    t.regex(hosts[0].log(), new RegExp(`inflight area: \\d+ bytes for ${qemu.queues} ${qemu.packed ? 'packed' : 'split'} queue`), hosts[0].log());
    for (const h of hosts.slice(1)) {
      t.regex(h.log(), new RegExp(`inflight area set: ${qemu.queues} queue\\(s\\) of \\d+`), h.log());
      t.notRegex(h.log(), /inflight area not used/, h.log());
    }
    const perRing = new Map<string, number>();
    for (const h of hosts) {
      for (const m of h.log().matchAll(/ring (\d+): resubmitting (\d+) in-flight/g)) perRing.set(m[1], (perRing.get(m[1]) ?? 0) + Number(m[2]));
    }
    const resubmitted = [...perRing.values()].reduce((a, b) => a + b, 0);
    t.log(`requests resubmitted from the inflight area across the restarts: ${resubmitted} (${[...perRing].map(([r, n]) => `ring ${r}: ${n}`).join(', ')})`);
    // Each round keeps the host busy for about a second: the kills land inside batches.
    t.true(resubmitted > 0, `no kill landed while requests were in flight: the inflight area was never needed\n${explain(r, hosts)}`);
    // Completions went out of order on the ring before the kills: the reads, answered at once,
    // overtook the throttled writes made available before them. So the used index the
    // front-end restarted each ring at did not bound what was done (a later request was, an
    // earlier one was not), which only the inflight area tells the next host.
    const overtakenBeforeKill = hosts.slice(0, -1).map((h) => [...h.log().matchAll(FIRST_OVERTAKE)].map((m) => Number(m[1])));
    t.log(`rings that completed out of order before each kill: ${overtakenBeforeKill.map((rings, k) => `kill ${k + 1}: [${rings.join(', ')}]`).join('; ')}`);
    // Every host but the last lived through at least two rounds of writes beside the reader.
    // The last host stopped its rings when the guest shut down: how often they completed out of order.
    t.log(`the last host's rings, out-of-order completions: ${[...current().log().matchAll(/ring (\d+) stopped: (\d+) completion/g)].map((m) => `ring ${m[1]}: ${m[2]}`).join(', ') || 'none logged'}`);
    const why = explain(r, hosts);
    overtakenBeforeKill.forEach((rings, k) => t.true(rings.length > 0, `no ring completed a request out of order before kill ${k + 1}\n${why}`));
  } finally {
    await kills.settled();
    for (const h of hosts) await h.stop();
    await slow.stop();
  }

  // The image, read on the host: each slot holds what the last acknowledged round wrote.
  t.deepEqual(slotsNotFrom(image, PATTERNS, ROUNDS), [], 'slots of the image not holding what the last round wrote');
  rmSync(dir, { recursive: true, force: true });
});
}
