// Live migration of the busybox guest between two QEMUs on this machine.
//
// The source boots the guest and runs `script`; the destination waits (-incoming defer)
// with the same command line except for its own vhost-user back-end sockets. When the
// source's console shows `migrateWhen`, QMP `migrate` runs; once it completed the harness
// writes a token to the destination's second serial port (ttyS1): the guest's background
// reader prints `MIGRATION-SEEN <token>` and makes `migrated` true, so the script's loop
// knows it now runs on the destination. The script ends as usual (GUEST-EXIT, power off).
//
// Each QEMU's console is its own stdout (-serial stdio): the source's stops at the
// switch-over, the destination's starts there, so nothing is lost or doubled.
//
// Guest side (sourced before `script`): `migrated` -> status 0 once the destination has
// delivered the token. A typical loop:
//   i=0; after=0
//   while [ $after -lt 3 ]; do i=$((i+1)); <I/O>; echo "ITER $i"; migrated && after=$((after+1)); done
//
// The result says which side broke when something did (`verdict`, `diagnosis`): the token
// echo needs only the guest's CPU, kernel and UART, not the device under test.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestImage, writeBootInitrd, type GuestImageOptions } from './image.ts';
import { assertGuestPrerequisites } from './prerequisites.ts';
import { EXIT_MARKER, parseConsole } from './protocol.ts';
import { Qmp, type QmpEvent } from './qmp.ts';
import { onceMoreAfterQemuAbort, qemuAbortBeforeScript } from './qemu-abort.ts';
import { qemuCommandLine } from './qemu.ts';
import { ensureQemu10 } from './qemu10.ts';
import { track } from './reaper.ts';

export type QemuChoice = 'qemu10' | 'system' | { binary: string };

export interface MigrationOptions {
  /** Guest script (busybox sh), started on the source; may call `migrated`. */
  script: string;
  files?: Record<string, string | Uint8Array>;
  /** Source-only QEMU arguments, e.g. its vhost-user -chardev/-device pair. */
  sourceArgs?: string[];
  /** The destination's: the same devices (same ids!) on its own back-end sockets. */
  destArgs?: string[];
  /** Default 'qemu10' (QEMU 7.2 + TCG + shared RAM hangs ~1 destination guest in 8). */
  qemu?: QemuChoice;
  memMiB?: number;
  /** Default 1: the configuration QEMU 10 migrated 11/11 times here. */
  smp?: number;
  kernelArgs?: string;
  image?: GuestImageOptions;
  /** Start the migration when the source's console matches this (default: the script started). */
  migrateWhen?: string | RegExp | ((sourceOutput: string) => boolean);
  /** Extra wait after `migrateWhen` matched. */
  migrateDelayMs?: number;
  /** migrate-set-capabilities on both sides, e.g. { 'postcopy-ram': true }. */
  capabilities?: Record<string, boolean>;
  /** migrate-set-parameters on the source; default { 'max-bandwidth': 4 GiB/s }. */
  parameters?: Record<string, unknown>;
  /** Runs after the migration completed, before the token is sent to the guest. */
  afterMigration?: (ctx: { source: Qmp; dest: Qmp }) => Promise<void>;
  /**
   * Whole run (default 120 s); per phase: boot to `migrateWhen` 60 s, migration 60 s, guest
   * ack 20 s, then the script's end (GUEST-EXIT) on the destination 60 s.
   */
  timeoutMs?: number;
  /** Boot to `migrateWhen` (default 60 s; a script that first walks a large tree needs more). */
  bootTimeoutMs?: number;
  migrationTimeoutMs?: number;
  ackTimeoutMs?: number;
  finishTimeoutMs?: number;
  onSourceOutput?: (chunk: string) => void;
  onDestOutput?: (chunk: string) => void;
}

export type MigrationVerdict =
  /** Migration completed, the guest answered on the destination, the script exited 0. */
  | 'ok'
  /**
   * The run never got to migrate: a QEMU did not start (either side; see diagnosis), or the
   * source never reached `migrateWhen` (boot failed, script failed early, a device failed).
   */
  | 'source-failed'
  /**
   * query-migrate ended failed/cancelled or did not finish in time, or the destination refused
   * the stream or never resumed: see diagnosis, migrateError and the QEMUs' stderr.
   */
  | 'migration-failed'
  /** Migration completed but the destination guest did not answer the token: the guest (kernel/CPU) broke. */
  | 'guest-broke'
  /** The guest answered on the destination but the script never finished: its device I/O is stuck. */
  | 'device-stuck'
  /** The script finished on the destination with a non-zero status: read scriptOutput (data mismatch, I/O error). */
  | 'script-failed';

