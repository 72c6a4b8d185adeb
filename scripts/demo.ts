// The main job, end to end, for an operator to watch: the bundled host (dist/vhost-wasm.mjs)
// serves a WebAssembly device plugin on a vhost-user socket, QEMU 7.2 boots a small Linux guest
// with that device attached, the guest uses it, and this script reports what the guest saw.
//
//   npm run build                                  # once: addon, bundle, plugins
//   node --import tsx scripts/demo.ts [DEMO...] [--verbose] [--sources]
//
// DEMO is one of the names in DEMOS below (default: every demo whose plugin is built, blk first:
// a fresh 32 MiB raw image, O_DIRECT pattern, ext2 filesystem and files checked from the host).
// --verbose streams the guest's console and the host's log as they happen.
// --sources runs the host from host/cli/main.ts (through tsx) instead of the bundle.
// Exit status: 0 when every demo passed its checks, 1 otherwise, 2 for a usage error.
//
// Builds nothing itself. Needs QEMU and the guest packages of test/guest/README.md.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootGuest, missingGuestPackages } from '../test/guest/qemu.ts';
import { NET_MODULES } from '../test/guest/modules.ts';
import { NET_PCI_OPTIONS } from '../test/guest/net.ts';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..');
const BUNDLE = join(REPO, 'dist', 'vhost-wasm.mjs');
const SOURCES = join(REPO, 'host', 'cli', 'main.ts');
/** How to run the host: the bundle, or (--sources) the TypeScript entry point through tsx. */
let hostCommand: string[] = [BUNDLE];

// --- the demos ------------------------------------------------------------------------------

interface Check {
  what: string;
  ok: boolean;
  detail?: string;
}

interface DemoContext {
  /** A fresh private directory for this run (removed afterwards). */
  dir: string;
  /** What prepare() left for verify(). */
  data: Record<string, unknown>;
}

interface Demo {
  title: string;
  /** The plugin, relative to the repository. */
  plugin: string;
  /** Host arguments beyond --socket-path/--plugin: the capabilities granted to the plugin. */
  hostArgs(ctx: DemoContext): string[];
  /** The host options hostArgs uses (checked against the built host's --help). */
  hostOptions: string[];
  /** QEMU's -device value for the vhost-user device on chardev `chardev`. */
  qemuDevice(chardev: string): string;
  /** Creates what the demo needs (a disk image, a pattern); returns files for the guest. */
  prepare?(ctx: DemoContext): Record<string, Uint8Array>;
  /** Runs in the guest (busybox sh, set -e); what it prints is shown to the operator. */
  guestScript: string;
  /** Judges the guest's output (and anything the host side can check afterwards). */
  verify(output: string, ctx: DemoContext): Check[];
}

/** A demo that runs its own host and guests (the network demo: one daemon, two guests). */
interface CustomDemo {
  title: string;
  plugin: string;
  hostOptions: string[];
  run(dir: string, verbose: boolean): Promise<boolean>;
}

