// Runs `vhost-wasm serve --config FILE` (the built binary, as users run it) as a child, and
// `vhost-wasm ctl` against it; and a raw JSON-RPC line client for requests ctl would never send.
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { hostCommand, REPO } from './host-process.ts';
import type { DeviceStats } from '../../host/daemon/daemon.ts';
import type { MethodResults } from '../../host/daemon/methods.ts';

export interface DaemonProcess {
  child: ChildProcess;
  log(): string;
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
  fdCount(): number;
  /** SIGTERM; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** Resolves with the exit code once the process ends by itself. */
  exited: Promise<number | null>;
}

export function spawnDaemon(args: string[], opts: { env?: NodeJS.ProcessEnv; stdio?: StdioOptions; wrap?: string[] } = {}): DaemonProcess {
  const [node, argv] = hostCommand(['serve', ...args]);
  const [cmd, ...rest] = opts.wrap ? [...opts.wrap, node, ...argv] : [node, ...argv];
  const child = spawn(cmd, rest, { cwd: REPO, stdio: opts.stdio ?? ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...opts.env } });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    child,
    log: () => stderr,
    exited,
    async waitForLog(re, timeoutMs = 30_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const hit = stderr.split('\n').find((l) => re.test(l));
        if (hit) return hit;
        if (child.exitCode !== null) throw new Error(`daemon exited (${child.exitCode}) before logging ${re}; its log:\n${stderr}`);
        if (Date.now() > end) throw new Error(`daemon never logged ${re}; its log:\n${stderr}`);
        await sleep(20);
      }
    },
    fdCount: () => readdirSync(`/proc/${child.pid}/fd`).length,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** Starts the daemon and waits for its "serving N of M device(s)" line. */
export async function startDaemon(args: string[], opts: Parameters<typeof spawnDaemon>[1] = {}): Promise<DaemonProcess> {
  const d = spawnDaemon(args, opts);
  await d.waitForLog(/vhost-wasm: serving \d+ of \d+ device/);
  return d;
}

/** Writes `config` to DIR/daemon.json and starts the daemon on it (startDaemon). */
export function startDaemonWith(dir: string, config: object, opts: Parameters<typeof spawnDaemon>[1] = {}): Promise<DaemonProcess> {
  const file = join(dir, 'daemon.json');
  writeFileSync(file, JSON.stringify(config));
  return startDaemon(['--config', file], opts);
}

export interface CtlResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `vhost-wasm ctl ARGS` in `cwd`; `wrap` runs it under another command (setpriv, to be another user). */
export function ctl(args: string[], wrap: string[] = [], cwd = REPO): Promise<CtlResult> {
  const [node, argv] = hostCommand(['ctl', ...args]);
  const [cmd, ...rest] = [...wrap, node, ...argv];
  const child = spawn(cmd, rest, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

/** `ctl --json stats ID` against the management socket `control`: that device's stats (throws with ctl's stderr if it fails). */
export async function deviceStats(control: string, id: string): Promise<DeviceStats> {
  const r = await ctl(['--control', control, '--json', 'stats', id]);
  if (r.code !== 0) throw new Error(`ctl stats ${id} failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as MethodResults['device-stats']).devices[0];
}

/** GET /metrics from an exporter listening on a Unix socket: the Prometheus exposition's text. */
export function scrapeMetrics(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/metrics' });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Sends raw lines on one connection and collects `expect` answer lines (or what came before EOF). */
export function rawRpc(path: string, lines: string[], expect: number): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    let buf = '';
    const answers: unknown[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`only ${answers.length} of ${expect} answers in 15 s: ${buf}`));
    }, 15_000);
    const finish = () => {
      clearTimeout(timer);
      s.destroy();
      resolve(answers);
    };
    s.setEncoding('utf8');
    s.on('connect', () => s.write(lines.map((l) => l + '\n').join('')));
    s.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        answers.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
      if (answers.length >= expect) finish();
    });
    s.on('end', finish);
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** A management connection kept open: requests sent on it, and every line it got until the server (a daemon's, a host's control socket) ended it. */
export function heldConnection(path: string) {
  const s = createConnection(path);
  s.setEncoding('utf8');
  let buf = '';
  const lines: unknown[] = [];
  let waiter: (() => void) | null = null;
  s.on('data', (d: string) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)));
      buf = buf.slice(nl + 1);
    }
    waiter?.();
  });
  s.on('error', () => {});
  let closed = false;
  const ended = new Promise<void>((resolve) =>
    s.on('close', () => {
      closed = true;
      waiter?.();
      resolve();
    }),
  );
  return {
    /** Sends one request, resolves with the next line (rejects if the connection ends first). */
    async ask(id: number, method: string): Promise<unknown> {
      const seen = lines.length;
      s.write(JSON.stringify({ jsonrpc: '2.0', id, method, params: {} }) + '\n');
      while (lines.length === seen) {
        if (closed) throw new Error(`${path}: the connection ended before an answer to ${method}`);
        await new Promise<void>((r) => (waiter = r));
      }
      return lines[seen];
    },
    /** Every line after the first `from`, once the daemon closed the connection. */
    async rest(from: number): Promise<unknown[]> {
      await ended;
      return lines.slice(from);
    },
    destroy: () => s.destroy(),
  };
}
