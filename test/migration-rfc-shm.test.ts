// The experimental RFC shared-memory state extension (protocol feature 63, requests 1000-1002):
// its codec, that it is off unless asked for, that it carries the very same container as
// SET_DEVICE_STATE_FD (so a LOAD validates identically), and how the back-end refuses misuse.
// Real host processes (the large-state TS device), real memfds.
import test from 'ava';
import { native } from '../host/native/index.ts';
import { decodeHeader, encodeU64Reply } from '../host/protocol/codec.ts';
import { decodeRfcStateReply, decodeRfcStateRequest, encodeRfcGetStateReply, encodeRfcStateRequest } from '../host/protocol/rfc-state-shm.ts';
import { DeviceStateDirection, HEADER_SIZE, featureBit } from '../host/protocol/constants.ts';
import { requestName } from '../host/protocol/requests.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE, RfcStateReq } from '../host/protocol/rfc-state-shm.ts';
import { FRONTEND_PROTOCOL_FEATURES } from '../host/frontend/driver.ts';
import { loadState, migrate, MigrationError, saveState } from '../host/frontend/migrate.ts';
import type { HostProcess } from './helpers/host-process.ts';
import { ask, connect, startBigHost } from './devices/migration-helpers.ts';

const RFC = featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE);
const hosts: HostProcess[] = [];
test.after.always(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
});
async function host(o: Parameters<typeof startBigHost>[0] = {}): Promise<HostProcess> {
  const h = await startBigHost(o);
  hosts.push(h);
  return h;
}
const split = (b: Uint8Array) => ({ header: decodeHeader(b.subarray(0, HEADER_SIZE)), payload: b.subarray(HEADER_SIZE) });

// --- codec -----------------------------------------------------------------------------------

test('codec: the extension requests and replies round-trip, with their own names', (t) => {
  t.is(requestName(1000), 'RFC_SET_STATE_AREA (1000)');
  t.is(requestName(1001), 'RFC_GET_STATE (1001)');
  t.is(requestName(1002), 'RFC_SET_STATE (1002)');
  t.is(requestName(44), 'unknown request 44');
  const attach = encodeRfcStateRequest({ code: RfcStateReq.SET_STATE_AREA, size: 1n << 20n, mmapOffset: 4096n, direction: 1, flags: 0, fd: 7 });
  t.deepEqual(attach.fds, [7]);
  const m = split(attach.bytes);
  t.is(m.header.request, 1000);
  t.is(m.payload.length, 24);
  t.like(decodeRfcStateRequest(m.header, m.payload, [7]), { code: 1000, size: 1n << 20n, mmapOffset: 4096n, direction: 1, fd: 7 });
  const detach = encodeRfcStateRequest({ code: RfcStateReq.SET_STATE_AREA, size: 0n, mmapOffset: 0n, direction: 0, flags: 0, fd: null });
  const d = split(detach.bytes);
  t.like(decodeRfcStateRequest(d.header, d.payload, []), { size: 0n, fd: null });
  const get = split(encodeRfcStateRequest({ code: RfcStateReq.GET_STATE, offset: 3n << 32n, size: 65536n }).bytes);
  t.is(get.payload.length, 16);
  t.like(decodeRfcStateRequest(get.header, get.payload, []), { code: 1001, offset: 3n << 32n, size: 65536n });
  const rep = split(encodeRfcGetStateReply({ status: 0n, length: 4096n, remaining: 123n }));
  t.deepEqual(decodeRfcStateReply(1001, rep.header, rep.payload), { status: 0n, length: 4096n, remaining: 123n });
  const ack = split(encodeU64Reply(1002, 3));
  t.is(decodeRfcStateReply(1002, ack.header, ack.payload), 3n);
});

