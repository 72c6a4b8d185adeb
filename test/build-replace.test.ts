// A rebuild beside a running host must not harm it: build.mjs puts the addon and the bundles
// in place by rename (scripts/lib/replace-file.mjs). Writing over the mapped addon in place
// (copyFileSync), even with the very same bytes, killed a running host with SIGSEGV at its next
// native call: test/qemu-net ran `node build.mjs` while test/qemu-net-tap's host served a
// guest, which QEMU saw as 'Unexpected end-of-file' with no host log line. The host here runs
// from a copy of dist/ in a temporary directory (the addon is loaded from beside the bundle),
// so the test replaces files no other test uses.
import test from 'ava';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { installFile, writeFileReplacing } from '../scripts/lib/replace-file.mjs';
import { hostCommand, NULL_DEVICE, REPO } from './helpers/host-process.ts';

const FILES = ['vhost-wasm.mjs', 'device-worker.mjs', 'vhost_native.node'];

test('a host running from dist/ keeps serving after build.mjs puts the same addon and bundles in place', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vhost-wasm-build-replace-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const dist = join(dir, 'dist');
  const fresh = join(dir, 'fresh');
  for (const d of [dist, fresh]) {
    mkdirSync(d);
    for (const f of FILES) copyFileSync(join(REPO, 'dist', f), join(d, f));
  }
  const socket = join(dir, 'dev.sock');
  const [node, argv] = hostCommand(['--socket-path', socket, '--device-module', NULL_DEVICE]);
  argv[0] = join(dist, 'vhost-wasm.mjs');
  const child = spawn(node, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (code, signal) => resolve([code, signal])));
  t.teardown(() => child.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    const check = () => (log.includes('serving null-test') ? resolve() : child.exitCode !== null || child.signalCode !== null ? reject(new Error(`the host exited before serving:\n${log}`)) : setTimeout(check, 20));
    check();
  });

  // What build.mjs does after node-gyp and esbuild, with bytes the running host already has.
  installFile(join(fresh, 'vhost_native.node'), join(dist, 'vhost_native.node'));
  for (const f of ['vhost-wasm.mjs', 'device-worker.mjs']) writeFileReplacing(join(dist, f), readFileSync(join(fresh, f)));

  // The host's next native calls: accepting, the vhost-user messages with their fds, a request.
  let echoed: string;
  try {
    const fe = await VhostUserFrontend.connect(socket, { memoryBytes: 1 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1), eventIdx: false, indirect: false });
    try {
      const r = await fe.queues[0].submit([Buffer.from('after the rebuild')], 32);
      echoed = Buffer.from(r.data.subarray(0, r.len)).toString();
    } finally {
      await fe.close().catch(() => {});
    }
  } catch (e) {
    // Say how the host ended, not only that its socket closed (it has, or is about to).
    const [code, signal] = await Promise.race([exited, sleep(5000).then(() => ['still running', null] as const)]);
    return t.fail(`the front-end failed: ${(e as Error).message}; the host: exit code ${code}, signal ${signal}\n${log}`);
  }
  t.is(echoed, 'after the rebuild');
  t.is(child.signalCode, null, `the host died of ${child.signalCode}:\n${log}`);
  child.kill('SIGTERM');
  t.deepEqual(await exited, [0, null], log);
});
