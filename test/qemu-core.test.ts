// QEMU 7.2 itself as the front-end against our host (issue "host core", point 9).
//
// The host serves a block-shaped TypeScript device (test/guest/zero-blk-device.ts: the null test
// device answering zeros, with a virtio-blk config space). A real guest's virtio_blk driver
// drives it through QEMU's vhost-user-blk-pci, so QEMU performs the whole start-up sequence
// (features, memory table, ring setup, kicks) and a few real I/Os. A wire tap between QEMU and
// the host (test/guest/vhost-user-tap.ts) records every message with its values; the host's
// debug log shows it received and handled each of them.

import test, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import { bootGuest, type BootOptions, type BootResult } from './guest/qemu.ts';
import { startTap, type TapRecord, type VhostUserTap } from './guest/vhost-user-tap.ts';
import { ZERO_BLK_SECTORS } from './guest/zero-blk-device.ts';
import { eventually, REPO, startHost, type HostProcess } from './helpers/host-process.ts';
import { ProtocolFeature, featureBit } from '../host/protocol/constants.ts';

const guestTest = process.env.VHOST_WASM_SKIP_GUEST === '1' ? test.serial.skip : test.serial;

const DEVICE = join(REPO, 'test', 'guest', 'zero-blk-device.ts');
const MEM_MIB = 160; // not the harness default, so the sizes below cannot match by accident
const QUEUE_SIZE = 64; // not QEMU's default (128)
const MiB = 1n << 20n;
const VERSION_1 = 1n << 32n;
const F_PROTOCOL_FEATURES = 1n << 30n;
// md5 of 64 KiB of zeros: what the guest reads from a device that answers zeros.
const MD5_64K_ZEROS = 'fcd6bcb56c1689fcef28b57c22475bad';

const GUEST_SCRIPT = [
  'set -e',
  'test -b /dev/vda',
  'echo "sectors $(cat /sys/block/vda/size)"',
  'echo "read $(dd if=/dev/vda bs=4k count=16 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"',
  'echo hello > /tmp/one',
  'dd if=/tmp/one of=/dev/vda bs=512 count=1 conv=sync oflag=direct 2>/dev/null',
  'echo "write ok"',
].join('\n');

function bootAgainst(socketPath: string, script = GUEST_SCRIPT, extra: Partial<BootOptions> = {}): Promise<BootResult> {
  return bootGuest({
    ...extra,
    memMiB: MEM_MIB,
    timeoutMs: 60_000,
    qemuArgs: [
      '-chardev', `socket,id=vu0,path=${socketPath}`,
      '-device', `vhost-user-blk-pci,chardev=vu0,num-queues=1,queue-size=${QUEUE_SIZE}`,
    ],
    script,
  });
}

