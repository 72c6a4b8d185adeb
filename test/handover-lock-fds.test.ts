// A host handover carries a virtio-fs guest's locks as duplicates of the fds they live on, made
// by the device's worker (host/fs/lock-carry-wire.ts) and handed to the main thread in its
// reply. A worker that dies after making them and before that reply must not leave them open in
// the old host: they are written into a ledger the main thread reads (host/device/fd-ledger.ts)
// and closed once the thread is gone. The device (test/devices/lock-carry-device.ts) names the
// host's fds 0, 1 and 2 as the lock-holding ones and ends its worker right after the duplicates
// are made; the old host's fd table is read from /proc.
import test from 'ava';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { eventually, runCli, startHost } from './helpers/host-process.ts';
import { withTimeout } from './helpers/device-checks.ts';

const DEVICE = new URL('./devices/lock-carry-device.ts', import.meta.url).pathname;

/** How many of process `pid`'s fds name what its fds 0, 1 and 2 name (the duplicates a carry makes of them). */
function stdioTwins(pid: number): { count: number; total: number } {
  const dir = `/proc/${pid}/fd`;
  const target = (fd: string) => {
    try {
      return readlinkSync(join(dir, fd));
    } catch {
      return null;
    }
  };
  const stdio = new Set([0, 1, 2].map((fd) => target(String(fd))));
  const all = readdirSync(dir);
  return { count: all.filter((fd) => stdio.has(target(fd))).length, total: all.length };
}

test('a worker that dies after duplicating the lock fds for a host handover, before its reply, leaves none of them open in the old host', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'handover-lock-fds-'));
  const sock = join(dir, 'dev.sock');
  const args = ['--device-module', DEVICE];
  const old = await startHost(['--socket-path', sock, ...args]);
  try {
    const fe = await VhostUserFrontend.connect(sock, { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
    t.teardown(() => fe.close());
    const c = await withTimeout(fe.queues[0].submit([Buffer.from('ping')], 4), 10_000, 'a request before the handover');
    t.is(Buffer.from(c.data.subarray(0, c.len)).toString(), 'ping');
    const pid = old.child.pid!;
    const before = stdioTwins(pid);

    const r = await runCli(['--socket-path', sock, ...args, '--take-over', '--take-over-mode', 'live']);
    t.not(r.code, 0, `the take-over failed:\n${r.stderr}`);
    t.truthy(await old.waitForLog(/worker exited unexpectedly with code 1/));
    t.truthy(await old.waitForLog(/the lock handoff: closed 3 fd\(s\) the worker made before it died in the call/));
    // The three duplicates of fds 0, 1 and 2 the dead worker made are closed.
    t.true(await eventually(() => stdioTwins(pid).count === before.count), `fds naming stdio's files: ${before.count} before, ${stdioTwins(pid).count} after`);
    t.log(`old host fds: ${before.total} before the handover, ${stdioTwins(pid).total} after`);
    t.is(old.child.exitCode, null, 'the old host lives on');
  } finally {
    await old.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
