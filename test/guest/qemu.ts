// Boots the busybox guest under QEMU (TCG), runs one script in it and reports
// the script's exit status. QEMU is always killed and the per-boot files
// removed, whatever happens.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImage, writeBootInitrd, type GuestImageOptions } from './image.ts';
import { assertGuestPrerequisites } from './prerequisites.ts';
import { parseConsole } from './protocol.ts';
import { onceMoreAfterQemuAbort, qemuAbortBeforeScript } from './qemu-abort.ts';
import { track } from './reaper.ts';

export { hasQemu, hasStorageDaemon, missingGuestPackages } from './prerequisites.ts';

export interface BootOptions {
  /** Shell script run by the guest's busybox sh after the modules are loaded. */
  script: string;
  /** Appended to QEMU's command line, e.g. a vhost-user -chardev/-device pair. */
  qemuArgs?: string[];
  memMiB?: number;
  timeoutMs?: number;
  qemuBinary?: string;
  onOutput?: (chunk: string) => void;
  /** Extra files for the guest (path relative to / -> content), executable. */
  files?: Record<string, string | Uint8Array>;
  /** Appended to the kernel command line. */
  kernelArgs?: string;
  smp?: number;
  image?: GuestImageOptions;
  /** -bios image; defaults to qboot when installed, '' keeps QEMU's SeaBIOS. */
  firmware?: string;
  /** Kills QEMU (SIGKILL) when aborted, e.g. to test a front-end that dies mid-I/O. */
  signal?: AbortSignal;
}

const QBOOT = '/usr/share/qemu/qboot.rom';

/** qboot hands over to the kernel ~0.1 s sooner than SeaBIOS and prints nothing. */
function defaultFirmware(): string {
  return existsSync(QBOOT) ? QBOOT : '';
}

export interface BootResult {
  /** The guest script's exit status; null when it never reported one (timeout, panic, QEMU error). */
  exitCode: number | null;
  /** Everything the serial console printed, with \n line ends. */
  output: string;
  /** The part of `output` the script printed (between the harness's markers). */
  scriptOutput: string;
  /** QEMU's own stderr, where device and back-end errors show up. */
  qemuStderr: string;
  qemuExitCode: number | null;
  timedOut: boolean;
  /** QEMU was killed because `signal` fired. */
  aborted: boolean;
  durationMs: number;
  /** Set when QEMU aborted in its own code before the script began and this is the second boot: the first one's assertion. */
  qemuAbortRetried?: string;
}

export function qemuCommandLine(opts: {
  kernel: string;
  initrd: string;
  memMiB: number;
  smp: number;
  kernelArgs?: string;
  qemuArgs?: string[];
  firmware?: string;
}): string[] {
  const append = [
    'console=ttyS0',
    'quiet',
    // A panic (e.g. init died) reboots, and -no-reboot turns that into QEMU exiting.
    'panic=-1',
    'rdinit=/init',
    // No real-time clock to wait for, no legacy PS/2 probing: both cost time under TCG.
    'i8042.noaux',
    'i8042.nokbd',
    'i8042.nopnp',
    'tsc=reliable',
    'no_timer_check',
    // The crypto self-tests alone take ~0.2 s of an emulated boot.
    'cryptomgr.notests',
    opts.kernelArgs ?? '',
  ].filter(Boolean);
  return [
    '-accel', 'tcg',
    '-machine', 'q35',
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-no-reboot',
    '-smp', String(opts.smp),
    '-m', `${opts.memMiB}M`,
    // Every vhost-user device needs guest RAM the back-end can map.
    '-object', `memory-backend-memfd,id=mem,size=${opts.memMiB}M,share=on`,
    '-numa', 'node,memdev=mem',
    '-serial', 'stdio',
    ...(opts.firmware ? ['-bios', opts.firmware] : []),
    '-kernel', opts.kernel,
    '-initrd', opts.initrd,
    '-append', append.join(' '),
    ...(opts.qemuArgs ?? []),
  ];
}

export async function bootGuest(opts: BootOptions): Promise<BootResult> {
  assertGuestPrerequisites();
  const image = guestImage(opts.image);
  const dir = mkdtempSync(join(tmpdir(), 'guest-boot-'));
  try {
    const initrd = join(dir, 'initrd.cpio');
    writeBootInitrd(image, opts.script, initrd, opts.files);
    const args = qemuCommandLine({
      kernel: image.kernel,
      initrd,
      memMiB: opts.memMiB ?? 256,
      smp: opts.smp ?? 1,
      kernelArgs: opts.kernelArgs,
      qemuArgs: opts.qemuArgs,
      firmware: opts.firmware ?? defaultFirmware(),
    });
    const binary = opts.qemuBinary ?? 'qemu-system-x86_64';
    return await onceMoreAfterQemuAbort(
      'guest boot',
      () => runQemu(binary, args, opts.timeoutMs ?? 60_000, opts.onOutput, opts.signal),
      (r) => (r.aborted ? undefined : qemuAbortBeforeScript(r.qemuStderr, r.output)),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function runQemu(
  binary: string,
  args: string[],
  timeoutMs: number,
  onOutput?: (chunk: string) => void,
  signal?: AbortSignal,
): Promise<BootResult> {
  return new Promise((resolvePromise, reject) => {
    const started = performance.now();
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    let output = '';
    let qemuStderr = '';
    let timedOut = false;
    let aborted = false;
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      const text = chunk.replace(/\r/g, '');
      output += text;
      onOutput?.(text);
    });
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      qemuStderr += chunk;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const onAbort = () => {
      aborted = true;
      child.kill('SIGKILL');
    };
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    child.once('error', (err) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      reject(new Error(`cannot run ${binary}: ${err.message}`));
    });
    // 'close', not 'exit': it fires once stdout is drained, so no console text is lost.
    child.once('close', (code) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      const parsed = parseConsole(output);
      resolvePromise({
        exitCode: timedOut || aborted ? null : parsed.exitCode,
        output,
        scriptOutput: parsed.scriptOutput,
        qemuStderr,
        qemuExitCode: code,
        timedOut,
        aborted,
        durationMs: Math.round(performance.now() - started),
      });
    });
  });
}
