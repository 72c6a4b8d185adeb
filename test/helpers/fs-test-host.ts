// A host process serving the fs plugin on a fresh share, with our front-end connected and FUSE
// INIT done: the set-up of the fs tests that talk to the real host over its socket.
import type { ExecutionContext } from 'ava';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from './host-process.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../../host/frontend/driver.ts';
import { FuseClient } from './fuse.ts';

export const FS_PLUGIN = join(REPO, 'dist', 'plugins', 'fs.wasm');

export interface FsTestHost {
  dir: string;
  host: HostProcess;
  fe: VhostUserFrontend;
  c: FuseClient;
}

/** A share (named after `prefix`) holding `files`, its host started with `args` after the share's; all of it closed and removed when the test ends. */
export async function fsTestHost(t: ExecutionContext, prefix: string, files: Record<string, string>, args: string[] = []): Promise<FsTestHost> {
  if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const dir = mkdtempSync(join(tmpdir(), prefix));
  for (const [name, body] of Object.entries(files)) writeFileSync(join(dir, name), body);
  const host = await startHost(['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, ...args]);
  t.teardown(async () => {
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0, 'INIT');
  return { dir, host, fe, c };
}

export interface FsMigrationPair {
  /** The source host: the front-end is on it. */
  a: HostProcess;
  /** The destination host. */
  b: HostProcess;
  fe: VhostUserFrontend;
  c: FuseClient;
}

/**
 * Two fs hosts for a migration from `a` to `b`, both with a 5 s call deadline: `a` on `srcDir`,
 * `b` on `dstDir` (the same share unless given) with `dstArgs` added; our front-end on `a`, INIT
 * done. The hosts are stopped and the front-end closed when the test ends; the shares are the
 * caller's.
 */
export async function fsMigrationPair(t: ExecutionContext, srcDir: string, opts: { dstDir?: string; dstArgs?: string[] } = {}): Promise<FsMigrationPair> {
  if (!existsSync(FS_PLUGIN)) throw new Error(`${FS_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const args = (dir: string) => ['--socket-path', '{socket}', '--plugin', FS_PLUGIN, '--shared-dir', dir, '--call-deadline', '5000'];
  const [a, b] = await Promise.all([startHost(args(srcDir)), startHost([...args(opts.dstDir ?? srcDir), ...(opts.dstArgs ?? [])])]);
  t.teardown(() => Promise.all([a.stop(), b.stop()]));
  const fe = await VhostUserFrontend.connect(a.socketPath, { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  t.is((await c.init()).error, 0, 'INIT');
  return { a, b, fe, c };
}
