// --storage memory:SIZE,prealloc=on (host/storage/prealloc.ts): the memory disk's pages are made
// when the host starts, and stay. What a user checks: the host's memfd holds all SIZE bytes of
// pages before anything was written; a discard does not give them back; a migration LOAD into
// it lands the source's bytes; a host that cannot have the memory refuses to start, saying so;
// a misspelt option is a usage error.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { REPO, hostCommand, startHost, type HostProcess } from './helpers/host-process.ts';
import { BlkDevice } from '../host/frontend/blk.ts';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { migrate } from '../host/frontend/migrate.ts';
import { ConfigError, parseDaemonConfig } from '../host/daemon/config.ts';
import { memoryRoom } from '../host/storage/prealloc.ts';

const BLK = join(REPO, 'dist', 'plugins', 'blk.wasm');
const maybe = existsSync(BLK) ? test.serial : test.serial.skip;
const MIB = 1 << 20;

const run = (args: string[]) => spawnSync(...hostCommand(args), { cwd: REPO, encoding: 'utf8', timeout: 30_000 });

function blkHost(storage: string): Promise<HostProcess> {
  return startHost(['--socket-path', '{socket}', '--plugin', BLK, '--storage', storage]);
}

function connect(h: HostProcess): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(h.socketPath, {
    memoryBytes: 32 << 20,
    queues: [64],
    // VIRTIO_BLK_F_DISCARD (13) too.
    features: (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << 13n),
    protocolFeatures: FRONTEND_PROTOCOL_FEATURES,
  });
}

/** Bytes of pages the host's memory disk memfd holds now (st_blocks of the memfd it has open). */
function diskPages(h: HostProcess): number {
  const dir = `/proc/${h.child.pid}/fd`;
  const fds = readdirSync(dir).filter((fd) => {
    try {
      return readlinkSync(join(dir, fd)).startsWith('/memfd:vhost-wasm-memory-disk');
    } catch {
      return false;
    }
  });
  if (fds.length !== 1) throw new Error(`the host has ${fds.length} memory disk memfds open, not 1`);
  return statSync(join(dir, fds[0])).blocks * 512;
}

function discard(sector: number, sectors: number): Buffer[] {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(11, 0); // VIRTIO_BLK_T_DISCARD
  const s = Buffer.alloc(16);
  s.writeBigUInt64LE(BigInt(sector), 0);
  s.writeUInt32LE(sectors, 8);
  return [h, s];
}

test('misspelt or contradictory memory disk options are usage errors (exit 2)', (t) => {
  const cases: [string[], RegExp][] = [
    [['--storage', 'memory:1M,prealloc=maybe'], /--storage memory:SIZE: "prealloc=maybe" is not an option of a memory disk \(the one there is: prealloc=on or prealloc=off\)/],
    [['--storage', 'memory:1M,share=on'], /"share=on" is not an option of a memory disk/],
    [['--storage', 'memory:1M,prealloc=on', '--read-only'], /a read-only memory disk is never written/],
    [['--storage', 'memory:lots,prealloc=on'], /"lots" is not a size/],
  ];
  for (const [args, re] of cases) {
    const r = run(['--plugin', BLK, '--socket-path', 's', ...args]);
    t.is(r.status, 2, args.join(' '));
    t.regex(r.stderr, re);
  }
  t.regex(run(['--help']).stdout, /--storage memory:SIZE\[,prealloc=on\][\s\S]*committed when the host[\s\S]*starts/);
});

test('the daemon\'s config takes the same spelling in grants.storage, and names the field when it is wrong', (t) => {
  const parse = (storage: string, more: object = {}) =>
    parseDaemonConfig(JSON.stringify({ devices: [{ id: 'm', socket: 'm.sock', plugin: 'blk.wasm', grants: { storage, ...more } }] }), '/etc/d.json');
  t.deepEqual(parse('memory:1M,prealloc=on').devices[0].grants.storage, { kind: 'memory', size: 1 << 20, readOnly: false, prealloc: true });
  t.deepEqual(parse('memory:1M,prealloc=off').devices[0].grants.storage, { kind: 'memory', size: 1 << 20, readOnly: false });
  t.throws(() => parse('memory:1M,prealloc=yes'), {
    instanceOf: ConfigError,
    message: 'devices[0].grants.storage: "prealloc=yes" is not an option of a memory disk (the one there is: prealloc=on or prealloc=off)',
  });
  t.throws(() => parse('memory:1M,prealloc=on', { readOnly: true }), { instanceOf: ConfigError, message: /^devices\[0\]\.grants\.storage: prealloc=on makes pages for writes/ });
});

