// The net plugin on a TAP network with a real guest: the host runs inside a network namespace
// the test makes (ip netns), with the net plugin on --network tap:IFNAME; a QEMU guest pings
// the namespace's own kernel through the TAP interface, and sends it bytes with busybox nc
// that a listener in the namespace receives intact. Frames from the kernel (its ARP, its
// replies) reach the guest from the TAP port; the plugin learns the interface's MAC from them.
// Needs root and QEMU 7.2.
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { bootGuest, hasQemu } from './guest/qemu.ts';
import { NET_IMAGE, netSetup, vhostUserNetArgs } from './guest/net.ts';
import { REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const NS = `vhw-qtap-${process.pid}`;
const TAP = 'vhwqtap0';
const MAC = '52:54:00:00:00:2a';
const inNs = (...cmd: string[]) => execFileSync('ip', ['netns', 'exec', NS, ...cmd], { encoding: 'utf8' });
let host: HostProcess;

test.before(async () => {
  if (!hasQemu()) throw new Error('QEMU and the guest packages are needed (test/guest/README.md)');
  execFileSync('ip', ['netns', 'add', NS]);
  host = await startHost(
    ['--socket-path', '{socket}', '--plugin', join(REPO, 'dist', 'plugins', 'net.wasm'), '--network', `tap:${TAP}`, '--plugin-option', `mac=${MAC}`, '--call-deadline', '1000'],
    { wrap: ['ip', 'netns', 'exec', NS] },
  );
  inNs('sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1');
  inNs('ip', 'link', 'set', TAP, 'up');
  inNs('ip', 'addr', 'add', '10.9.0.1/24', 'dev', TAP);
});

test.after.always(async () => {
  await host?.stop();
  try {
    execFileSync('ip', ['netns', 'del', NS]);
  } catch {
    // never made
  }
});

test('a guest on a TAP network pings the namespace and sends it bytes with nc', async (t) => {
  // busybox nc in the namespace: one connection, what it read to stdout.
  const listener = spawn('ip', ['netns', 'exec', NS, 'busybox', 'nc', '-l', '-p', '5000'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let got = '';
  listener.stdout.setEncoding('utf8').on('data', (d: string) => (got += d));
  const closed = new Promise<void>((r) => listener.once('close', () => r()));
  t.teardown(() => listener.kill());
  const r = await bootGuest({
    image: NET_IMAGE,
    timeoutMs: 180_000,
    qemuArgs: vhostUserNetArgs('n0', host.socketPath, MAC),
    script: `set -e
${netSetup('10.9.0.2')}
wait_for 10.9.0.1
ping -c 3 10.9.0.1 | grep 'packets transmitted'
i=0
until echo "hello through the tap from $(cat /sys/class/net/eth0/address)" | nc 10.9.0.1 5000; do i=$((i+1)); [ $i -lt 20 ]; sleep 1; done
`,
  });
  // The host's state too: run beside test/qemu-net, whose `node build.mjs` then copied the addon over
  // the running host's in place, the host died of SIGSEGV with no log line (test/build-replace).
  const hostState = `host exit code ${host.child.exitCode}, signal ${host.child.signalCode}`;
  t.is(r.exitCode, 0, `${r.output}\n${r.qemuStderr}\n${hostState}\n${host.log().slice(-3000)}`);
  t.regex(r.scriptOutput, /3 packets transmitted, 3 packets received/);
  // The guest's nc closes its sending half; the listener's stdin keeps it open: end it here.
  for (let i = 0; i < 100 && !got.includes('\n'); i++) await sleep(50);
  listener.stdin.end();
  listener.kill();
  await closed;
  t.is(got, `hello through the tap from ${MAC}\n`);
});
