// The C load generator (bench/loadgen/vhost-blk-load.c) speaks vhost-user correctly: against
// the real host process with the blk plugin, and against qemu-storage-daemon with two queues,
// its writes land where their sectors say (--verify stamps every write with its offset and
// checks every read), and it refuses what it cannot do with a message that says why.
import test from 'ava';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO, startHost } from './helpers/host-process.ts';
import { waitForListening } from './helpers/unix-listen.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
let dir: string;
let loadgen: string;
test.before(() => {
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: REPO, stdio: 'inherit' });
  dir = mkdtempSync(join(tmpdir(), 'bench-loadgen-'));
  loadgen = join(dir, 'vhost-blk-load');
  execFileSync('sh', [join(REPO, 'bench', 'loadgen', 'build.sh'), loadgen], { stdio: 'inherit' });
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

interface Result {
  ios: number;
  errors: number;
  verify_failures: number;
  stalled: boolean;
  queues: number;
}

function run(socket: string, args: string[]): { status: number | null; result?: Result; stderr: string } {
  const r = spawnSync(loadgen, ['--socket', socket, '--seconds', '0.3', '--warmup', '0', ...args], { encoding: 'utf8', timeout: 30_000 });
  const last = r.stdout.trim().split('\n').pop();
  return { status: r.status, result: last ? (JSON.parse(last) as Result) : undefined, stderr: r.stderr };
}

test.serial('against our host: verified writes then verified reads, in poll and event mode', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', 'memory:16M']);
  try {
    for (const [rw, mode] of [['randwrite', 'event'], ['randread', 'poll'], ['write', 'poll'], ['read', 'event']]) {
      const r = run(host.socketPath, ['--rw', rw, '--mode', mode, '--depth', '32', '--bs', '8K', '--verify']);
      t.is(r.status, 0, `${rw} ${mode}: ${r.stderr}`);
      t.true(r.result!.ios > 0, `${rw} ${mode} completed requests`);
      t.like(r.result, { errors: 0, verify_failures: 0, stalled: false }, `${rw} ${mode}`);
    }
  } finally {
    await host.stop();
  }
});

test.serial('--verify catches data that is neither the stamp nor zeros', async (t) => {
  const image = join(dir, 'noise.img');
  writeFileSync(image, randomBytes(4 << 20));
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', image]);
  try {
    const r = run(host.socketPath, ['--rw', 'randread', '--mode', 'event', '--verify']);
    t.is(r.status, 5, r.stderr);
    t.is(r.result!.verify_failures, r.result!.ios, 'every read of random bytes failed verification');
    t.true(r.result!.ios > 0);
  } finally {
    await host.stop();
  }
});

test.serial('against qemu-storage-daemon null-co with two queues, one thread each', async (t) => {
  const socket = join(dir, 'qsd.sock');
  const qsd = spawn('qemu-storage-daemon', ['--blockdev', 'driver=null-co,node-name=n,read-zeroes=on,size=67108864',
    '--export', `type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=${socket},writable=on,num-queues=2`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let qsdErr = '';
  qsd.stderr.setEncoding('utf8').on('data', (d: string) => (qsdErr += d));
  try {
    for (let i = 0; i < 400 && !existsSync(socket) && qsd.exitCode === null; i++) await sleep(25);
    t.true(existsSync(socket), `qemu-storage-daemon did not listen: ${qsdErr}`);
    await waitForListening(socket, 15_000, () => qsd.exitCode !== null);
    const r = run(socket, ['--queues', '2', '--rw', 'randread', '--verify']);
    t.is(r.status, 0, r.stderr);
    t.like(r.result, { queues: 2, errors: 0, verify_failures: 0 });
    const tooMany = run(socket, ['--queues', '3']);
    t.is(tooMany.status, 1);
    t.regex(tooMany.stderr, /--queues 3: the back-end supports at most 2/);
  } finally {
    qsd.kill();
  }
});

test.serial('refuses a span larger than the device, naming both sizes', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', 'memory:16M']);
  try {
    const r = run(host.socketPath, ['--size', '1G']);
    t.is(r.status, 1);
    t.regex(r.stderr, /--size 1073741824 exceeds the device's capacity 16777216/);
  } finally {
    await host.stop();
  }
});
