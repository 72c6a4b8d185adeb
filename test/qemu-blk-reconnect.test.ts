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
// requests are in flight on the ring), waits, reads every slot back (again eight at once) and
// checks it, round after round; each round's slots get other patterns than the last one's, so a
// write run twice (a stale copy landing after a newer one) or lost shows up as a wrong slot in a
// later check or in the image. A request completed twice would also make the guest's virtio
// driver report a used id that is not in flight and break the device. The host is killed at
// a random moment inside rounds 3, 8, 13, 18 and 23. At the end the image file, read on the host,
// holds in every slot what the guest's last acknowledged round wrote.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, hasQemu, hasStorageDaemon, type BootResult } from './guest/qemu.ts';
import { startSlowDisk, type SlowDisk } from './guest/slow-disk.ts';
import { ensureQemu10 } from './guest/qemu10.ts';
import { patternRoundsScript, SLOT_BASE, SLOT_BYTES, SLOTS } from './guest/pattern-rounds.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const BLK_PLUGIN = join(REPO, 'dist', 'plugins', 'blk.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu() || !hasStorageDaemon();
const guestTest = skip ? test.serial.skip : test.serial;

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK = 8 * MiB;
const PATTERNS = Array.from({ length: 5 }, () => randomBytes(SLOT_BYTES));
const ROUNDS = 28;
const KILL_IN_ROUNDS = [3, 8, 13, 18, 23];
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');
/** The pattern round r writes to slot j (rounds count from 1). */
const patternOf = (r: number, j: number) => (r + j) % PATTERNS.length;

const SCRIPT = patternRoundsScript({ rounds: ROUNDS, patterns: PATTERNS, startMarker: 'IO-START' });

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
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-reconnect-'));
  const image = join(dir, 'disk.img');
  const sock = join(dir, 'blk.sock');
  writeFileSync(image, Buffer.alloc(0));
  execFileSync('truncate', ['-s', String(DISK), image]);
  const slow: SlowDisk = await startSlowDisk({ image, mountpoint: join(dir, 'slow.img'), writeIops: 30 });
  const hostArgs = ['--socket-path', sock, '--plugin', BLK_PLUGIN, '--storage', slow.path];
  const hosts: HostProcess[] = [await startHost(hostArgs)];
  const current = () => hosts[hosts.length - 1];

  // Kills and restarts run one after another, off the console callback.
  let seen = '';
  let chain: Promise<void> = Promise.resolve();
  const killed = new Set<number>();
  const killErrors: unknown[] = [];
  const onOutput = (c: string) => {
    seen += c;
    for (const k of KILL_IN_ROUNDS) {
      if (killed.has(k) || !new RegExp(`ROUND ${k}\\n`).test(seen)) continue;
      killed.add(k);
      chain = chain.then(async () => {
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
    }
  };

  let r: BootResult | undefined;
  try {
    r = await bootGuest({
      timeoutMs: 400_000,
      files: Object.fromEntries(PATTERNS.map((b, p) => [`guest/p${p}`, b])),
      qemuBinary,
      smp: qemu.queues,
      qemuArgs: ['-chardev', `socket,id=d0,path=${sock},${qemu.reconnect}`, '-device', `vhost-user-blk-pci,chardev=d0,num-queues=${qemu.queues}${qemu.packed ? ',packed=on' : ''}`],
      script: SCRIPT,
      onOutput,
    });
    await chain;
    t.deepEqual(killErrors, [], 'every kill and restart worked');
    const out = r.scriptOutput;
    t.log(`guest: ${ROUNDS} rounds in ${r.durationMs} ms across ${hosts.length} host processes`);
    t.is(r.exitCode, 0, explain(r, hosts));
    t.deepEqual([...killed].sort((a, b) => a - b), KILL_IN_ROUNDS, 'the host was killed in each of the rounds planned');
    t.is(hosts.length, KILL_IN_ROUNDS.length + 1);
    t.regex(out, new RegExp(`DONE ${ROUNDS}`), explain(r, hosts));
    t.notRegex(out, /^ERR /m, `a write failed in the guest\n${explain(r, hosts)}`);
    t.notRegex(out, /^BAD /m, `a slot read back wrong: a write was lost or ran twice\n${explain(r, hosts)}`);
    for (let k = 1; k <= ROUNDS; k++) t.regex(out, new RegExp(`^ACK ${k}$`, 'm'), `round ${k} not acknowledged`);
    // The guest's block layer and virtio driver saw no error (a used id not in flight is
    // "id N is not a head!" from virtio_ring and breaks the device).
    t.notRegex(r.output, /I\/O error|is not a head|virtio.*(broken|error)|blk_update_request/i, explain(r, hosts));

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
  } finally {
    await chain;
    for (const h of hosts) await h.stop();
    await slow.stop();
  }

  // The image, read on the host: each slot holds what the last acknowledged round wrote.
  const img = readFileSync(image);
  for (let j = 0; j < SLOTS; j++) {
    const got = img.subarray(SLOT_BASE + j * SLOT_BYTES, SLOT_BASE + (j + 1) * SLOT_BYTES);
    t.is(md5(got), md5(PATTERNS[patternOf(ROUNDS, j)]), `slot ${j} in the image`);
  }
  rmSync(dir, { recursive: true, force: true });
});
}
