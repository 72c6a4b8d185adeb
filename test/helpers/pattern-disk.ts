// The host side of test/guest/pattern-rounds.ts, for the blk tests that move or kill the back-end
// while a real guest writes pattern rounds: the scratch image, the guest's boot, the actions fired
// at given rounds, and the checks of the guest's console and of the image afterwards.
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootGuest, type BootResult } from '../guest/qemu.ts';
import { SLOT_BASE, SLOT_BYTES, SLOTS } from '../guest/pattern-rounds.ts';

/** A fresh directory holding an empty (sparse) image of `bytes` and the device socket's path beside it. */
export function scratchDisk(prefix: string, bytes: number): { dir: string; image: string; sock: string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const image = join(dir, 'disk.img');
  writeFileSync(image, Buffer.alloc(0));
  execFileSync('truncate', ['-s', String(bytes), image]);
  return { dir, image, sock: join(dir, 'blk.sock') };
}

export interface PatternGuest {
  qemuBinary: string;
  /** vCPUs and the device's queues. */
  queues: number;
  /** The back-end's socket; `chardev` adds options to its -chardev (e.g. "reconnect=1"). */
  sock: string;
  chardev?: string;
  packed?: boolean;
  /** Pattern p is the guest's /guest/p<p>. */
  patterns: readonly Uint8Array[];
  script: string;
  onOutput: (c: string) => void;
}

/** A guest with a vhost-user-blk-pci device on `sock`, running the pattern rounds' `script`. */
export function bootPatternGuest(o: PatternGuest): Promise<BootResult> {
  return bootGuest({
    timeoutMs: 400_000,
    files: Object.fromEntries(o.patterns.map((b, p) => [`guest/p${p}`, b])),
    qemuBinary: o.qemuBinary,
    smp: o.queues,
    qemuArgs: [
      '-chardev', `socket,id=d0,path=${o.sock}${o.chardev ? `,${o.chardev}` : ''}`,
      '-device', `vhost-user-blk-pci,chardev=d0,num-queues=${o.queues}${o.packed ? ',packed=on' : ''}`,
    ],
    script: o.script,
    onOutput: o.onOutput,
  });
}

/**
 * Runs `action(round, k)` for the k-th of `rounds` once the console has shown "ROUND round", one
 * action after another and off the console callback (feed() is bootGuest's onOutput).
 */
export class RoundActions {
  /** The console so far. */
  seen = '';
  /** The rounds whose action has been started. */
  readonly started = new Set<number>();
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly rounds: readonly number[],
    private readonly action: (round: number, k: number) => Promise<void>,
  ) {}

  feed(c: string): void {
    this.seen += c;
    for (const [k, round] of this.rounds.entries()) {
      if (this.started.has(round) || !new RegExp(`ROUND ${round}\\n`).test(this.seen)) continue;
      this.started.add(round);
      this.chain = this.chain.then(() => this.action(round, k));
    }
  }

  /** Resolves once every action started so far has ended (rejects with the first that threw). */
  settled(): Promise<void> {
    return this.chain;
  }
}

/** The guest ran all `rounds`: no failed write, no slot read back wrong, no I/O or virtio error. */
export function assertRoundsPassed(t: ExecutionContext, r: BootResult, rounds: number, why: string): void {
  const out = r.scriptOutput;
  t.is(r.exitCode, 0, why);
  t.regex(out, new RegExp(`DONE ${rounds}`), why);
  t.notRegex(out, /^ERR /m, `a write failed in the guest\n${why}`);
  t.notRegex(out, /^BAD /m, `a slot read back wrong: a write was lost or ran twice\n${why}`);
  // The guest's block layer and virtio driver saw no error (a used id not in flight is
  // "id N is not a head!" from virtio_ring and breaks the device).
  t.notRegex(r.output, /I\/O error|is not a head|virtio.*(broken|error)|blk_update_request/i, why);
}

/** The slots of the image file that do not hold what round `round` wrote (pattern (round + j) mod n in slot j). */
export function slotsNotFrom(image: string, patterns: readonly Uint8Array[], round: number): number[] {
  const img = readFileSync(image);
  const bad: number[] = [];
  for (let j = 0; j < SLOTS; j++) {
    const got = img.subarray(SLOT_BASE + j * SLOT_BYTES, SLOT_BASE + (j + 1) * SLOT_BYTES);
    if (!got.equals(patterns[(round + j) % patterns.length])) bad.push(j);
  }
  return bad;
}