test('codec: malformed extension requests are refused', (t) => {
  const m = split(encodeRfcStateRequest({ code: RfcStateReq.SET_STATE_AREA, size: 4096n, mmapOffset: 0n, direction: 0, flags: 0, fd: 5 }).bytes);
  t.throws(() => decodeRfcStateRequest(m.header, m.payload, []), { message: /carries 0 fds, expects exactly 1/ });
  const flagged = Buffer.from(m.payload);
  flagged.writeUInt32LE(1, 20);
  t.throws(() => decodeRfcStateRequest(m.header, flagged, [5]), { message: /flags 0x1 are reserved/ });
  const d = split(encodeRfcStateRequest({ code: RfcStateReq.SET_STATE_AREA, size: 0n, mmapOffset: 0n, direction: 0, flags: 0, fd: null }).bytes);
  t.throws(() => decodeRfcStateRequest(d.header, d.payload, [5]), { message: /expects none \(size 0 detaches the area\)/ });
  const g = split(encodeRfcStateRequest({ code: RfcStateReq.GET_STATE, offset: 0n, size: 1n }).bytes);
  t.throws(() => decodeRfcStateRequest({ ...g.header, size: 8 }, g.payload.subarray(0, 8), []), { message: /shorter than its 16-byte chunk description/ });
  t.throws(() => encodeRfcStateRequest({ code: RfcStateReq.SET_STATE_AREA, size: 4096n, mmapOffset: 0n, direction: 0, flags: 0, fd: null }), { message: /an fd exactly when size > 0/ });
});

// --- against a host ----------------------------------------------------------------------------

test('off by default: feature 63 is offered only with the extension on, and a migration asking for it refuses before stopping anything', async (t) => {
  // Only the flag switches it on: the environment variable that once did is ignored.
  const off = await host({ env: { VHOST_WASM_EXPERIMENTAL_RFC_STATE_SHM: '1' } });
  const on = await host({ rfc: true });
  const offDest = await host();
  const feOff = await connect(off, { protocolFeatures: FRONTEND_PROTOCOL_FEATURES | RFC });
  const feOn = await connect(on, { protocolFeatures: FRONTEND_PROTOCOL_FEATURES | RFC });
  try {
    t.is(feOff.offeredProtocolFeatures & RFC, 0n);
    t.is(feOn.offeredProtocolFeatures & RFC, RFC);
    t.true(feOn.conn.hasProtocol(RFC_STATE_SHM_PROTOCOL_FEATURE));
    t.is((await ask(feOff, 'a')).seq, 0);
    const err = await t.throwsAsync(migrate(feOff, on.socketPath, { channel: 'rfc-shm' }));
    t.true(err instanceof MigrationError && !err.sourceResumed);
    t.regex(String(err), /did not negotiate the experimental RFC state shm extension/);
    // To a destination without it: refused at init, the source never stopped.
    const err2 = await t.throwsAsync(migrate(feOn, offDest.socketPath, { channel: 'rfc-shm' }));
    t.regex(String(err2), /destination does not offer the experimental RFC state shm extension/);
    t.is((await ask(feOn, 'b')).seq, 0);
    t.is((await ask(feOff, 'c')).seq, 1);
  } finally {
    await Promise.all([feOff.close(), feOn.close()]);
  }
});

test('the RFC shm area carries byte for byte the container SET_DEVICE_STATE_FD carries; LOAD validates it the same way', async (t) => {
  const a = await host({ stateBytes: 3 << 20, rfc: true });
  const b = await host({ stateBytes: 3 << 20, rfc: true });
  const opts = { protocolFeatures: FRONTEND_PROTOCOL_FEATURES | RFC };
  const fa = await connect(a, opts);
  const fb = await connect(b, opts);
  try {
    for (let i = 0; i < 5; i++) await ask(fa, `x${i}`);
    await fa.stopQueue(0);
    await fb.stopQueue(0);
    const viaPipe = await saveState(fa.conn, 'pipe');
    // An area smaller than the state and not a divisor of it: several chunks, a short last one.
    const viaShm = await saveState(fa.conn, 'rfc-shm', 1 << 20);
    const viaSmall = await saveState(fa.conn, 'rfc-shm', 12288);
    t.true(viaPipe.length > 3 << 20);
    t.true(viaShm.equals(viaPipe));
    t.true(viaSmall.equals(viaPipe));
    await a.waitForLog(/device state saved: \d+ bytes through the RFC shm area/, 5000);

    // A corrupted byte in a section: the parse catches it (CRC) and the detach reports failure.
    const bad = Buffer.from(viaPipe);
    bad[bad.length >> 1] ^= 0x40;
    await t.throwsAsync(loadState(fb.conn, bad, 'rfc-shm'), { message: /RFC_SET_STATE_AREA \(detach\) failed/ });
    await b.waitForLog(/RFC state load failed: .*CRC|checksum/i, 5000);
    // A truncated state: every chunk accepted, the detach (the final check) refuses.
    await t.throwsAsync(loadState(fb.conn, viaPipe.subarray(0, viaPipe.length - 100), 'rfc-shm'), { message: /detach\) failed/ });
    await b.waitForLog(/truncated state/, 5000);
    // Garbage at the start: refused at the first chunk, and the detach still ends the transfer.
    await t.throwsAsync(loadState(fb.conn, Buffer.alloc(4096, 1), 'rfc-shm'), { message: /RFC_SET_STATE failed|detach\) failed/ });
    // The genuine state loads, and the device continues the source's count.
    await loadState(fb.conn, viaPipe, 'rfc-shm');
    await fb.startQueue(0, 0);
    t.is((await ask(fb, 'y')).seq, 5);
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
});