const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');
const field = (output: string, name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(output)?.[1];

const BLK_DISK = 32 << 20;
const BLK_PATTERN_AT = 24 << 20; // above the filesystem
const BLK_PATTERN_BYTES = 256 << 10;
const BLK_FS_KIB = 16 << 10;
const BLK_FILES: Record<string, Buffer> = {
  'hello.txt': Buffer.from('Hello from a vhost-wasm demo: this file went guest -> virtio-blk -> WebAssembly plugin -> disk.img\n'),
  'random.bin': randomBytes(200 << 10),
};

// Order matters: with no DEMO named, every buildable demo runs in this order (blk first).
const DEMOS: Record<string, Demo | CustomDemo> = {
  blk: {
    title: 'virtio-blk: the guest writes a disk image, makes a filesystem on it, the host reads it back',
    plugin: 'dist/plugins/blk.wasm',
    hostArgs: (ctx) => ['--storage', ctx.data.image as string],
    hostOptions: ['--storage'],
    qemuDevice: (chardev) => `vhost-user-blk-pci,chardev=${chardev},num-queues=1`,
    prepare(ctx) {
      const image = join(ctx.dir, 'disk.img');
      writeFileSync(image, Buffer.alloc(BLK_DISK)); // a fresh, zeroed 32 MiB raw image
      const pattern = randomBytes(BLK_PATTERN_BYTES);
      ctx.data.image = image;
      ctx.data.pattern = pattern;
      const files: Record<string, Uint8Array> = { 'guest/pattern': pattern };
      for (const [name, content] of Object.entries(BLK_FILES)) files[`guest/files/${name}`] = content;
      return files;
    },
    guestScript: [
      'echo "disk: /dev/vda, $(cat /sys/block/vda/size) sectors ($(( $(cat /sys/block/vda/size) / 2048 )) MiB), read-only $(cat /sys/block/vda/ro)"',
      `dd if=/guest/pattern of=/dev/vda bs=64k seek=${BLK_PATTERN_AT / (64 << 10)} count=${BLK_PATTERN_BYTES / (64 << 10)} oflag=direct 2>/dev/null`,
      `echo "pattern written: ${BLK_PATTERN_BYTES >> 10} KiB at ${BLK_PATTERN_AT >> 20} MiB with O_DIRECT, md5 $(md5sum < /guest/pattern | cut -d" " -f1)"`,
      `echo "pattern read back: md5 $(dd if=/dev/vda bs=64k skip=${BLK_PATTERN_AT / (64 << 10)} count=${BLK_PATTERN_BYTES / (64 << 10)} iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"`,
      `mke2fs -F -L vhost-wasm /dev/vda ${BLK_FS_KIB} >/dev/null`,
      'mount -t ext2 /dev/vda /mnt',
      'mkdir /mnt/demo && cp /guest/files/* /mnt/demo/ && sync',
      `echo "filesystem: ext2 on the first ${BLK_FS_KIB >> 10} MiB, $(df -k /mnt | awk 'NR==2 {print $3}') KiB used"`,
      'echo "files:"',
      "cd /mnt/demo && for f in *; do echo \"  /demo/$f  $(wc -c < $f) bytes  md5 $(md5sum < $f | cut -d' ' -f1)\"; done && cd /",
      'umount /mnt',
      'echo "unmounted: yes"',
    ].join('\n'),
    verify(out, ctx) {
      const pattern = ctx.data.pattern as Buffer;
      const imagePath = ctx.data.image as string;
      const image = readFileSync(imagePath);
      const onDisk = image.subarray(BLK_PATTERN_AT, BLK_PATTERN_AT + pattern.length);
      const checks: Check[] = [
        { what: 'the guest sees a 32 MiB writable disk', ok: field(out, 'disk') === `/dev/vda, ${BLK_DISK / 512} sectors (32 MiB), read-only 0`, detail: field(out, 'disk') },
        { what: 'it reads back the pattern it wrote', ok: field(out, 'pattern read back') === `md5 ${md5(pattern)}`, detail: field(out, 'pattern read back') },
        { what: 'the image file on the host holds the pattern at its offset', ok: onDisk.equals(pattern), detail: `md5 ${md5(onDisk)} at ${BLK_PATTERN_AT} in ${show(imagePath)}` },
        { what: 'the image file kept its size', ok: image.length === BLK_DISK, detail: `${image.length} bytes` },
        { what: 'the guest unmounted the filesystem cleanly', ok: field(out, 'unmounted') === 'yes' },
      ];
      // The files, read from the image on the host by e2fsprogs' debugfs (when installed).
      let debugfs = '';
      for (const d of ['/usr/sbin/debugfs', '/sbin/debugfs']) if (existsSync(d)) debugfs = d;
      for (const [name, content] of Object.entries(BLK_FILES)) {
        const inGuest = new RegExp(`^  /demo/${name.replace('.', '\\.')}  (\\d+) bytes  md5 ([0-9a-f]{32})$`, 'm').exec(out);
        checks.push({ what: `the guest's /demo/${name} has the content it was given`, ok: inGuest?.[2] === md5(content), detail: inGuest ? `${inGuest[1]} bytes` : 'not listed' });
        if (!debugfs) continue;
        let got: Buffer | null = null;
        try {
          got = execFileSync(debugfs, ['-R', `cat /demo/${name}`, imagePath], { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 << 20 });
        } catch { /* reported below */ }
        checks.push({ what: `debugfs on the host reads /demo/${name} byte-identical from the image`, ok: got !== null && got.equals(content), detail: got ? `${got.length} bytes, md5 ${md5(got)}` : 'debugfs failed' });
      }
      return checks;
    },
  },

  rng: {
    title: 'virtio-rng: the guest reads /dev/hwrng',
    plugin: 'dist/plugins/rng.wasm',
    hostArgs: () => ['--entropy'],
    hostOptions: ['--entropy'],
    qemuDevice: (chardev) => `vhost-user-rng-pci,chardev=${chardev}`,
    guestScript: [
      'echo "hwrng: $(cat /sys/class/misc/hw_random/rng_current)"',
      'dd if=/dev/hwrng of=/tmp/r bs=4096 count=16 iflag=fullblock 2>/dev/null',
      'echo "bytes read: $(wc -c < /tmp/r)"',
      "echo \"distinct byte values: $(hexdump -v -e '1/1 \"%02x\\n\"' /tmp/r | sort -u | wc -l)\"",
      'echo "md5: $(md5sum < /tmp/r | cut -d" " -f1)"',
      'echo "first 32 bytes:"',
      'hexdump -C -n 32 /tmp/r',
    ].join('\n'),
    verify(out) {
      const distinct = Number(field(out, 'distinct byte values'));
      return [
        { what: 'the guest\'s hardware RNG is the virtio device', ok: field(out, 'hwrng') === 'virtio_rng.0', detail: field(out, 'hwrng') },
        { what: 'it got all 65536 bytes it asked for', ok: field(out, 'bytes read') === '65536', detail: field(out, 'bytes read') },
        { what: 'the bytes look random (> 200 of 256 byte values)', ok: distinct > 200, detail: `${distinct} distinct values` },
      ];
    },
  },

  net: {
    title: 'virtio-net: two guests on one host process, switched and filtered by a WebAssembly plugin',
    plugin: 'dist/plugins/net.wasm',
    hostOptions: ['--network', '--plugin-option'],
    run: (dir, verbose) => runNetDemo(dir, verbose),
  },
};

// --- presentation ---------------------------------------------------------------------------

const color = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code: string) => (s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = paint('1');
const dim = paint('2');
const green = paint('32');
const red = paint('31');
const yellow = paint('33');
const say = (s = '') => process.stdout.write(`${s}\n`);
const indent = (text: string, prefix: string) => text.trimEnd().split('\n').map((l) => `${prefix}${l}`).join('\n');
/** Paths inside the repository, relative to where the operator stands. */
const show = (a: string) => (a.startsWith(`${REPO}/`) ? relative(process.cwd(), a) : a);
/** Prints a stream's complete lines under a prefix (chunks arrive split anywhere). */
function linePrinter(prefix: string): (chunk: string) => void {
  let partial = '';
  return (chunk) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    for (const l of lines) say(`${prefix}${l}`);
  };
}
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