maybe('a disk bigger than the memory there is refuses to start with prealloc=on, saying so (not an OOM or SIGBUS later)', (t) => {
  const r = run(['--plugin', BLK, '--socket-path', join(REPO, 'never-made.sock'), '--storage', 'memory:64T,prealloc=on']);
  t.is(r.status, 1, r.stderr);
  t.regex(r.stderr, /--storage memory:70368744177664,prealloc=on: the disk's 67108864 MiB cannot be committed: only \d+ MiB is free \(.+\)\. Give a smaller SIZE, free memory, or drop prealloc=on/);
  t.false(existsSync(join(REPO, 'never-made.sock')));
});

maybe('prealloc=on: the pages exist at start and a discard keeps them; without it they are made as written', async (t) => {
  t.timeout(60_000);
  const [pre, lazy] = await Promise.all([blkHost('memory:16M,prealloc=on'), blkHost('memory:16M')]);
  try {
    t.is(diskPages(pre), 16 * MIB, 'all of the disk is there before any write');
    t.true(diskPages(lazy) < 16 * MIB, `${diskPages(lazy)} bytes of pages without prealloc`);
    const fe = await connect(pre);
    try {
      const blk = new BlkDevice(fe.queues[0]);
      for (let m = 0; m < 4; m++) await blk.write((m * MIB) / 512, Buffer.alloc(MIB, 'x'));
      const c = await fe.queues[0].submit(discard(0, (8 * MIB) / 512), [1]);
      t.is(c.data[c.data.length - 1], 0, 'the discard completes OK');
      for (let m = 0; m < 4; m++) t.deepEqual(Buffer.from(await blk.read((m * MIB) / 512, MIB)), Buffer.alloc(MIB), `MiB ${m}: discarded bytes read back as zeroes`);
      t.is(diskPages(pre), 16 * MIB, 'the discard gave no page back');
    } finally {
      await fe.close();
    }
  } finally {
    await Promise.all([pre.stop(), lazy.stop()]);
  }
});

maybe('a migration LOAD into a prealloc=on destination lands the source\'s disk, over a pipe and a memfd', async (t) => {
  t.timeout(120_000);
  for (const channel of ['pipe', 'memfd'] as const) {
    const [a, b] = await Promise.all([blkHost('memory:16M'), blkHost('memory:16M,prealloc=on')]);
    try {
      const fe = await connect(a);
      const model = Buffer.alloc(16 * MIB);
      for (let m = 0; m < 16; m++) model.fill(`${channel} MiB ${m};`, m * MIB, (m + 1) * MIB);
      const blk = new BlkDevice(fe.queues[0]);
      for (let m = 0; m < 16; m++) await blk.write((m * MIB) / 512, model.subarray(m * MIB, (m + 1) * MIB));
      await migrate(fe, b.socketPath, { channel });
      // The front-end now drives the destination.
      const bad: number[] = [];
      for (let m = 0; m < 16; m++) if (!Buffer.from(await blk.read((m * MIB) / 512, MIB)).equals(model.subarray(m * MIB, (m + 1) * MIB))) bad.push(m);
      t.deepEqual(bad, [], `${channel}: MiB(s) of the destination's disk that differ from the source's`);
      t.is(diskPages(b), 16 * MIB);
      await fe.close();
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  }
});

test('the memory check reads every level of the memory cgroup: a limit on an ancestor (v2), and a v1 container\'s own cgroup mounted as the root', (t) => {
  // Trees laid out as /proc and /sys/fs/cgroup are (cgroup limits cannot be set unprivileged here).
  const tree = (files: Record<string, string>) => {
    const root = mkdtempSync(join(tmpdir(), 'prealloc-room-'));
    t.teardown(() => rmSync(root, { recursive: true, force: true }));
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(dirname(join(root, path)), { recursive: true });
      writeFileSync(join(root, path), text);
    }
    return `${root}/`;
  };
  const meminfo = 'MemTotal:       16000000 kB\nMemAvailable:    8388608 kB\n';
  // v2: the service has no limit of its own; its slice allows 1 GiB and uses 900 MiB.
  const v2 = tree({
    'proc/meminfo': meminfo,
    'proc/self/cgroup': '0::/host.slice/vhost.service\n',
    'sys/fs/cgroup/host.slice/memory.max': `${1 << 30}\n`,
    'sys/fs/cgroup/host.slice/memory.current': `${900 * MIB}\n`,
    'sys/fs/cgroup/host.slice/vhost.service/memory.max': 'max\n',
    'sys/fs/cgroup/host.slice/vhost.service/memory.current': `${10 * MIB}\n`,
  });
  t.deepEqual(memoryRoom(v2), { bytes: 124 * MIB, from: "the memory cgroup's memory.max minus memory.current (/sys/fs/cgroup/host.slice)" });
  // v1 in a container without a cgroup namespace: the host's path, the container's cgroup at the mount's root.
  const v1 = tree({
    'proc/meminfo': meminfo,
    'proc/self/cgroup': '4:memory:/docker/0123abcd\n1:cpu:/docker/0123abcd\n',
    'sys/fs/cgroup/memory/memory.limit_in_bytes': `${512 * MIB}\n`,
    'sys/fs/cgroup/memory/memory.usage_in_bytes': `${100 * MIB}\n`,
  });
  t.deepEqual(memoryRoom(v1), { bytes: 412 * MIB, from: "the memory cgroup's memory.limit_in_bytes minus memory.usage_in_bytes (/sys/fs/cgroup/memory)" });
  // No limit anywhere: MemAvailable.
  t.deepEqual(memoryRoom(tree({ 'proc/meminfo': meminfo, 'proc/self/cgroup': '0::/\n' })), { bytes: 8 * 1024 * MIB, from: 'MemAvailable in /proc/meminfo' });
});
