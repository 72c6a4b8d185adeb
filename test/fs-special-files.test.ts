// A FIFO, a Unix socket and a device node in the share, against the real host process (an
// fs device and an rng device in one `vhost-wasm serve` daemon, the built binary): a guest's OPEN or CREATE of any of them is
// refused with ENXIO and nothing is ever opened (a FIFO would block the device worker in
// open(2) for ever, a device node could reach host hardware), LOOKUP and GETATTR still work
// (the host holds them with O_PATH only), the fs device keeps serving, the rng device serves
// throughout, and SIGTERM still ends the host.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { constants as FS, mkdtempSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { REPO } from './helpers/host-process.ts';
import { startDaemon, type DaemonProcess } from './helpers/daemon-process.ts';
import { FuseClient, ERRNO, O, nodeOf, fhOfOpen } from './helpers/fuse.ts';
import { RngPump } from './helpers/rng-pump.ts';

const S_IFMT = 0o170000;
let dir: string;
let share: string;
let host: DaemonProcess;
let server: Server;

test.before(async () => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'fs-special-'));
  share = join(dir, 'share');
  execFileSync('mkdir', [share]);
  writeFileSync(join(share, 'plain'), 'still served\n');
  execFileSync('mkfifo', [join(share, 'fifo')]);
  execFileSync('mknod', [join(share, 'null'), 'c', '1', '3']); // a character device (root only)
  server = createServer();
  await new Promise<void>((r) => server.listen(join(share, 'sock'), r));
  const plugins = join(REPO, 'dist', 'plugins');
  // Both devices in one daemon (the built binary), its transpile cache private to this test.
  const devices = [
    { id: 'rng', socket: join(dir, 'rng.sock'), plugin: join(plugins, 'rng.wasm'), grants: { entropy: true }, limits: { callDeadlineMs: 10_000 } },
    { id: 'fs', socket: join(dir, 'fs.sock'), plugin: join(plugins, 'fs.wasm'), grants: { sharedDir: share }, limits: { callDeadlineMs: 2000 } },
  ];
  writeFileSync(join(dir, 'daemon.json'), JSON.stringify({ devices }));
  host = await startDaemon(['--config', join(dir, 'daemon.json')], { env: { XDG_CACHE_HOME: join(dir, 'cache') } });
});

test.after.always(async () => {
  if (host) await host.stop();
  server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('OPEN and CREATE of a FIFO, a socket or a device node are refused without blocking; the device keeps serving; SIGTERM ends the host', async (t) => {
  const rngFe = await VhostUserFrontend.connect(join(dir, 'rng.sock'), { memoryBytes: 4 << 20, queues: [64] });
  const pump = RngPump.start(t, rngFe);
  const fe = await VhostUserFrontend.connect(join(dir, 'fs.sock'), { memoryBytes: 16 << 20, queues: [64, 64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
  const fuse = new FuseClient(fe);
  t.is((await fuse.init()).error, 0, 'INIT');

  const kinds: [name: string, type: number][] = [['fifo', 0o010000], ['sock', 0o140000], ['null', 0o020000]];
  for (const [name, type] of kinds) {
    const e = await fuse.lookup(1n, name);
    t.is(e.error, 0, `LOOKUP ${name}`);
    const node = nodeOf(e);
    // fuse_entry_out: nodeid, generation, entry/attr valid (+nsec), then fuse_attr (mode at 60).
    t.is(e.body.readUInt32LE(40 + 60) & S_IFMT, type, `${name} is what the host sees`);
    t.is((await fuse.getattr(node)).error, 0, `GETATTR ${name}`);
    for (const [how, flags] of [['O_RDONLY', O.RDONLY], ['O_WRONLY', O.WRONLY], ['O_RDWR', O.RDWR]] as const) {
      t.is((await fuse.open(node, flags)).error, ERRNO.ENXIO, `OPEN ${name} ${how}`);
      t.is((await fuse.create(1n, name, flags | O.CREAT)).error, ERRNO.ENXIO, `CREATE ${name} ${how} (an existing ${name})`);
    }
    t.is((await fuse.create(1n, name, O.RDWR | O.CREAT | O.EXCL)).error, ERRNO.EEXIST, `CREATE ${name} O_EXCL`);
  }
  // Nobody holds the FIFO open for reading: a non-blocking writer finds no reader (ENXIO).
  t.throws(() => closeSync(openSync(join(share, 'fifo'), FS.O_WRONLY | FS.O_NONBLOCK)), { code: 'ENXIO' }, 'the host never opened the FIFO');

  // The device still serves: a regular file opens and reads.
  const plain = nodeOf(await fuse.lookup(1n, 'plain'));
  const fh = fhOfOpen(await fuse.open(plain, O.RDONLY));
  t.is((await fuse.read(fh, 0, 100)).body.toString(), 'still served\n');
  await pump.more(5);
  t.true((await pump.stop()) >= 5, 'rng served throughout');
  t.notRegex(host.log(), /deadline|terminated|needs a reset/, 'no device call hung or failed');

  await fe.close();
  await rngFe.close();
  t.is(await host.stop(), 0, 'SIGTERM ended the host cleanly');
});
