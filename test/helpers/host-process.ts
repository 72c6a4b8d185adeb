// Runs the real host binary (from the TypeScript sources, so tests need no bundle step) as a
// child process: tests then talk to it over its real socket and inspect its real fd table.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const NULL_DEVICE = join(REPO, 'test', 'devices', 'null-device.ts');

export interface HostProcess {
  child: ChildProcess;
  socketPath: string;
  dir: string;
  /** Everything the host wrote to stderr so far. */
  log(): string;
  /** Resolves when a stderr line matches (rejects after timeoutMs with the log so far). */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  /** Open fds of the host process (count of /proc/PID/fd). */
  fdCount(): number;
  /** Mappings of memfds in the host process (guest memory it still maps). */
  memfdMappings(): number;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function startHost(
  args: string[],
  /** `entry`: a script to run instead of the CLI (a fixture serving several devices). */
  opts: { socketName?: string; env?: NodeJS.ProcessEnv; entry?: string } = {},
): Promise<HostProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-test-'));
  const given = args.indexOf('--socket-path');
  const socketPath = given >= 0 && args[given + 1] !== '{socket}' ? args[given + 1] : join(dir, opts.socketName ?? 'dev.sock');
  const full = args.map((a) => a.replace('{socket}', socketPath));
  const child = spawn(process.execPath, ['--import', 'tsx', opts.entry ?? join(REPO, 'host', 'cli', 'main.ts'), ...full], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  let stderr = '';
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr += d;
    for (const w of [...waiters]) {
      const m = stderr.split('\n').find((l) => w.re.test(l));
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  });
  child.stdout!.resume();
  // 'close' (not 'exit'): stderr is fully read by then, so the last log lines are in log().
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const h: HostProcess = {
    child,
    socketPath,
    dir,
    log: () => stderr,
    waitForLog(re, timeoutMs = 15_000) {
      const hit = stderr.split('\n').find((l) => re.test(l));
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const w = { re, resolve: (l: string) => { clearTimeout(t); resolve(l); } };
        const t = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`host never logged ${re}; its log:\n${stderr}`));
        }, timeoutMs);
        waiters.push(w);
      });
    },
    fdCount: () => readdirSync(`/proc/${child.pid}/fd`).length,
    memfdMappings: () => readFileSync(`/proc/${child.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:')).length,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const code = await exited;
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
  // Ready once the socket exists (or the process died trying).
  const deadline = Date.now() + 20_000;
  while (!existsSync(socketPath)) {
    if (child.exitCode !== null) throw new Error(`host exited with ${child.exitCode} before listening:\n${stderr}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`host did not create ${socketPath} within 20 s:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  await h.waitForLog(/serving /);
  return h;
}

/** Polls until fn() is true (fd counts settle asynchronously after a disconnect). */
export async function eventually(fn: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (fn()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return fn();
}