export interface MigrationResult {
  verdict: MigrationVerdict;
  /** One sentence naming what broke: guest, device, migration or script. */
  diagnosis: string;
  /**
   * query-migrate's last status on the source: completed, failed, cancelled... or 'not-started' /
   * 'timeout'. "completed" means the source sent it all; whether the destination loaded it is
   * `destStatus` ('running', or 'exited' when it refused the stream).
   */
  migrateStatus: string;
  migrateError?: string;
  /** From query-migrate once completed (ms). */
  downtimeMs?: number;
  totalTimeMs?: number;
  setupTimeMs?: number;
  /** The last query-migrate reply, whole. */
  migrateInfo?: Record<string, any>;
  /** The destination's run state after completion: 'running' expected; 'exited' = it refused the stream. */
  destStatus?: string;
  /** ...and when the harness gave up waiting for the script ('exited' after a normal power-off). */
  destFinalStatus?: string;
  /** The guest printed MIGRATION-SEEN on the destination's console. */
  guestAnswered: boolean;
  sourceOutput: string;
  destOutput: string;
  /** The script's output across both sides (source part followed by destination part). */
  scriptOutput: string;
  /** The script's status as reported on the destination (null: never finished). */
  exitCode: number | null;
  sourceStderr: string;
  destStderr: string;
  events: { source: QmpEvent[]; dest: QmpEvent[] };
  binary: string;
  qemuVersion: string;
  timings: {
    /** From spawning the source to `migrateWhen`. */
    bootMs?: number;
    /** Wall time of the migrate command until query-migrate said completed/failed. */
    migrateMs?: number;
    /** From completion to the guest's MIGRATION-SEEN. */
    ackMs?: number;
    totalMs: number;
  };
  /** Set when QEMU aborted in its own code before the guest script began and this is the second try: the first one's assertion. */
  qemuAbortRetried?: string;
}

const SEEN = 'MIGRATION-SEEN';

/** Sourced by the guest before the caller's script. */
const GUEST_HELPER = `# Migration harness: the destination's harness writes one line to ttyS1.
stty -F /dev/ttyS1 clocal -echo 2>/dev/null
( read -r tok < /dev/ttyS1 && echo "$tok" > /tmp/.migrated && printf '\\n${SEEN} %s\\n' "$tok" ) &
migrated() { [ -e /tmp/.migrated ]; }
`;

interface Running {
  child: ChildProcess;
  output: () => string;
  stderr: () => string;
  alive: () => boolean;
  exitCode: () => number | null;
  exited: Promise<void>;
  kill: () => Promise<void>;
}

