// A device state stream is untrusted input: every broken or foreign stream must be refused by
// CHECK_DEVICE_STATE with a log line that says why, and both back-ends must keep serving.
import test from 'ava';
import { crc32 } from 'node:zlib';
import { crc32c } from '../host/migration/checksum.ts';
import type { HostProcess } from './helpers/host-process.ts';
import { loadState, migrate, MigrationError, saveState, readToEnd } from '../host/frontend/migrate.ts';
import type { VhostUserFrontend } from '../host/frontend/driver.ts';
import { DeviceStateDirection, DeviceStatePhase } from '../host/protocol/constants.ts';
import { native } from '../host/native/index.ts';
import { ask, connect, startBigHost } from './devices/migration-helpers.ts';

let src: HostProcess;
let dst: HostProcess;
let good: Buffer;
const extra: HostProcess[] = [];

test.before(async () => {
  [src, dst] = await Promise.all([startBigHost({ stateBytes: 3 << 20 }), startBigHost({ stateBytes: 3 << 20 })]);
  const fe = await connect(src);
  for (let i = 0; i < 5; i++) await ask(fe, `r${i}`);
  await fe.stopQueue(0);
  good = await saveState(fe.conn, 'pipe');
  await fe.close();
});

test.after.always(async () => {
  await Promise.all([src, dst, ...extra].filter(Boolean).map((h) => h.stop()));
});

/** Connects to h, stops the ring (a LOAD needs stopped rings), loads bytes; returns the error if refused. */
async function tryLoad(h: HostProcess, bytes: Buffer, mode: 'pipe' | 'memfd' = 'pipe'): Promise<{ error: Error | null; fe: VhostUserFrontend }> {
  const fe = await connect(h);
  const base = await fe.stopQueue(0);
  let error: Error | null = null;
  try {
    await loadState(fe.conn, bytes, mode);
  } catch (e) {
    error = e as Error;
  }
  // Whatever happened, the back-end goes on: restart the ring and use it.
  await fe.startQueue(0, base);
  return { error, fe };
}

async function refused(t: import('ava').ExecutionContext, h: HostProcess, bytes: Buffer, log: RegExp, mode: 'pipe' | 'memfd' = 'pipe'): Promise<void> {
  const before = h.log().length;
  const { error, fe } = await tryLoad(h, bytes, mode);
  try {
    t.truthy(error, 'the load was accepted');
    t.regex(error?.message ?? '', /CHECK_DEVICE_STATE failed/);
    await h.waitForLog(log, 5000);
    t.regex(h.log().slice(before), log);
    // Still serving; a refused load leaves the device as freshly reset.
    t.deepEqual(await ask(fe, 'still here'), { seq: 0, echo: 'still here' });
  } finally {
    await fe.close();
  }
}

function withHeaderCrc(b: Buffer): Buffer {
  const h = b.readUInt32LE(12);
  b.writeUInt32LE(crc32c(b.subarray(0, h - 4)), h - 4);
  return b;
}

test.serial('the good stream loads, through a pipe and through a memfd; the count carries over', async (t) => {
  for (const mode of ['pipe', 'memfd'] as const) {
    const { error, fe } = await tryLoad(dst, good, mode);
    t.is(error, null);
    t.deepEqual(await ask(fe, 'next'), { seq: 5, echo: 'next' });
    await fe.close();
  }
});

test.serial('a state an older host wrote (container format 1, CRC-32) loads, through a pipe and a memfd; its corruption is refused', async (t) => {
  t.is(good.readUInt16LE(8), 2, 'this host writes format 2');
  // The same state as a format-1 host writes it: same layout, CRC-32 (zlib) in header and trailer.
  const old = Buffer.from(good);
  old.writeUInt16LE(1, 8);
  old.writeUInt16LE(1, 10);
  const h = old.readUInt32LE(12);
  old.writeUInt32LE(crc32(old.subarray(0, h - 4)), h - 4);
  old.writeUInt32LE(crc32(old.subarray(0, old.length - 16)), old.length - 8);
  for (const mode of ['pipe', 'memfd'] as const) {
    const { error, fe } = await tryLoad(dst, old, mode);
    t.is(error, null, mode);
    t.deepEqual(await ask(fe, 'next'), { seq: 5, echo: 'next' }, mode);
    await fe.close();
  }
  const bad = Buffer.from(old);
  bad[h + 1000] ^= 0x20;
  await refused(t, dst, bad, /checksum mismatch/);
});

