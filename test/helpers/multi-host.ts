// Runs several devices in one host process (each on its own socket and in its own worker) as a
// child, optionally under `prlimit` so its RLIMIT_NOFILE is what the test says; its log and fd
// table are the test's to inspect. The process is what an operator runs, `vhost-wasm serve
// --config FILE` (the built binary), whenever the devices can be said in a config file; devices
// a config cannot describe (a TypeScript device module, a load deadline, fs options beyond
// sharedDir and readOnly) run in test/fixtures/plugins/multi-device-host.ts under tsx instead.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { hostCommand, REPO } from './host-process.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';

export interface DeviceSpec {
  label: string;
  socket: string;
  /** A plugin file, or `module`: a TypeScript device module (a file path). */
  plugin?: string;
  module?: string;
  options?: Record<string, unknown>;
  callDeadlineMs?: number;
  loadDeadlineMs?: number;
  /** The device's pollMaxNs (--poll-max-ns). */
  pollMaxNs?: number;
}

export interface MultiHost {
  child: ChildProcess;
  pid: number;
  log(): string;
  /** Lines matching re. */
  lines(re: RegExp): string[];
  /** Resolves with the (after+1)-th line matching re. */
  waitForLog(re: RegExp, after?: number, timeoutMs?: number): Promise<string>;
  fdCount(): number;
  /** CPU time (user + system) the process has used, in clock ticks. */
  cpuTicks(): number;
  /** Sets the running host's RLIMIT_NOFILE (prlimit --pid). */
  setFdLimit(soft: number, hard: number): void;
  /** p, or a rejection carrying the host's log if it does not settle within ms (no test hangs silently). */
  within<T>(p: Promise<T>, what: string, ms?: number): Promise<T>;
  /** SIGTERM, resolves with the exit code (SIGKILL after 10 s counts as a failure: null). */
  stop(): Promise<number | null>;
}

/**
 * The daemon config for `specs` and the transpile cache they share (a config has no cacheDir:
 * the daemon takes $XDG_CACHE_HOME), or null when a config cannot say them.
 */
export function daemonConfig(specs: DeviceSpec[]): { config: object; cacheHome: string | null } | null {
  const cacheDirs = new Set(specs.map((s) => s.options?.cacheDir));
  if (cacheDirs.size > 1) return null;
  const devices: object[] = [];
  for (const s of specs) {
    if (s.module !== undefined || s.plugin === undefined || s.loadDeadlineMs !== undefined) return null;
    const { entropy, memoryLimitBytes, cacheDir, filesystem, ...rest } = s.options ?? {};
    if (Object.keys(rest).length > 0) return null;
    const grants: Record<string, unknown> = {};
    if (entropy !== undefined) grants.entropy = entropy;
    if (filesystem !== undefined) {
      const { dir, readOnly, ...more } = filesystem as { dir: string; readOnly?: boolean };
      if (Object.keys(more).length > 0) return null;
      grants.sharedDir = dir;
      if (readOnly) grants.readOnly = true;
    }
    void cacheDir;
    // The host's default deadline (DEFAULT_CALL_DEADLINE_MS) where the spec gives none; the config's differs for storage.
    const limits: Record<string, unknown> = { callDeadlineMs: s.callDeadlineMs ?? 100 };
    if (memoryLimitBytes !== undefined) limits.memory = memoryLimitBytes;
    devices.push({ id: s.label, socket: s.socket, plugin: s.plugin, grants, limits, ...(s.pollMaxNs !== undefined ? { pollMaxNs: s.pollMaxNs } : {}) });
  }
  const [cacheDir] = cacheDirs;
  // Started at once, as Host.start (the tsx fallback) starts them: these tests watch devices from start-up on.
  return { config: { start: 'eager', devices }, cacheHome: typeof cacheDir === 'string' ? cacheDir : null };
}

export async function startMultiHost(specs: DeviceSpec[], opts: { nofile?: [soft: number, hard: number] } = {}): Promise<MultiHost> {
  const daemon = daemonConfig(specs);
  let node: string[];
  let env: NodeJS.ProcessEnv = process.env;
  let configDir: string | null = null;
  if (daemon) {
    configDir = mkdtempSync(join(tmpdir(), 'multi-host-'));
    writeFileSync(join(configDir, 'daemon.json'), JSON.stringify(daemon.config));
    const [bin, argv] = hostCommand(['serve', '--config', join(configDir, 'daemon.json')]);
    node = [bin, ...argv];
    if (daemon.cacheHome) env = { ...process.env, XDG_CACHE_HOME: daemon.cacheHome };
  } else {
    node = [process.execPath, '--import', 'tsx', join(REPO, 'test', 'fixtures', 'plugins', 'multi-device-host.ts'), JSON.stringify(specs)];
  }
  const [cmd, ...args] = opts.nofile ? ['prlimit', `--nofile=${opts.nofile[0]}:${opts.nofile[1]}`, '--', ...node] : node;
  const child = spawn(cmd, args, { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'], env });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  if (configDir) void exited.then(() => rmSync(configDir, { recursive: true, force: true }));
  const lines = (re: RegExp) => stderr.split('\n').filter((l) => re.test(l));
  const h: MultiHost = {
    child,
    pid: child.pid!,
    log: () => stderr,
    lines,
    async waitForLog(re, after = 0, timeoutMs = 15_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const hits = lines(re);
        if (hits.length > after) return hits[after];
        if (child.exitCode !== null) throw new Error(`host exited (${child.exitCode}) before logging ${re}; its log:\n${stderr}`);
        if (Date.now() > end) throw new Error(`host never logged ${re}; its log:\n${stderr}`);
        await sleep(20);
      }
    },
    fdCount: () => readdirSync(`/proc/${child.pid}/fd`).length,
    cpuTicks() {
      // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return Number(f[11]) + Number(f[12]);
    },
    within(p, what, ms = 15_000) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms; host log:\n${stderr}`)), ms);
      });
      return Promise.race([p, late]).finally(() => clearTimeout(timer));
    },
    setFdLimit(soft, hard) {
      execFileSync('prlimit', ['--pid', String(child.pid), `--nofile=${soft}:${hard}`]);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return child.signalCode === 'SIGKILL' ? null : code;
    },
  };
  await h.waitForLog(daemon ? /vhost-wasm: serving \d+ of \d+ device/ : /multi-device-host: serving /, 0, 60_000);
  for (const s of specs) if (!existsSync(s.socket)) throw new Error(`no socket ${s.socket}:\n${stderr}`);
  return h;
}

/** Polls until fn() is true. */
export async function until(fn: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** The host's fd count once it has stayed the same over three looks 60 ms apart (lazily opened fds settled). */
export async function stableFdCount(h: MultiHost): Promise<number> {
  let last = h.fdCount();
  for (let same = 0; same < 3; ) {
    await sleep(60);
    const now = h.fdCount();
    same = now === last ? same + 1 : 0;
    last = now;
  }
  return last;
}
