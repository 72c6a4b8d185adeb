// The host process under fuzzing (test/fuzz/host-entry.ts: the real Host, two blk devices) and
// the host-wide oracles: it is alive, both devices still serve a fresh front-end, its fd table
// returns to where it was, and its log has no stack trace.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend } from '../../host/frontend/driver.ts';
import { BlkDevice } from '../../host/frontend/blk.ts';
import { REPO } from '../helpers/host-process.ts';
import type { Finding } from './case.ts';
import { Prng } from './prng.ts';
import { TARGET_DISK_BYTES } from './guest-layout.ts';

export const PLUGIN = join(REPO, 'dist', 'plugins', 'blk.wasm');
const ENTRY = join(REPO, 'test', 'fuzz', 'host-entry.ts');

/** A line that only an uncaught exception or a crash prints. */
const CRASH_LINE = /^\s+at \S|\b(TypeError|ReferenceError|SyntaxError|RangeError: Maximum call stack)\b|Uncaught|FATAL ERROR|Segmentation fault|Bus error|node:internal/;
const PROBE_TIMEOUT_MS = 10_000;
const FD_SETTLE_MS = 3000;
const KEEP_LINES = 400;

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Hosts still running: killed if the fuzzer itself exits first, so none is left behind. */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export class FuzzTarget {
  private tail: string[] = [];
  private partial = '';
  private crashLines: string[] = [];
  lines = 0;
  private baseline = -1;
  private probeCount = 0;

  private constructor(readonly child: ChildProcess, readonly dir: string, private readonly exited: Promise<void>) {}

  get targetSocket(): string {
    return join(this.dir, 'target.sock');
  }

  get bystanderSocket(): string {
    return join(this.dir, 'bystander.sock');
  }

  static async start(): Promise<FuzzTarget> {
    if (!existsSync(PLUGIN)) throw new Error(`${PLUGIN} is missing: build the plugins first (node build.mjs)`);
    const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-fuzz-'));
    const child = spawn(process.execPath, ['--import', 'tsx', ENTRY, dir, PLUGIN, String(TARGET_DISK_BYTES)], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
    live.add(child);
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    void exited.then(() => live.delete(child));
    const t = new FuzzTarget(child, dir, exited);
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => t.onLog(d));
    const deadline = Date.now() + 30_000;
    while (!t.tail.some((l) => /serving target and bystander/.test(l))) {
      if (!t.alive) throw new Error(`the fuzz host exited before serving:\n${t.tail.join('\n')}`);
      if (Date.now() > deadline) {
        await t.stop();
        throw new Error(`the fuzz host did not start within 30 s:\n${t.tail.join('\n')}`);
      }
      await sleep(20);
    }
    return t;
  }

  private onLog(d: string): void {
    const parts = (this.partial + d).split('\n');
    this.partial = parts.pop()!;
    for (const l of parts) {
      this.lines++;
      this.tail.push(l);
      if (CRASH_LINE.test(l)) this.crashLines.push(l);
    }
    if (this.tail.length > KEEP_LINES * 2) this.tail = this.tail.slice(-KEEP_LINES);
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  recentLog(n = 60): string[] {
    return this.tail.slice(-n);
  }

  fdCount(): number {
    return readdirSync(`/proc/${this.child.pid}/fd`).length;
  }

  /** A fresh front-end on `socket` writes a sector and reads it back. */
  private async probe(socket: string, label: string): Promise<Finding | null> {
    const sector = new Prng(`probe:${this.probeCount++}`).int(2048);
    const data = new Prng(`probe-data:${this.probeCount}`).bytes(512);
    const box: { fe: VhostUserFrontend | null; settled: boolean } = { fe: null, settled: false };
    const attempt = (async () => {
      box.fe = await VhostUserFrontend.connect(socket, { memoryBytes: 256 << 10, queues: [16] });
      const blk = new BlkDevice(box.fe.queues[0]);
      await blk.write(sector, data);
      const back = await blk.read(sector, 512);
      if (Buffer.compare(Buffer.from(back), Buffer.from(data)) !== 0) throw new Error(`sector ${sector} read back other bytes than were written`);
    })().finally(() => (box.settled = true));
    let failure: Finding | null = null;
    try {
      await withTimeout(attempt, PROBE_TIMEOUT_MS, `${label} probe`);
    } catch (e) {
      failure = { oracle: `${label}-unserved`, detail: `a fresh front-end on the ${label} device failed: ${(e as Error).message}` };
    }
    if (box.settled) await box.fe?.close().catch(() => {});
    else void attempt.catch(() => {}).finally(() => box.fe?.close().catch(() => {}));
    return failure;
  }

  /** Host-wide oracles after a case: first failure, or null. */
  async check(): Promise<Finding | null> {
    if (!this.alive) return this.died();
    if (this.crashLines.length > 0) return { oracle: 'stack-trace', detail: `the host logged: ${this.crashLines.slice(0, 5).join(' | ')}` };
    const bystander = await this.probe(this.bystanderSocket, 'bystander');
    if (bystander) return (await this.exitSoon()) ? this.died() : bystander;
    const target = await this.probe(this.targetSocket, 'target');
    if (target) return (await this.exitSoon()) ? this.died() : target;
    if (!this.alive) return this.died();
    if (this.crashLines.length > 0) return { oracle: 'stack-trace', detail: `the host logged: ${this.crashLines.slice(0, 5).join(' | ')}` };
    // The first check sets the baseline: everything after must come back to it.
    if (this.baseline < 0) {
      await sleep(200);
      this.baseline = this.fdCount();
      return null;
    }
    const end = Date.now() + FD_SETTLE_MS;
    let n = this.fdCount();
    while (n > this.baseline && Date.now() < end) {
      await sleep(25);
      n = this.fdCount();
    }
    if (n > this.baseline) {
      const f = { oracle: 'fd-leak', detail: `the host holds ${n} fds after the case, ${n - this.baseline} more than the ${this.baseline} it settles at` };
      this.baseline = n; // report each leak once
      return f;
    }
    return null;
  }

  /** A failed probe may be the host dying under it: give the exit a moment to be seen. */
  private async exitSoon(): Promise<boolean> {
    await Promise.race([this.exited, sleep(1000)]);
    return !this.alive;
  }

  private died(): Finding {
    const how = this.child.signalCode ? `killed by ${this.child.signalCode}` : `exited with code ${this.child.exitCode}`;
    return { oracle: 'host-died', detail: `the host process ${how}` };
  }

  async stop(): Promise<void> {
    if (this.alive) {
      this.child.kill('SIGTERM');
      const done = await Promise.race([this.exited.then(() => true), sleep(3000).then(() => false)]);
      // A host that ignores SIGTERM (a wedged worker) is killed: the fuzzer must go on.
      if (!done) this.child.kill('SIGKILL');
    }
    await this.exited;
    rmSync(this.dir, { recursive: true, force: true });
  }
}
