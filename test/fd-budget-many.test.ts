// Many devices in one process with a small RLIMIT_NOFILE (1024, set by prlimit on the daemon
// `vhost-wasm serve --config`): a started device keeps only what it always needs out of the
// share budget (one SET_MEM_TABLE's worth of memory regions, not all 509 slots), so twenty rng
// devices and an fs device all start and the fs device still has share handles to serve with.
// Memory regions a front-end adds past those 8 (ADD_MEM_REG) are taken from the budget's common
// pool as they arrive, never from the reserve of a device with a share (fd-budget.ts): a
// front-end that adds more than the pool holds has its ADD_MEM_REG refused, with one log line
// saying why, while every other device keeps serving (the fs device still looks up, from its
// reserve); its disconnect gives them back.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { ftruncateSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../host/frontend/driver.ts';
import { native } from '../host/native/index.ts';
import { deviceReserve, MEM_REGIONS_RESERVED, RESERVE_BASE } from '../host/resources/fd-budget.ts';
import { REPO } from './helpers/host-process.ts';
import { startMultiHost, type DeviceSpec, type MultiHost } from './helpers/multi-host.ts';
import { FuseClient } from './helpers/fuse.ts';
import { RngPump } from './helpers/rng-pump.ts';

const LIMIT = 1024;
const RNGS = 20;
const fsOpts: FrontendOptions = { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) };
const rngOpts: FrontendOptions = { memoryBytes: 4 << 20, queues: [64] };

let dir: string;
let host: MultiHost;
const sock = (l: string) => join(dir, `${l}.sock`);

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'fd-budget-many-'));
  const share = join(dir, 'share');
  mkdirSync(share);
  writeFileSync(join(share, 'hello'), 'hi');
  const plugins = join(REPO, 'dist', 'plugins');
  const cacheDir = join(dir, 'cache');
  const specs: DeviceSpec[] = [];
  for (let i = 0; i < RNGS; i++) specs.push({ label: `rng${i}`, socket: sock(`rng${i}`), plugin: join(plugins, 'rng.wasm'), options: { entropy: true, cacheDir }, callDeadlineMs: 10_000 });
  specs.push({ label: 'fs', socket: sock('fs'), plugin: join(plugins, 'fs.wasm'), options: { filesystem: { dir: share, readOnly: true, inodeFileHandles: 'never' }, cacheDir }, callDeadlineMs: 10_000 });
  host = await startMultiHost(specs, { nofile: [LIMIT, LIMIT] });
});

test.after.always(async () => {
  if (host) await host.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A 4 KiB memfd region at `gpa` (the fd is the caller's to close once sent). */
function smallRegion(gpa: bigint) {
  const fd = native.memfdCreate('extra-region', false);
  ftruncateSync(fd, 4096);
  return { guestPhysAddr: gpa, memorySize: 4096n, userspaceAddr: gpa, mmapOffset: 0n, fd };
}

test.serial('twenty-one devices start under RLIMIT_NOFILE 1024; a front-end adding regions past the budget is refused, the others keep serving', async (t) => {
  const budget = LIMIT - RESERVE_BASE - RNGS * deviceReserve(1) - deviceReserve(2);
  t.true(budget > 100, `the reserve of ${RNGS + 1} devices leaves share handles (${budget})`);
  // Every device's worker has started (they start at device-add) before the fs device serves.
  const fe = await host.within(VhostUserFrontend.connect(sock('fs'), fsOpts), 'connect to fs');
  const fuse = new FuseClient(fe);
  t.is((await fuse.init()).error, 0, 'INIT');
  t.is((await fuse.lookup(1n, 'hello')).error, 0, 'LOOKUP takes a share handle: the budget is not spent by the device reserves');
  await fe.close();

  // A second guest of the fs device, its share open (INIT takes the root's handle) before the hoarding.
  const fe2 = await host.within(VhostUserFrontend.connect(sock('fs'), fsOpts), 'reconnect to fs');
  const fuse2 = new FuseClient(fe2);
  t.is((await fuse2.init()).error, 0);

  const hoarder = await host.within(VhostUserFrontend.connect(sock('rng0'), { ...rngOpts, addMemReg: true }), 'connect to rng0 with ADD_MEM_REG');
  let added = 0;
  let refusal: unknown = null;
  for (let i = 0; i < 509 && refusal === null; i++) {
    const r = smallRegion(0x1_0000_0000n + BigInt(i) * 0x10000n);
    try {
      await hoarder.conn.addMemReg(r);
      added++;
    } catch (e) {
      refusal = e;
    } finally {
      native.close(r.fd);
    }
  }
  t.truthy(refusal, `ADD_MEM_REG refused before the 509 slots (after ${added} regions)`);
  // The regions past the 8 every device keeps come from the common pool only: the fs device's
  // reserve (half the budget, it being the only device with a share) is not theirs to take.
  const pool = budget - Math.floor(budget / 2);
  t.log(`${added} regions added; budget ${budget}, of it the fs device's reserve ${budget - pool}`);
  t.true(added <= MEM_REGIONS_RESERVED + pool + 8 && added >= MEM_REGIONS_RESERVED + pool - 8, `regions taken (${added}) are about the 8 kept per device and the common pool (${pool})`);
  const line = await host.waitForLog(/fd budget has no room/);
  t.regex(line, /remove regions or raise the host's RLIMIT_NOFILE/);

  // Another device serves and accepts meanwhile; the fs device's guest finds the budget spent.
  const other = await host.within(VhostUserFrontend.connect(sock('rng1'), rngOpts), 'connect to rng1');
  const pump = RngPump.start(t, other);
  await host.within(pump.more(4), 'rng1 serves');
  await pump.stop();
  await other.close();
  t.is((await fuse2.lookup(1n, 'hello')).error, 0, "the added regions left the fs device its reserve: it still looks up");

  // The hoarder's disconnect gives its regions back (once the host has released its
  // connection): the fs device takes share handles again.
  await hoarder.close().catch(() => {});
  await host.waitForLog(/session rng0: front-end disconnected/);
  let error = -1;
  for (let i = 0; i < 100 && error !== 0; i++) {
    error = (await fuse2.lookup(1n, 'hello')).error;
    if (error !== 0) await new Promise((r) => setTimeout(r, 50));
  }
  t.is(error, 0, 'LOOKUP after the hoarder left');
  await fe2.close();
});