function startQemu(binary: string, args: string[], onOutput?: (chunk: string) => void): Running {
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  track(child);
  let output = '';
  let stderr = '';
  let alive = true;
  let code: number | null = null;
  child.stdout!.setEncoding('utf8').on('data', (c: string) => {
    const text = c.replace(/\r/g, '');
    output += text;
    onOutput?.(text);
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exited = new Promise<void>((resolve) => {
    child.once('close', (c) => {
      alive = false;
      code = c;
      resolve();
    });
    child.once('error', (err) => {
      stderr += `cannot run ${binary}: ${err.message}\n`;
      alive = false;
      resolve();
    });
  });
  return {
    child,
    output: () => output,
    stderr: () => stderr,
    alive: () => alive,
    exitCode: () => code,
    exited,
    kill: async () => {
      if (!alive) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Polls `pred` every 20 ms; resolves true when it holds, false on timeout or when `abort` holds. */
async function waitUntil(pred: () => boolean, timeoutMs: number, abort: () => boolean = () => false): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (pred()) return true;
    if (abort() || performance.now() > deadline) return pred();
    await sleep(20);
  }
}

function matcher(when: MigrationOptions['migrateWhen']): (out: string) => boolean {
  if (when === undefined) return (out) => /\nGUEST-START\n/.test(out);
  if (typeof when === 'function') return when;
  if (typeof when === 'string') return (out) => out.includes(when);
  return (out) => when.test(out);
}

const PANIC = /Kernel panic|BUG: |Oops|general protection fault|invalid opcode|RIP: 00|watchdog: BUG|rcu_sched self-detected stall|rcu: INFO/;

async function resolveBinary(choice: QemuChoice): Promise<string> {
  if (choice === 'qemu10') return (await ensureQemu10()).binary;
  if (choice === 'system') return 'qemu-system-x86_64';
  return choice.binary;
}

async function sendLine(path: string, line: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = connect(path);
    s.once('error', reject);
    s.once('connect', () => {
      // Keep the connection open a while: closing at once may drop the bytes before QEMU reads them.
      s.write(line + '\n', () => {
        setTimeout(() => s.destroy(), 2000).unref();
        resolve();
      });
    });
  });
}

/**
 * Runs one live migration; always stops both QEMUs. Throws only for harness errors (bad setup).
 * A QEMU that aborts in its own code before the guest script began (qemu-abort.ts) gets one
 * more try, recorded in `qemuAbortRetried`.
 */
export async function runMigration(opts: MigrationOptions): Promise<MigrationResult> {
  return onceMoreAfterQemuAbort('migration', () => migrateOnce(opts), (r) =>
    r.migrateStatus !== 'not-started'
      ? undefined
      : (qemuAbortBeforeScript(r.sourceStderr, r.sourceOutput) ?? qemuAbortBeforeScript(r.destStderr, r.sourceOutput)));
}

async function migrateOnce(opts: MigrationOptions): Promise<MigrationResult> {
  assertGuestPrerequisites();
  const started = performance.now();
  const binary = await resolveBinary(opts.qemu ?? 'qemu10');
  const image = guestImage(opts.image);
  const dir = mkdtempSync(join(tmpdir(), 'guest-mig-'));
  const paths = {
    initrd: join(dir, 'initrd.cpio'),
    srcQmp: join(dir, 'src.qmp'),
    dstQmp: join(dir, 'dst.qmp'),
    srcCtl: join(dir, 'src.ctl'),
    dstCtl: join(dir, 'dst.ctl'),
    stream: join(dir, 'migration.sock'),
  };
  writeBootInitrd(image, `. /guest/migration-helper.sh\n${opts.script}`, paths.initrd, {
    ...opts.files,
    'guest/migration-helper.sh': GUEST_HELPER,
  });
  const common = (qmp: string, ctl: string, extra: string[]): string[] =>
    qemuCommandLine({
      kernel: image.kernel,
      initrd: paths.initrd,
      memMiB: opts.memMiB ?? 256,
      smp: opts.smp ?? 1,
      kernelArgs: opts.kernelArgs,
      // The same firmware on both sides; SeaBIOS (QEMU's default) is in both QEMUs' data.
      firmware: '',
      qemuArgs: [
        '-qmp', `unix:${qmp},server=on,wait=off`,
        '-chardev', `socket,id=migctl,path=${ctl},server=on,wait=off`,
        '-serial', 'chardev:migctl',
        ...extra,
      ],
    });

  const totalTimeout = opts.timeoutMs ?? 120_000;
  const deadline = started + totalTimeout;
  const left = (cap: number): number => Math.max(0, Math.min(cap, deadline - performance.now()));

  let source: Running | undefined;
  let dest: Running | undefined;
  let srcQmp: Qmp | undefined;
  let dstQmp: Qmp | undefined;
  const timings: MigrationResult['timings'] = { totalMs: 0 };
  let migrateStatus = 'not-started';
  let migrateError: string | undefined;
  let migrateInfo: Record<string, any> | undefined;
  let destStatus: string | undefined;
  let destFinalStatus: string | undefined;
  let qemuVersion = '';
  let guestAnswered = false;
  let verdict: MigrationVerdict = 'source-failed';
  let diagnosis = '';

  try {
    dest = startQemu(binary, [...common(paths.dstQmp, paths.dstCtl, opts.destArgs ?? []), '-incoming', 'defer'], opts.onDestOutput);
    source = startQemu(binary, common(paths.srcQmp, paths.srcCtl, opts.sourceArgs ?? []), opts.onSourceOutput);
    const src = source;
    const dst = dest;

    try {
      [srcQmp, dstQmp] = await Promise.all([
        Qmp.connect(paths.srcQmp, { timeoutMs: left(20_000), alive: src.alive }),
        Qmp.connect(paths.dstQmp, { timeoutMs: left(20_000), alive: dst.alive }),
      ]);
    } catch (err) {
      const tail = (r: Running): string => r.stderr().trim().split('\n').slice(-3).join(' | ');
      diagnosis = `a QEMU did not start: ${(err as Error).message}` +
        (tail(src) ? `; source QEMU says: ${tail(src)}` : '') + (tail(dst) ? `; destination QEMU says: ${tail(dst)}` : '');
      throw err;
    }
    qemuVersion = `${srcQmp.version.major}.${srcQmp.version.minor}.${srcQmp.version.micro}`;
    const caps = { events: true, ...opts.capabilities };
    const capList = Object.entries(caps).map(([capability, state]) => ({ capability, state }));
    await srcQmp.execute('migrate-set-capabilities', { capabilities: capList });
    await dstQmp.execute('migrate-set-capabilities', { capabilities: capList });
    await srcQmp.execute('migrate-set-parameters', { 'max-bandwidth': 4 * 1024 ** 3, ...opts.parameters });
    await dstQmp.execute('migrate-incoming', { uri: `unix:${paths.stream}` });

    // Phase 1: the source boots and reaches the chosen moment.
    const when = matcher(opts.migrateWhen);
    const reached = await waitUntil(() => when(src.output()), left(opts.bootTimeoutMs ?? 60_000), () => !src.alive() || !dst.alive());
    timings.bootMs = Math.round(performance.now() - started);
    if (!reached) {
      verdict = 'source-failed';
      const exit = parseConsole(src.output()).exitCode;
      diagnosis = !src.alive()
        ? `source QEMU exited (${src.exitCode()}) before the migration point${exit !== null ? `; script status ${exit}` : ''}: ${src.stderr().trim().slice(-500)}`
        : !dst.alive()
          ? `destination QEMU exited (${dst.exitCode()}) while waiting for the migration: ${dst.stderr().trim().slice(-500)}`
          : `the source guest did not reach the migration point in time${src.stderr().trim() ? `; source QEMU says: ${src.stderr().trim().split('\n').slice(-3).join(' | ')}` : ''}`;
      return finish();
    }
    if (opts.migrateDelayMs) await sleep(opts.migrateDelayMs);

    // Phase 2: migrate and poll until it ends.
    const t0 = performance.now();
    migrateStatus = 'active';
    try {
      await srcQmp.execute('migrate', { uri: `unix:${paths.stream}` });
    } catch (err) {
      migrateStatus = 'failed';
      migrateError = (err as Error).message;
    }
    const migDeadline = performance.now() + left(opts.migrationTimeoutMs ?? 60_000);
    while (migrateStatus !== 'failed') {
      try {
        migrateInfo = await srcQmp.execute('query-migrate', undefined, 5000);
      } catch (err) {
        migrateStatus = 'failed';
        migrateError = `query-migrate: ${(err as Error).message}`;
        break;
      }
      migrateStatus = String(migrateInfo?.status ?? 'none');
      if (['completed', 'failed', 'cancelled'].includes(migrateStatus)) break;
      if (performance.now() > migDeadline) {
        migrateStatus = 'timeout';
        await srcQmp.execute('migrate_cancel').catch(() => undefined);
        break;
      }
      await sleep(25);
    }
    timings.migrateMs = Math.round(performance.now() - t0);
    migrateError ??= migrateInfo?.['error-desc'];
    if (migrateStatus !== 'completed') {
      verdict = 'migration-failed';
      // The cause is often on the destination (it refused the stream and hung up): give it a moment to say so.
      await waitUntil(() => !dst.alive(), 1000);
      const dstErr = dst.stderr().trim().split('\n').slice(-3).join(' | ');
      diagnosis = `migration ${migrateStatus}${migrateError ? `: ${migrateError}` : ''}` +
        (dstErr ? `; destination${dst.alive() ? '' : ` exited (${dst.exitCode()})`}: ${dstErr}` : '') +
        (/vhost|backend|back-end/i.test(`${migrateError} ${src.stderr()} ${dst.stderr()}`)
          ? ' (a vhost-user device or back-end is involved: see the QEMUs\' stderr)'
          : '');
      return finish();
    }

    // Phase 3: the destination runs the guest on.
    // "completed" is the source's view (it sent everything); the destination may still refuse
    // the stream (a device missing or mismatched, a back-end failing to start) and exit.
    const resumed = await waitUntil(() => dstQmp!.events.some((e) => e.event === 'RESUME'), left(15_000), () => !dst.alive());
    destStatus = dst.alive()
      ? (await dstQmp.execute('query-status', undefined, 5000).catch(() => ({ status: 'unknown' }))).status
      : 'exited';
    if (!resumed) {
      verdict = 'migration-failed';
      const err = dst.stderr().trim().split('\n').slice(-3).join(' | ');
      diagnosis = `the source completed but the destination ${dst.alive() ? `did not resume (status ${destStatus})` : `refused the stream (QEMU exited ${dst.exitCode()})`}` +
        `${err ? `: ${err}` : ''}` + (/vhost/i.test(err) ? ' (a vhost-user device)' : '');
      return finish();
    }
    if (opts.afterMigration) await opts.afterMigration({ source: srcQmp, dest: dstQmp });
    const token = `tok-${randomBytes(6).toString('hex')}`;
    const t1 = performance.now();
    if (dst.alive()) await sendLine(paths.dstCtl, token).catch(() => undefined);
    guestAnswered = await waitUntil(() => dst.output().includes(`${SEEN} ${token}`), left(opts.ackTimeoutMs ?? 20_000), () => !dst.alive());
    if (guestAnswered) timings.ackMs = Math.round(performance.now() - t1);
    const exitRe = new RegExp(`\\n${EXIT_MARKER} \\d+\\n`);
    // A guest that did not even answer the token gets only a short grace period more.
    const finishTimeout = opts.finishTimeoutMs ?? 60_000;
    await waitUntil(() => exitRe.test(dst.output()), left(guestAnswered ? finishTimeout : Math.min(finishTimeout, 2000)), () => !dst.alive());
    destFinalStatus = dst.alive()
      ? (await dstQmp.execute('query-status', undefined, 5000).catch(() => ({ status: 'unknown' }))).status
      : 'exited';
    const exitCode = parseConsole(src.output() + dst.output()).exitCode;

    const panic = PANIC.exec(dst.output());
    if (exitCode === 0 && guestAnswered) {
      verdict = 'ok';
      diagnosis = 'migration completed; the guest answered on the destination and its script exited 0';
    } else if (!guestAnswered && exitCode === null) {
      verdict = 'guest-broke';
      diagnosis = `migration completed but the destination guest ${panic ? `crashed (${panic[0]})` : 'never answered the post-migration token (hung)'}` +
        `; destination ${dst.alive() ? `is ${destFinalStatus}` : `QEMU exited (${dst.exitCode()})`}` +
        ` — the guest broke, not (evidently) the device`;
    } else if (exitCode === null) {
      verdict = 'device-stuck';
      diagnosis = 'the guest is alive on the destination (it answered the token) but the script never finished: the device stopped completing I/O' +
        (panic ? ` (kernel: ${panic[0]})` : '');
    } else {
      verdict = 'script-failed';
      diagnosis = `the script exited ${exitCode} on the destination${guestAnswered ? '' : ' (without answering the token)'}: read scriptOutput (data mismatch or I/O error = the device)`;
    }
    return finish();
  } catch (err) {
    if (!diagnosis) throw err;
    return finish();
  } finally {
    srcQmp?.close();
    dstQmp?.close();
    await Promise.all([source?.kill(), dest?.kill()]);
    rmSync(dir, { recursive: true, force: true });
  }

  function finish(): MigrationResult {
    const sourceOutput = source?.output() ?? '';
    const destOutput = dest?.output() ?? '';
    const parsed = parseConsole(sourceOutput + destOutput);
    timings.totalMs = Math.round(performance.now() - started);
    return {
      verdict,
      diagnosis,
      migrateStatus,
      migrateError,
      downtimeMs: migrateInfo?.downtime,
      totalTimeMs: migrateInfo?.['total-time'],
      setupTimeMs: migrateInfo?.['setup-time'],
      migrateInfo,
      destStatus,
      destFinalStatus,
      guestAnswered,
      sourceOutput,
      destOutput,
      scriptOutput: parsed.scriptOutput,
      exitCode: parsed.exitCode,
      sourceStderr: source?.stderr() ?? '',
      destStderr: dest?.stderr() ?? '',
      events: { source: srcQmp?.events ?? [], dest: dstQmp?.events ?? [] },
      binary,
      qemuVersion,
      timings,
    };
  }
}

/** A few lines for a failing test's message: verdict, diagnosis, and the tails of every log. */
export function describeMigration(r: MigrationResult): string {
  const tail = (s: string, n = 1500): string => (s.length > n ? `...${s.slice(-n)}` : s);
  return [
    `verdict: ${r.verdict} — ${r.diagnosis}`,
    `QEMU ${r.qemuVersion} (${r.binary}); migrate ${r.migrateStatus}, downtime ${r.downtimeMs} ms, total ${r.totalTimeMs} ms; timings ${JSON.stringify(r.timings)}`,
    `--- source console ---\n${tail(r.sourceOutput)}`,
    `--- destination console ---\n${tail(r.destOutput)}`,
    r.sourceStderr && `--- source stderr ---\n${tail(r.sourceStderr)}`,
    r.destStderr && `--- destination stderr ---\n${tail(r.destStderr)}`,
    r.qemuAbortRetried && `--- a first try ended with QEMU aborting before the guest script began ---\n${r.qemuAbortRetried}`,
  ].filter(Boolean).join('\n');
}
