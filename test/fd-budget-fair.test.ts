// The fd budget is fair between devices (issue 12, "the fd budget exhausted by one device leaves
// other devices in the process serving"), against the real daemon (`vhost-wasm serve --config`)
// with two fs devices sharing one process under RLIMIT_NOFILE 1024 soft / 2048 hard (prlimit):
//  - device A's guest looks up and opens files until it gets ENFILE;
//  - device B's guest can then still look up and open files: at least its reserve's worth of
//    fds (the reserve each device with a share holds: host/resources/fd-budget.ts), where before
//    the fair rule its very first call got ENFILE;
//  - A's log line says what was spent by whom (this device, its reserve, all devices);
//  - once A's front-end disconnects (its fds go back), B takes far more than its reserve.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { REPO } from './helpers/host-process.ts';
import { stableFdCount, startMultiHost, until, type MultiHost } from './helpers/multi-host.ts';
import { ERRNO, FuseClient, O, nodeOf } from './helpers/fuse.ts';

const SOFT = 1024;
const HARD = 2048;
/** More files than the whole budget (HARD less the host's own reserve) could hold. */
const FILES = HARD;
const fsOpts: FrontendOptions = { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) };

let dir: string;
let host: MultiHost;
const sock = (l: string) => join(dir, `${l}.sock`);

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'fd-budget-fair-'));
  const share = join(dir, 'share');
  mkdirSync(share);
  for (let i = 0; i < FILES; i++) writeFileSync(join(share, `f${i}`), '');
  const fsWasm = join(REPO, 'dist', 'plugins', 'fs.wasm');
  const cacheDir = join(dir, 'cache');
  // Only options a daemon config can say: the helper then runs `serve --config` (one daemon).
  host = await startMultiHost(
    [
      { label: 'a', socket: sock('a'), plugin: fsWasm, options: { filesystem: { dir: share, readOnly: true }, cacheDir }, callDeadlineMs: 10_000 },
      { label: 'b', socket: sock('b'), plugin: fsWasm, options: { filesystem: { dir: share, readOnly: true }, cacheDir }, callDeadlineMs: 10_000 },
    ],
    { nofile: [SOFT, HARD] },
  );
});