// --- the host process -----------------------------------------------------------------------

interface RunningHost {
  child: ChildProcess;
  log(): string;
  stop(): Promise<number | null>;
}

async function startHost(args: string[], verbose: boolean): Promise<RunningHost> {
  const child = spawn(process.execPath, [...hostCommand, ...args], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const echo = linePrinter(dim('  host │ '));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    log += d;
    if (verbose) echo(d);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 20_000;
  while (!/ serving /.test(log)) {
    if (child.exitCode !== null) throw new Error(`the host exited with status ${child.exitCode} before serving:\n${log}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the host was not serving after 20 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    child,
    log: () => log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

// --- one demo -------------------------------------------------------------------------------

async function runDemo(name: string, demo: Demo | CustomDemo, verbose: boolean): Promise<boolean> {
  say(bold(`▶ ${name}: ${demo.title}`));
  const dir = mkdtempSync(join(tmpdir(), `vhost-wasm-demo-${name}-`));
  if ('run' in demo) {
    try {
      return await demo.run(dir, verbose);
    } catch (e) {
      say(`  ${red('✘')} ${(e as Error).message}`);
      say();
      return false;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const ctx: DemoContext = { dir, data: {} };
  const socket = join(dir, `${name}.sock`);
  let host: RunningHost | null = null;
  try {
    const files = demo.prepare?.(ctx) ?? {};
    const hostArgs = ['--socket-path', socket, '--plugin', join(REPO, demo.plugin), ...demo.hostArgs(ctx)];
    const device = demo.qemuDevice('vu0');
    say(`  host    ${dim(`node ${[...hostCommand, ...hostArgs].map(show).join(' ')}`)}`);

    let t0 = performance.now();
    host = await startHost(hostArgs, verbose);
    const serving = / serving (.*)$/m.exec(host.log())?.[1] ?? '';
    say(`          ${green('ready')} in ${secs(performance.now() - t0)}: ${serving}`);

    say(`  guest   ${dim(`qemu-system-x86_64 (TCG) ... -chardev socket,id=vu0,path=${socket} -device ${device}`)}`);
    t0 = performance.now();
    const r = await bootGuest({
      script: `set -e\n${demo.guestScript}\n`,
      qemuArgs: ['-chardev', `socket,id=vu0,path=${socket}`, '-device', device],
      files,
      timeoutMs: 60_000,
      onOutput: verbose ? linePrinter(dim('  guest │ ')) : undefined,
    });
    const bootMs = performance.now() - t0;
    const hostStatus = await host.stop();
    const hostLog = host.log();
    host = null;

    if (r.exitCode === null || r.timedOut) {
      say(`          ${red(r.timedOut ? 'the guest timed out' : 'the guest never reported back')} after ${secs(bootMs)}`);
    } else {
      say(`          booted, ran, powered off in ${secs(bootMs)} (guest script exit status ${r.exitCode})`);
    }
    say();
    say('  what the guest saw:');
    say(r.scriptOutput.trim() ? indent(r.scriptOutput, '    │ ') : '    │ (nothing)');
    say();

    const checks: Check[] = [
      { what: 'the guest script succeeded', ok: r.exitCode === 0, detail: r.timedOut ? 'timed out' : `exit ${r.exitCode}` },
      ...(r.exitCode === 0 ? demo.verify(r.scriptOutput, ctx) : []),
      { what: 'the host shut down cleanly', ok: hostStatus === 0, detail: `exit ${hostStatus}` },
      { what: 'the host logged no errors', ok: !/ ERROR /.test(hostLog) },
    ];
    for (const c of checks) {
      say(`  ${c.ok ? green('✔') : red('✘')} ${c.what}${c.detail ? dim(`  (${c.detail})`) : ''}`);
    }
    const ok = checks.every((c) => c.ok);
    if (!ok) {
      if (r.qemuStderr.trim()) say(`\n  QEMU said:\n${indent(r.qemuStderr, '    ')}`);
      say(`\n  host log:\n${indent(hostLog, '    ')}`);
      if (!verbose) say(`\n  guest console (last 30 lines):\n${indent(r.output.trimEnd().split('\n').slice(-30).join('\n'), '    ')}`);
    }
    say();
    return ok;
  } catch (e) {
    say(`  ${red('✘')} ${(e as Error).message}`);
    say();
    return false;
  } finally {
    if (host) await host.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- the network demo: one daemon, two devices on one network, two guests -----------------

const NET_MAC = { a: '52:54:00:00:00:0a', b: '52:54:00:00:00:0b' };
const NET_POLICY = 'allow 10.0.0.1 10.0.0.2 arp; allow 10.0.0.1 10.0.0.2 icmp; allow 10.0.0.1 10.0.0.2:5000 tcp; allow 10.0.0.1 10.0.0.2:5001 tcp';
const NET_MIB = 8;

async function runNetDemo(dir: string, verbose: boolean): Promise<boolean> {
  const sock = { a: join(dir, 'a.sock'), b: join(dir, 'b.sock') };
  const config = join(dir, 'net.json');
  const devices = (['a', 'b'] as const).map((id) => ({
    id: `net-${id}`,
    socket: sock[id],
    plugin: join(REPO, 'dist/plugins/net.wasm'),
    grants: { network: ['seg0'] },
    options: { mac: NET_MAC[id], policy: NET_POLICY },
    // The default 100 ms deadline killed a device once in ~6 runs at load ~15 (a 107 ms call
    // while two TCG guests and other work shared 2 cores); the demo is about the network.
    limits: { callDeadlineMs: 1000 },
  }));
  writeFileSync(config, JSON.stringify({ devices }, null, 2));
  say(`  host    ${dim(`node ${[...hostCommand, 'serve', '--config', config].map(show).join(' ')}`)}`);
  say(`          ${dim('two net devices on network seg0, policy: ' + NET_POLICY)}`);
  let t0 = performance.now();
  const host = await startHost(['serve', '--config', config], verbose);
  say(`          ${green('ready')} in ${secs(performance.now() - t0)}`);
  try {
    const setup = (ip: string) => [
      'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6',
      `ip addr add ${ip}/24 dev eth0 && ip link set eth0 up`,
      'mkfifo /tmp/hold; exec 3<>/tmp/hold', // a listener's stdin that never ends (busybox nc quits its peer at EOF)
      `echo "eth0: $(cat /sys/class/net/eth0/address) ${ip}, driver $(basename $(readlink /sys/class/net/eth0/device/driver))"`,
    ].join('\n');
    const a = [
      setup('10.0.0.1'),
      'n=0; until ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 120 ]; done',
      'echo "ping: $(ping -c 3 10.0.0.2 | tail -2 | tr "\n" " ")"',
      `dd if=/dev/urandom of=/tmp/data bs=1M count=${NET_MIB} 2>/dev/null`,
      'echo "sent: $(sha256sum /tmp/data | cut -d" " -f1)"',
      'until nc 10.0.0.2 5000 < /tmp/data; do sleep 1; done',
      'if nc -w 3 10.0.0.2 22 </dev/null; then echo "ssh port 22: connected"; else echo "ssh port 22: no connection (the policy allows only tcp 5000)"; fi',
      'until echo done | nc 10.0.0.2 5001; do sleep 1; done',
    ].join('\n');
    const b = [
      setup('10.0.0.2'),
      'nc -l -p 22 <&3 >/dev/null &',
      'echo "received: $(nc -l -p 5000 <&3 | sha256sum | cut -d" " -f1)"',
      'nc -l -p 5001 <&3 >/dev/null',
    ].join('\n');
    const net = (id: 'a' | 'b') => ['-chardev', `socket,id=vu0,path=${sock[id]}`, '-netdev', 'vhost-user,id=n0,chardev=vu0', '-device', `virtio-net-pci,netdev=n0,mac=${NET_MAC[id]},${NET_PCI_OPTIONS}`];
    say(`  guests  ${dim('2 x qemu-system-x86_64 (TCG) ... -netdev vhost-user,chardev=... -device virtio-net-pci,netdev=...')}`);
    t0 = performance.now();
    const boot = (id: 'a' | 'b', script: string) =>
      bootGuest({ script: `set -e\n${script}\n`, qemuArgs: net(id), image: { modules: NET_MODULES }, timeoutMs: 240_000, onOutput: verbose ? linePrinter(dim(`  ${id} │ `)) : undefined });
    const [ra, rb] = await Promise.all([boot('a', a), boot('b', b)]);
    say(`          both ran and powered off in ${secs(performance.now() - t0)}`);
    const hostStatus = await host.stop();
    const hostLog = host.log();
    say();
    for (const [id, r] of [['A (10.0.0.1)', ra], ['B (10.0.0.2)', rb]] as const) {
      say(`  what guest ${id} saw:`);
      say(r.scriptOutput.trim() ? indent(r.scriptOutput, '    │ ') : '    │ (nothing)');
    }
    say();
    const denied = /policy denied tx tcp 10\.0\.0\.1:\d+ -> 10\.0\.0\.2:22 .*$/m.exec(hostLog)?.[0];
    const checks: Check[] = [
      { what: 'both guest scripts succeeded', ok: ra.exitCode === 0 && rb.exitCode === 0, detail: `exit ${ra.exitCode}, ${rb.exitCode}` },
      { what: 'A pinged B through the switch', ok: / 0% packet loss/.test(field(ra.scriptOutput, 'ping') ?? ''), detail: field(ra.scriptOutput, 'ping')?.trim() },
      { what: `B received A's ${NET_MIB} MiB intact (sha256)`, ok: !!field(ra.scriptOutput, 'sent') && field(ra.scriptOutput, 'sent') === field(rb.scriptOutput, 'received') },
      { what: 'the policy kept A away from B\'s port 22', ok: /no connection/.test(field(ra.scriptOutput, 'ssh port 22') ?? '') && !!denied, detail: denied?.replace(/^.*(policy denied)/, '$1') },
      { what: 'the host shut down cleanly', ok: hostStatus === 0, detail: `exit ${hostStatus}` },
      { what: 'the host logged no errors', ok: !/ ERROR /.test(hostLog) },
    ];
    for (const c of checks) say(`  ${c.ok ? green('✔') : red('✘')} ${c.what}${c.detail ? dim(`  (${c.detail})`) : ''}`);
    const ok = checks.every((c) => c.ok);
    if (!ok) {
      for (const r of [ra, rb]) if (r.qemuStderr.trim()) say(`\n  QEMU said:\n${indent(r.qemuStderr, '    ')}`);
      say(`\n  host log (last 40 lines):\n${indent(hostLog.trimEnd().split('\n').slice(-40).join('\n'), '    ')}`);
    }
    say();
    return ok;
  } finally {
    await host.stop();
  }
}

// --- main -----------------------------------------------------------------------------------

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const verbose = argv.includes('--verbose') || argv.includes('-v');
  if (argv.includes('--sources')) hostCommand = ['--import', 'tsx', SOURCES];
  const asked = argv.filter((a) => !a.startsWith('-'));
  if (argv.includes('--help') || argv.includes('-h') || asked.some((a) => !(a in DEMOS))) {
    say(`usage: node --import tsx scripts/demo.ts [${Object.keys(DEMOS).join('|')}]... [--verbose] [--sources]`);
    return argv.includes('--help') || argv.includes('-h') ? 0 : 2;
  }

  say(bold('vhost-wasm demo') + dim(' — a WebAssembly device plugin serving a real QEMU guest'));
  say();
  const problems: string[] = [];
  const entry = hostCommand.at(-1)!;
  if (!existsSync(entry)) problems.push(`${show(entry)} is missing: run \`npm run build\``);
  const missing = missingGuestPackages();
  if (missing.length) problems.push(`the guest needs Debian packages: apt-get install ${missing.join(' ')}`);
  if (problems.length) {
    for (const p of problems) say(`${red('✘')} ${p}`);
    return 1;
  }
  // Why a demo cannot run with what is built (null when it can).
  const help = execFileSync(process.execPath, [...hostCommand, '--help'], { encoding: 'utf8' });
  const blocker = (d: Demo | CustomDemo): string | null => {
    if (!existsSync(join(REPO, d.plugin))) return `${d.plugin} is not built`;
    const lacking = d.hostOptions.filter((o) => !new RegExp(`^\\s+${o}\\b`, 'm').test(help));
    return lacking.length ? `the built host has no ${lacking.join(', ')} option` : null;
  };
  const names = asked.length ? asked : Object.keys(DEMOS).filter((n) => blocker(DEMOS[n]) === null);
  for (const n of names) {
    const why = blocker(DEMOS[n]);
    if (why) problems.push(`${n}: ${why}: run \`npm run build\``);
  }
  if (names.length === 0) problems.push('no demo can run: run `npm run build`');
  const skipped = Object.keys(DEMOS).filter((n) => !names.includes(n));
  if (problems.length) {
    for (const p of problems) say(`${red('✘')} ${p}`);
    return 1;
  }

  const started = performance.now();
  const results: [string, boolean][] = [];
  for (const n of names) results.push([n, await runDemo(n, DEMOS[n], verbose)]);

  const ok = results.every(([, pass]) => pass);
  say(bold('summary') + dim(` (${secs(performance.now() - started)})`));
  for (const [n, pass] of results) say(`  ${pass ? green('PASS') : red('FAIL')}  ${n}`);
  for (const n of skipped) say(`  ${yellow('SKIP')}  ${n} ${dim(`(${blocker(DEMOS[n])})`)}`);
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`demo: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
