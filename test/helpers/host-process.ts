// Runs the host binary users run, the bundle package.json `bin` names (dist/vhost-wasm.mjs;
// `npm test` builds it first), as a child process: tests then talk to it over its real socket
// and inspect its real fd table. Test devices written in TypeScript are bundled to plain ES
// modules first, because that is what --device-module takes from a user.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSync } from 'esbuild';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const NULL_DEVICE = join(REPO, 'test', 'devices', 'null-device.ts');

const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string> };
/** The binary, as package.json `bin` names it. */
export const BIN = join(REPO, pkg.bin['vhost-wasm']);
/** What the binary is built from: the bundle (and its device worker) from host/'s TypeScript,
 * the addon it loads from beside itself from host/native's C. */
const BUILT_FROM: { parts: string[]; dir: string; exts: RegExp }[] = [
  { parts: [BIN, join(dirname(BIN), 'device-worker.mjs')], dir: join(REPO, 'host'), exts: /\.ts$/ },
  { parts: [join(dirname(BIN), 'vhost_native.node')], dir: join(REPO, 'host', 'native'), exts: /\.(c|h|gyp)$/ },
];

function newestUnder(dir: string, exts: RegExp): { path: string; mtimeMs: number } {
  let best = { path: dir, mtimeMs: 0 };
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile() || !exts.test(e.name) || relative(dir, e.parentPath).split('/').includes('build')) continue; // node-gyp's output
    const path = join(e.parentPath, e.name);
    const m = statSync(path).mtimeMs;
    if (m > best.mtimeMs) best = { path, mtimeMs: m };
  }
  return best;
}

let builtChecked = false;
/**
 * Fails (does not rebuild: parallel test processes would race on dist/) when the binary is
 * missing or older than a source it is built from, so a test never passes against an old build.
 */
export function assertBuilt(): void {
  if (builtChecked) return;
  const how = 'run `node build.mjs` (npm test does) before tests that start the host';
  for (const { parts, dir, exts } of BUILT_FROM) {
    for (const part of parts) {
      if (!existsSync(part)) throw new Error(`${relative(REPO, part)} is missing: ${how}`);
    }
    const oldest = Math.min(...parts.map((p) => statSync(p).mtimeMs));
    const newest = newestUnder(dir, exts);
    if (newest.mtimeMs > oldest) throw new Error(`${relative(REPO, newest.path)} is newer than the built binary in dist/: ${how}`);
  }
  builtChecked = true;
}

let modulesDir: string | null = null;
const built = new Map<string, string>();
/** A TypeScript device module bundled to one .mjs (once per test process); JS paths pass through. */
export function deviceModule(path: string): string {
  if (!path.endsWith('.ts')) return path;
  let out = built.get(path);
  if (out === undefined) {
    if (modulesDir === null) {
      const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-test-devices-'));
      modulesDir = dir;
      process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    }
    out = join(modulesDir, `${built.size}-${basename(path, '.ts')}.mjs`);
    buildSync({ entryPoints: [path], outfile: out, bundle: true, platform: 'node', format: 'esm', target: 'node20', logLevel: 'warning' });
    built.set(path, out);
  }
  return out;
}

/** node and its arguments to run the binary with `args` (device modules made runnable). */
export function hostCommand(args: string[]): [string, string[]] {
  assertBuilt();
  const full = args.map((a, i) => (args[i - 1] === '--device-module' ? deviceModule(a) : a));
  return [process.execPath, [BIN, ...full]];
}

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
  /** The host's open fds whose target (readlink of /proc/PID/fd/N) contains `name`. */
  fdsNamed(name: string): number;
  /** Mappings of memfds in the host process (guest memory it still maps). */
  memfdMappings(): number;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Resolves with the exit code once the process ended (by itself or stopped) and its log is read. */
  exited: Promise<number | null>;
}

export async function startHost(
  args: string[],
  /**
   * `entry`: a script to run instead of the CLI (a fixture serving several devices). `wrap`: a
   * command the host runs under, which execs it (`ip netns exec NS`: the host in a namespace).
   */
  opts: { socketName?: string; env?: NodeJS.ProcessEnv; entry?: string; wrap?: string[] } = {},
): Promise<HostProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-test-'));
  const given = args.indexOf('--socket-path');
  const socketPath = given >= 0 && args[given + 1] !== '{socket}' ? args[given + 1] : join(dir, opts.socketName ?? 'dev.sock');
  const full = args.map((a) => a.replace('{socket}', socketPath));
  // A fixture entry (several devices in one process, which the CLI cannot express) runs from
  // source through tsx; everything else starts the built binary users run.
  const [node, argv] = opts.entry ? [process.execPath, ['--import', 'tsx', opts.entry, ...full]] : hostCommand(full);
  const [cmd, cmdArgs] = opts.wrap ? [opts.wrap[0], [...opts.wrap.slice(1), node, ...argv]] : [node, argv];
  const child = spawn(cmd, cmdArgs, {
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
    exited,
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
    fdsNamed: (name: string) =>
      readdirSync(`/proc/${child.pid}/fd`).filter((n) => {
        try {
          return readlinkSync(`/proc/${child.pid}/fd/${n}`).includes(name);
        } catch {
          return false; // closed meanwhile
        }
      }).length,
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

/**
 * The binary run once with `args` (a client subcommand: upgrade, ctl; or a host expected to
 * stop at start-up), as an operator runs it. `killAfterMs`: SIGKILLed after that long (a host
 * that serves when it should have refused to start then exits with code null).
 */
export function runCli(args: string[], opts: { cwd?: string; killAfterMs?: number } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [node, argv] = hostCommand(args);
  const child = spawn(node, argv, { cwd: opts.cwd ?? REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = opts.killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), opts.killAfterMs);
  return new Promise((resolve) =>
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
}