test('the back-end refuses RFC transfers while rings run, out-of-order chunks, and CHECK_DEVICE_STATE in their middle', async (t) => {
  const a = await host({ stateBytes: 2 << 20, rfc: true });
  const fe = await connect(a, { protocolFeatures: FRONTEND_PROTOCOL_FEATURES | RFC });
  const area = native.memfdCreate('test-area', false);
  native.ftruncate(area, 1 << 20);
  try {
    await t.throwsAsync(fe.conn.rfcSetStateArea(DeviceStateDirection.SAVE, 1 << 20, area), { message: /RFC_SET_STATE_AREA failed: error 2/ });
    await a.waitForLog(/ring\(s\) 0 still run/, 5000);
    await fe.stopQueue(0);
    // An area larger than the memfd.
    await t.throwsAsync(fe.conn.rfcSetStateArea(DeviceStateDirection.SAVE, 2 << 20, area), { message: /error 3/ });
    await fe.conn.rfcSetStateArea(DeviceStateDirection.SAVE, 1 << 20, area);
    // Rings cannot start while the area is attached.
    await t.throwsAsync(fe.startQueue(0, 0));
    const first = await fe.conn.rfcGetState(0, 4096);
    t.is(first.length, 4096);
    t.true(first.remaining > (2 << 20) - 4096, `remaining ${first.remaining}`);
    await t.throwsAsync(fe.conn.rfcGetState(0, 4096), { message: /RFC_GET_STATE failed/ });
    await a.waitForLog(/the state is a stream, the next offset is 4096/, 5000);
    await t.throwsAsync(fe.conn.rfcGetState(4096, 2 << 20), { message: /RFC_GET_STATE failed/ });
    await t.throwsAsync(fe.conn.rfcSetState(4096, 10), { message: /RFC_SET_STATE failed/ });
    await a.waitForLog(/no LOAD state area is attached/, 5000);
    await t.throwsAsync(fe.conn.checkDeviceState(), { message: /CHECK_DEVICE_STATE failed/ });
    // Detaching early: the SAVE did not complete.
    await t.throwsAsync(fe.conn.rfcDetachStateArea(), { message: /detach\) failed/ });
    await a.waitForLog(/detached after 4096 of \d+ state bytes/, 5000);
    // No area: a detach fails; the source then still serves.
    await t.throwsAsync(fe.conn.rfcDetachStateArea());
    await fe.startQueue(0, 0);
    t.is((await ask(fe, 'z')).seq, 0);
  } finally {
    native.close(area);
    await fe.close();
  }
});

test('migrate over rfc-shm: 24 MiB of state, requests straddling the stop served once, in order', async (t) => {
  const a = await host({ stateBytes: 24 << 20, rfc: true });
  const b = await host({ stateBytes: 24 << 20, rfc: true });
  const fe = await connect(a, { protocolFeatures: FRONTEND_PROTOCOL_FEATURES | RFC, startIndex: 0xfff8 });
  try {
    for (let i = 0; i < 4; i++) t.is((await ask(fe, `b${i}`)).seq, i);
    const inFlight = Array.from({ length: 12 }, (_, i) => ask(fe, `s${i}`));
    const r = await migrate(fe, b.socketPath, { channel: 'rfc-shm', rfcAreaSize: 4 << 20 });
    t.is(r.channel, 'rfc-shm');
    t.true(r.bytes > 24 << 20);
    (await Promise.all(inFlight)).forEach((x, i) => t.deepEqual(x, { seq: 4 + i, echo: `s${i}` }));
    t.is((await ask(fe, 'after')).seq, 16);
    t.is(await fe.stopQueue(0), (0xfff8 + 17) & 0xffff);
    t.log(`rfc-shm: ${r.bytes} bytes, transfer ${r.transferMs.toFixed(1)} ms, downtime ${r.downtimeMs.toFixed(1)} ms`);
  } finally {
    await fe.close();
  }
});