function explain(r: BootResult, host: HostProcess, tap?: VhostUserTap): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n` +
    `--- console ---\n${r.output}\n--- qemu stderr ---\n${r.qemuStderr}\n--- host log ---\n${host.log()}` +
    (tap ? `\n--- wire ---\n${tap.transcript()}` : '');
}

function one(t: ExecutionContext, recs: TapRecord[], what: string, wire: string): TapRecord {
  t.true(recs.length >= 1, `${what} never went over the wire:\n${wire}`);
  return recs[recs.length - 1];
}

function u64Reply(rec: TapRecord): bigint {
  if (rec.reply?.kind !== 'u64') throw new Error(`${rec.name} reply is not a u64: ${rec.decodeError ?? rec.reply?.kind}`);
  return rec.reply.value;
}

/** Requests the session logged as received (`<- NAME (code)`, maybe followed by values), in order. */
function loggedRequests(log: string): string[] {
  return log.split('\n').flatMap((l) => {
    const m = / <- ([A-Z_]+) \(\d+\)(?: |$)/.exec(l);
    return m ? [m[1]] : [];
  });
}

/** Checks one QEMU run's handshake as seen on the wire and in the host's log. */
function checkHandshake(t: ExecutionContext, tap: VhostUserTap, conn: number, log: string, memTable: 'SET_MEM_TABLE' | 'ADD_MEM_REG'): void {
  const wire = tap.transcript();
  const req = (name: string) => tap.requests(name, conn);
  const rep = (name: string) => tap.replies(name, conn);

  // Features: the host offers VERSION_1 + PROTOCOL_FEATURES; QEMU acks VERSION_1 and nothing unoffered.
  const offered = u64Reply(one(t, rep('GET_FEATURES'), 'GET_FEATURES reply', wire));
  t.is(offered & (VERSION_1 | F_PROTOCOL_FEATURES), VERSION_1 | F_PROTOCOL_FEATURES, `offered 0x${offered.toString(16)}`);
  const setF = one(t, req('SET_FEATURES'), 'SET_FEATURES', wire).request;
  if (setF?.unknown !== false || setF.code !== 2) return void t.fail(`SET_FEATURES undecodable:\n${wire}`);
  t.is(setF.features & VERSION_1, VERSION_1, 'QEMU did not ack VIRTIO_F_VERSION_1');
  t.is(setF.features & ~offered, 0n, `QEMU acked unoffered bits 0x${(setF.features & ~offered).toString(16)}`);

  // Protocol features: what QEMU set is a subset of what it was shown (the tap may hide bits).
  const protoOffered = u64Reply(one(t, rep('GET_PROTOCOL_FEATURES'), 'GET_PROTOCOL_FEATURES reply', wire));
  const setP = one(t, req('SET_PROTOCOL_FEATURES'), 'SET_PROTOCOL_FEATURES', wire).request;
  if (setP?.unknown !== false || setP.code !== 16) return void t.fail(`SET_PROTOCOL_FEATURES undecodable:\n${wire}`);
  t.is(setP.features & ~protoOffered, 0n);
  t.true(req('SET_OWNER').length === 1, `SET_OWNER count ${req('SET_OWNER').length}`);

  // Guest memory: the regions QEMU handed over cover exactly the RAM it was given, each with an fd.
  const regions = memTable === 'SET_MEM_TABLE'
    ? req('SET_MEM_TABLE').flatMap((r) => (r.request?.unknown === false && r.request.code === 5 ? r.request.regions : []))
    : req('ADD_MEM_REG').flatMap((r) => (r.request?.unknown === false && r.request.code === 37 ? [r.request.region] : []));
  t.true(regions.length >= 1, `no ${memTable} regions:\n${wire}`);
  if (memTable === 'SET_MEM_TABLE') {
    t.is(req('ADD_MEM_REG').length, 0);
    const last = req('SET_MEM_TABLE').at(-1)!;
    t.is(last.fdCount, (last.request as { regions: unknown[] }).regions.length, 'one fd per region');
  } else {
    t.is(req('SET_MEM_TABLE').length, 0);
    for (const r of req('ADD_MEM_REG')) t.is(r.fdCount, 1);
  }
  const total = regions.reduce((s, r) => s + r.memorySize, 0n);
  t.is(total, BigInt(MEM_MIB) * MiB,
    `regions ${regions.map((r) => `gpa 0x${r.guestPhysAddr.toString(16)} size 0x${r.memorySize.toString(16)}`).join(', ')}`);

  // Ring 0: the queue size passed on QEMU's command line, addresses inside the memory it mapped.
  const num = one(t, req('SET_VRING_NUM'), 'SET_VRING_NUM', wire).request;
  t.deepEqual(num?.unknown === false && num.code === 8 ? num.state : null, { index: 0, num: QUEUE_SIZE });
  const addr = one(t, req('SET_VRING_ADDR'), 'SET_VRING_ADDR', wire).request;
  if (addr?.unknown !== false || addr.code !== 9) return void t.fail(`SET_VRING_ADDR undecodable:\n${wire}`);
  t.is(addr.addr.index, 0);
  for (const [what, va] of [['desc', addr.addr.descUserAddr], ['avail', addr.addr.availUserAddr], ['used', addr.addr.usedUserAddr]] as const) {
    t.true(regions.some((r) => va >= r.userspaceAddr && va < r.userspaceAddr + r.memorySize), `${what} ring at 0x${va.toString(16)} is outside guest memory`);
  }
  for (const name of ['SET_VRING_KICK', 'SET_VRING_CALL']) {
    const r = one(t, req(name), name, wire);
    t.is(r.fdCount, 1, `${name} without an fd`);
    t.is((r.request as { index?: number }).index, 0);
  }

  // The host received and handled each of them (it logs `<- NAME` before handling; a failure
  // would show as an ERROR line), in the order QEMU sent them.
  const sent = tap.records.filter((r) => r.connection === conn && r.dir === 'request').map((r) => r.name);
  t.deepEqual(loggedRequests(log), sent, 'the host log and the wire disagree');
  t.notRegex(log, / (ERROR|WARN) /, 'the host logged a problem');
}

guestTest('QEMU 7.2 completes the vhost-user handshake with the host; the host frees everything after each QEMU, even a killed one', async (t) => {
  const host = await startHost(['--socket-path', '{socket}', '--device-module', DEVICE, '--log-level', 'debug']);
  const taps: VhostUserTap[] = [];
  try {
    const baselineFds = host.fdCount();
    t.is(host.memfdMappings(), 0);

    // 1st QEMU: with CONFIGURE_MEM_SLOTS hidden, QEMU sends the memory table as SET_MEM_TABLE.
    const tap1 = startTap(host.socketPath, join(host.dir, 'tap1.sock'), {
      hideProtocolFeatures: featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS),
    });
    taps.push(tap1);
    const r1 = await bootAgainst(tap1.path);
    t.log(`1st QEMU (SET_MEM_TABLE): ${r1.durationMs} ms`);
    t.is(r1.exitCode, 0, explain(r1, host, tap1));
    t.is(r1.scriptOutput, `sectors ${ZERO_BLK_SECTORS}\nread ${MD5_64K_ZEROS}\nwrite ok\n`, explain(r1, host, tap1));
    t.is(r1.qemuStderr, '', 'QEMU complained');
    await host.waitForLog(/front-end disconnected/);
    const log1 = host.log();
    checkHandshake(t, tap1, 0, log1, 'SET_MEM_TABLE');

    // Everything released: no guest memory still mapped, fds back to where they were.
    t.true(await eventually(() => host.memfdMappings() === 0), `memfd mappings left: ${host.memfdMappings()}`);
    t.true(await eventually(() => host.fdCount() === baselineFds), `fds ${host.fdCount()} vs baseline ${baselineFds}`);

    // 2nd QEMU, straight to the host, killed (SIGKILL) while its guest keeps the ring busy:
    // the host sees the socket drop mid-I/O and must still release everything.
    // Killed 1 s after the guest started its read loop (not at a fixed time: boots slow down
    // a lot when the machine is busy).
    const kill = new AbortController();
    let seen = '';
    const r2 = await bootAgainst(host.socketPath, [
      'echo busy',
      'while true; do dd if=/dev/vda of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null; done',
    ].join('\n'), {
      signal: kill.signal,
      onOutput: (c) => {
        seen += c;
        if (/^busy$/m.test(seen)) setTimeout(() => kill.abort(), 1000);
      },
    });
    t.true(r2.aborted, `the busy guest was supposed to be killed\n${explain(r2, host)}`);
    t.is(r2.scriptOutput, 'busy\n', explain(r2, host));
    t.log(`2nd QEMU (killed mid-I/O): ${r2.durationMs} ms`);
    t.true(await eventually(() => host.log().split('front-end disconnected').length === 3), host.log());
    t.true(await eventually(() => host.memfdMappings() === 0), `memfd mappings left after a killed QEMU: ${host.memfdMappings()}`);
    t.true(await eventually(() => host.fdCount() === baselineFds), `fds ${host.fdCount()} vs baseline ${baselineFds} after a killed QEMU`);
    const log2 = host.log();
    t.notRegex(log2.slice(log1.length), / ERROR /, 'a killed front-end is routine, not an error');

    // 3rd QEMU on the same host socket, unfiltered: QEMU 7.2 now uses ADD_MEM_REG.
    const tap2 = startTap(host.socketPath, join(host.dir, 'tap2.sock'));
    taps.push(tap2);
    const r3 = await bootAgainst(tap2.path);
    t.log(`3rd QEMU (ADD_MEM_REG): ${r3.durationMs} ms`);
    t.is(r3.exitCode, 0, explain(r3, host, tap2));
    t.is(r3.scriptOutput, `sectors ${ZERO_BLK_SECTORS}\nread ${MD5_64K_ZEROS}\nwrite ok\n`, explain(r3, host, tap2));
    t.is(r3.qemuStderr, '', 'QEMU complained');
    t.true(await eventually(() => host.log().split('front-end disconnected').length === 4), host.log());
    checkHandshake(t, tap2, 0, host.log().slice(log2.length), 'ADD_MEM_REG');
    t.is(u64Reply(tap2.replies('GET_PROTOCOL_FEATURES')[0]) & featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS),
      featureBit(ProtocolFeature.CONFIGURE_MEM_SLOTS));

    t.true(await eventually(() => host.memfdMappings() === 0), `memfd mappings left: ${host.memfdMappings()}`);
    t.true(await eventually(() => host.fdCount() === baselineFds), `fds ${host.fdCount()} vs baseline ${baselineFds}`);
  } finally {
    for (const tap of taps) tap.close();
    await host.stop();
  }
});