test.serial('truncated stream', async (t) => {
  await refused(t, dst, good.subarray(0, good.length - 1000), /truncated state: the stream ended after \d+ of \d+ bytes/);
  await refused(t, dst, good.subarray(0, 40), /truncated state/);
  await refused(t, dst, good.subarray(0, good.length - 1), /truncated state/, 'memfd');
});

test.serial('a flipped byte: in the payload, in the header, in the trailer', async (t) => {
  const mid = Buffer.from(good);
  mid[Math.floor(mid.length / 2)] ^= 0x10;
  await refused(t, dst, mid, /checksum mismatch .*the state is corrupt/);
  const hdr = Buffer.from(good);
  hdr[40] ^= 1;
  await refused(t, dst, hdr, /header checksum mismatch/);
  const tail = Buffer.from(good);
  tail[tail.length - 6] ^= 0x80;
  await refused(t, dst, tail, /checksum mismatch/, 'memfd');
});

test.serial('trailing garbage', async (t) => {
  await refused(t, dst, Buffer.concat([good, Buffer.from('extra')]), /trailing garbage: \d+ byte\(s\) after the end of the state/);
});

test.serial('a newer container format is refused; garbage is not a state', async (t) => {
  const newer = Buffer.from(good);
  newer.writeUInt16LE(3, 8);
  newer.writeUInt16LE(3, 10);
  await refused(t, dst, withHeaderCrc(newer), /container format 3, readable only by format 3 or later; this host reads formats 1 and 2/);
  await refused(t, dst, Buffer.alloc(4096, 0x41), /not a vhost-wasm device state: bad magic/);
  // A hostile length: a section claiming far more than the total.
  const liar = Buffer.from(good);
  const h = liar.readUInt32LE(12);
  // device name, version, then the section entry: find the u64 length of section 1.
  const off = 34 + 1 + liar[34] + 1 + liar[34 + 1 + liar[34]] + 8;
  liar.writeBigUInt64LE(2n ** 50n, off);
  t.true(off + 8 <= h - 4);
  await refused(t, dst, withHeaderCrc(liar), /total length \d+ does not match/);
});

test.serial('a state from another plugin or another device type is refused', async (t) => {
  const [other, rng] = await Promise.all([startBigHost({ name: 'other-plugin' }), startBigHost({ deviceId: 4 })]);
  extra.push(other, rng);
  await refused(t, other, good, /state is from device "big-state-test" 1.0.0, this device is "other-plugin" 1.0.0/);
  await refused(t, rng, good, /state is from virtio device type 2 \(big-state-test\), this device is type 4/);
});

test.serial('another version of the same plugin: loaded, with a warning (the device decides)', async (t) => {
  const newer = await startBigHost({ version: '1.1.0' });
  extra.push(newer);
  const { error, fe } = await tryLoad(newer, good);
  t.is(error, null);
  t.truthy(await newer.waitForLog(/state is from big-state-test 1.0.0, loading into 1.1.0/));
  t.is((await ask(fe, 'v')).seq, 5);
  await fe.close();
});

test.serial('phase other than STOPPED, unknown direction, CHECK without a transfer', async (t) => {
  const fe = await connect(dst);
  try {
    await fe.stopQueue(0);
    const [r, w] = native.pipe2();
    await t.throwsAsync(fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, 1, w), { message: /error 1/ });
    await t.throwsAsync(fe.conn.setDeviceStateFd(7, DeviceStatePhase.STOPPED, w), { message: /error 1/ });
    native.close(r);
    native.close(w);
    t.truthy(await dst.waitForLog(/phase 1 is not STOPPED \(0\), the only phase this back-end implements/));
    t.truthy(await dst.waitForLog(/direction 7 is neither SAVE \(0\) nor LOAD \(1\)/));
    await t.throwsAsync(fe.conn.checkDeviceState(), { message: /answered 1/ });
    t.truthy(await dst.waitForLog(/CHECK_DEVICE_STATE without a transfer/));
  } finally {
    await fe.close();
  }
});

test.serial('a transfer while a ring runs is refused; the ring keeps serving', async (t) => {
  const fe = await connect(src);
  try {
    t.is((await ask(fe, 'a')).seq, 0);
    const [r, w] = native.pipe2();
    await t.throwsAsync(fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, w), { message: /error 2/ });
    native.close(r);
    native.close(w);
    t.truthy(await src.waitForLog(/ring\(s\) 0 still run: rings must be stopped with GET_VRING_BASE first/));
    t.is((await ask(fe, 'b')).seq, 1);
  } finally {
    await fe.close();
  }
});