test.after.always(async () => {
  if (host) await host.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * LOOKUP then OPEN of f<from>, f<from+1>, ... (16 files in flight at a time), each file kept
 * open (its node and its open file held), until one answers ENFILE or f<to-1> is open. Returns
 * how many files were opened; any error but ENFILE fails the test.
 */
async function openUntilEnfile(fuse: FuseClient, from: number, to: number): Promise<{ opened: number; enfile: boolean }> {
  let opened = 0;
  for (let i = from; i < to; i += 16) {
    const names = [];
    for (let j = i; j < Math.min(i + 16, to); j++) names.push(`f${j}`);
    const results = await Promise.all(
      names.map(async (name) => {
        const l = await fuse.lookup(1n, name);
        if (l.error !== 0) return l.error;
        return (await fuse.open(nodeOf(l), O.RDONLY)).error;
      }),
    );
    for (const e of results) if (e !== 0 && e !== ERRNO.ENFILE) throw new Error(`LOOKUP/OPEN answered errno ${e}, not 0 or ENFILE`);
    opened += results.filter((e) => e === 0).length;
    if (results.some((e) => e === ERRNO.ENFILE)) return { opened, enfile: true };
  }
  return { opened, enfile: false };
}

test.serial("one fs device that opens files until ENFILE leaves the other its reserve; the other takes more once it disconnects", async (t) => {
  const feA = await host.within(VhostUserFrontend.connect(sock('a'), fsOpts), 'connect to a');
  const fuseA = new FuseClient(feA);
  t.is((await fuseA.init()).error, 0, 'INIT a');
  const feB = await host.within(VhostUserFrontend.connect(sock('b'), fsOpts), 'connect to b');
  const fuseB = new FuseClient(feB);
  t.is((await fuseB.init()).error, 0, 'INIT b');
  const baseline = await stableFdCount(host);
  // Where inodes go by file handle a looked-up file holds no fd until it is opened; otherwise
  // (the reason is logged) its node holds one too.
  const fdsPerFile = host.lines(/file handles do not work/).length > 0 ? 2 : 1;

  // A takes everything it may.
  const a = await host.within(openUntilEnfile(fuseA, 0, FILES), 'a opens files', 120_000);
  t.true(a.enfile, `a got ENFILE (after ${a.opened} files)`);
  const fdsA = host.fdCount() - baseline;
  t.log(`a opened ${a.opened} files (${fdsPerFile} fd each) before ENFILE; the host holds ${fdsA} more fds than at the start`);

  // The rule: each of the 2 devices with a share is guaranteed floor(budget / (2 * 2)) fds.
  const budget = Number(/fd budget: (\d+) share handles/.exec(host.lines(/fd budget: \d+ share handles/)[0] ?? '')?.[1]);
  t.true(budget > 0, 'the budget is logged');
  const reserve = Math.floor(budget / 4);

  // B still serves: at least its reserve's worth of fds (less its root's and mount's) in new files.
  const b = await host.within(openUntilEnfile(fuseB, 0, FILES), 'b opens files', 120_000);
  t.log(`b then opened ${b.opened} files (${b.opened * fdsPerFile} fds; its reserve ${reserve})`);
  t.true(b.opened * fdsPerFile >= reserve - 8, `b took about its reserve (${b.opened * fdsPerFile} fds of ${reserve}), not ENFILE at once`);
  t.true(b.enfile, 'b stops at its reserve while a holds the pool');

  // Its log line says who holds what, and what is kept for the other device.
  const spent = await host.waitForLog(/fs a: fd budget spent/);
  t.log(spent.replace(/^\S+ /, ''));
  const m = /this device (\d+) of the budget \(its reserve (\d+)\), all devices (\d+) of (\d+), (\d+) kept free for the reserves of the other 1 device/.exec(spent);
  t.truthy(m, 'the line names this device, its reserve, all devices and what is kept for the other');
  if (m) {
    t.is(Number(m[4]), budget, 'the budget as logged at start-up');
    t.is(Number(m[2]), reserve, 'a reserve is a quarter of the budget with two fs devices');
    t.true(Number(m[1]) <= budget - reserve + 2, `a holds at most the budget less b's reserve (${m[1]} of ${budget})`);
    t.true(Number(m[5]) >= reserve - 8, `b's reserve is kept free (${m[5]})`);
  }

  t.is(host.lines(/accept failed/).length, 0, 'no listener ever failed to accept');

  // A's disconnect gives its fds back: B takes from the common pool again.
  await feA.close();
  await until(() => host.fdCount() <= baseline + b.opened * fdsPerFile + 20, `a's fds closed after its disconnect (now ${host.fdCount()})`);
  const more = await host.within(openUntilEnfile(fuseB, b.opened, FILES), 'b opens more files', 120_000);
  const totalB = (b.opened + more.opened) * fdsPerFile;
  t.log(`after a left, b opened ${more.opened} more files: ${totalB} fds in all`);
  // A's reserve stays its own while device a exists (its next guest finds it): B gets the rest.
  t.true(totalB >= 2 * reserve, `b took well past its reserve (${totalB} fds, reserve ${reserve})`);
  t.true(totalB <= budget - reserve + 8, `b left a's reserve alone (${totalB} fds; budget ${budget}, reserve ${reserve})`);

  // And a new guest of A gets A's reserve although B holds the pool.
  const feA2 = await host.within(VhostUserFrontend.connect(sock('a'), fsOpts), 'reconnect to a');
  const fuseA2 = new FuseClient(feA2);
  t.is((await fuseA2.init()).error, 0, 'INIT a again');
  const a2 = await host.within(openUntilEnfile(fuseA2, 0, FILES), 'a opens files again', 120_000);
  t.true(a2.opened * fdsPerFile >= reserve - 8, `a's new guest got its reserve (${a2.opened * fdsPerFile} fds)`);
  await feA2.close();
  await feB.close();
});
