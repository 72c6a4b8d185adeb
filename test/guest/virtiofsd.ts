// Rust virtiofsd 1.13 (Debian trixie's), fetched by scripts/virtiofsd.sh into
// <repo>/.cache/virtiofsd/ (or $VHOST_WASM_VIRTIOFSD_DIR) and run from there through trixie's own
// loader: the peer the fs plugin is compared with. Nothing is installed system-wide.

import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './image.ts';

export const VIRTIOFSD_SCRIPT = join(REPO_ROOT, 'scripts/virtiofsd.sh');

function wrapper(): string {
  return join(process.env.VHOST_WASM_VIRTIOFSD_DIR ?? join(REPO_ROOT, '.cache/virtiofsd'), 'bin', 'virtiofsd');
}

let pending: Promise<string> | undefined;

/** The virtiofsd 1.13 wrapper, running scripts/virtiofsd.sh first if it is not fetched yet. */
export function ensureVirtiofsd(): Promise<string> {
  pending ??= new Promise<string>((resolve, reject) => {
    execFile('bash', [VIRTIOFSD_SCRIPT, '--quiet'], { timeout: 600_000, maxBuffer: 16 << 20 }, (err, _out, stderr) => {
      if (err || !existsSync(wrapper())) reject(new Error(`scripts/virtiofsd.sh failed: ${err?.message ?? ''}\n${stderr}`));
      else resolve(wrapper());
    });
  });
  return pending;
}

export interface Virtiofsd {
  /** virtiofsd's own pid (the wrapper execs it), e.g. for its CPU time in /proc. */
  pid: number;
  log(): string;
  stop(): Promise<void>;
}

/**
 * virtiofsd 1.13 serving `dir` on `socket` with `--sandbox none` (its namespace sandbox needs
 * user namespaces this machine's containers refuse) plus `args`; resolves once the socket exists.
 */
export async function startVirtiofsd(dir: string, socket: string, args: string[] = []): Promise<Virtiofsd> {
  const bin = await ensureVirtiofsd();
  const child = spawn(bin, ['--socket-path', socket, '--shared-dir', dir, '--sandbox', 'none', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const start = Date.now();
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() - start > 20_000) {
      child.kill('SIGKILL');
      throw new Error(`virtiofsd did not start: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: child.pid!,
    log: () => log,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