test.serial('a ring cannot start while a transfer runs; the front-end keeps getting replies mid-transfer', async (t) => {
  const big = await startBigHost({ stateBytes: 64 << 20 });
  extra.push(big);
  const fe = await connect(big);
  try {
    const base = await fe.stopQueue(0);
    const [r, w] = native.pipe2();
    const ret = await fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, w);
    native.close(w);
    t.is(ret, null);
    // Nothing read yet: the back-end is blocked on a full pipe, but still answers.
    const cfg = await fe.getConfig(0, 4);
    t.is(cfg.length, 4);
    await t.throwsAsync(fe.startQueue(0, base), { message: /SET_VRING_KICK|failed/ });
    let n = 0;
    await readToEnd(r, (b) => {
      n += b.length;
    });
    native.close(r);
    await fe.conn.checkDeviceState();
    t.true(n > 64 << 20);
    await fe.startQueue(0, base);
    t.is((await ask(fe, 'after save')).seq, 0);
  } finally {
    await fe.close();
  }
});

test.serial('the front-end disconnecting mid-transfer aborts it; the host serves the next front-end', async (t) => {
  const big = await startBigHost({ stateBytes: 64 << 20 });
  extra.push(big);
  for (const dir of ['save', 'load'] as const) {
    const fe = await connect(big);
    await fe.stopQueue(0);
    const [r, w] = native.pipe2();
    await fe.conn.setDeviceStateFd(dir === 'save' ? DeviceStateDirection.SAVE : DeviceStateDirection.LOAD, DeviceStatePhase.STOPPED, dir === 'save' ? w : r);
    if (dir === 'load') native.write(w, good.subarray(0, 60000));
    await fe.close();
    await big.waitForLog(new RegExp(`device state ${dir} failed: .*(disconnected|closed|EPIPE)`), 5000);
    native.close(r);
    native.close(w);
    const fe2 = await connect(big);
    t.deepEqual(await ask(fe2, `after ${dir}`), { seq: 0, echo: `after ${dir}` });
    await fe2.close();
  }
  t.pass();
});

test.serial('destination refuses (another plugin): the migration fails and the source resumes', async (t) => {
  const other = await startBigHost({ name: 'other-plugin' });
  extra.push(other);
  const fe = await connect(src);
  try {
    t.is((await ask(fe, 'one')).seq, 0);
    const err = await t.throwsAsync(migrate(fe, other.socketPath, { channel: 'pipe' }), { instanceOf: MigrationError });
    t.true(err?.sourceResumed);
    t.regex(err?.message ?? '', /CHECK_DEVICE_STATE failed/);
    t.deepEqual(await ask(fe, 'two'), { seq: 1, echo: 'two' });
    const err2 = await t.throwsAsync(migrate(fe, other.socketPath, { channel: 'memfd' }), { instanceOf: MigrationError });
    t.true(err2?.sourceResumed);
    t.deepEqual(await ask(fe, 'three'), { seq: 2, echo: 'three' });
  } finally {
    await fe.close();
  }
});

test.serial('a channel that is neither pipe, socket nor file is refused; a new transfer replaces an unfinished one', async (t) => {
  const fe = await connect(dst);
  try {
    const base = await fe.stopQueue(0);
    const efd = native.eventfd(0);
    await t.throwsAsync(fe.conn.setDeviceStateFd(DeviceStateDirection.SAVE, DeviceStatePhase.STOPPED, efd), { message: /error 3/ });
    native.close(efd);
    t.truthy(await dst.waitForLog(/neither a pipe, a socket nor a regular file/));
    // A LOAD whose writer never writes nor closes...
    const [r, w] = native.pipe2();
    await fe.conn.setDeviceStateFd(DeviceStateDirection.LOAD, DeviceStatePhase.STOPPED, r);
    native.close(r);
    // ...is replaced by the next SET_DEVICE_STATE_FD, which then succeeds on its own.
    await loadState(fe.conn, good, 'pipe');
    native.close(w);
    t.truthy(await dst.waitForLog(/a new SET_DEVICE_STATE_FD replaces a load still in progress/));
    await fe.startQueue(0, base);
    t.is((await ask(fe, 'replaced')).seq, 5);
  } finally {
    await fe.close();
  }
});
