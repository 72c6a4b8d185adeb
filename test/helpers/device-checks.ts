// What host-level fault tests check over and over, next to the rng bystander of
// helpers/rng-pump.ts: a device that serves the fixtures' healthy answer, rings restarted
// after RESET_DEVICE. Shared by tests that run test/fixtures/plugins/multi-device-host.ts
// (helpers/multi-host.ts).
import type { ExecutionContext } from 'ava';
import { VhostUserFrontend, VIRTIO_F_EVENT_IDX, VirtioStatus, type FrontendOptions } from '../../host/frontend/driver.ts';
import { DriverQueue } from '../../host/frontend/queue.ts';
import { ProtocolFeature } from '../../host/protocol/constants.ts';
import { command } from '../devices/script-device.ts';

/** 64 random-looking bytes from the rng device at `path`, through a real front-end (one ring of 64). */
export async function randomFrom(path: string): Promise<void> {
  const fe = await VhostUserFrontend.connect(path, { memoryBytes: 4 << 20, queues: [64] });
  try {
    const r = await fe.queues[0].submit([], 64);
    if (r.len !== 64 || new Set(r.data).size < 16) throw new Error(`rng at ${path} answered ${r.len} bytes`);
  } finally {
    await fe.close();
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms))),
  ]);
}

/** After RESET_DEVICE the driver starts over on the same connection: status, features, rings (one size each, from ring 0). */
export async function restartQueues(fe: VhostUserFrontend, sizes: readonly number[]): Promise<void> {
  const conn = fe.conn;
  const status = conn.hasProtocol(ProtocolFeature.STATUS);
  const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = VirtioStatus;
  if (status) await conn.setStatus(ACKNOWLEDGE | DRIVER);
  await conn.setFeatures(fe.features);
  if (status) await conn.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
  for (const [index, size] of sizes.entries()) {
    fe.queues[index].close();
    const q = new DriverQueue(fe.memory, { index, size, eventIdx: fe.hasFeature(VIRTIO_F_EVENT_IDX), indirectEntries: 0 });
    fe.queues[index] = q;
    const a = q.addresses();
    await conn.setVringNum(index, size);
    await conn.setVringBase(index, 0);
    await conn.setVringAddr({ index, flags: 0, descUserAddr: BigInt(a.desc), usedUserAddr: BigInt(a.used), availUserAddr: BigInt(a.avail), logGuestAddr: BigInt(q.ring.usedGpa) });
    await conn.setVringKick(index, q.kickFd);
    await conn.setVringCall(index, q.callFd);
    q.start();
    await conn.setVringEnable(index, true);
  }
  if (status) await conn.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/** The fixtures' healthy answer (bad.c, test/devices/hostile-device.ts): the writable length filled with 0x5a. */
export async function servesAgain(t: ExecutionContext, fe: VhostUserFrontend, what: string): Promise<void> {
  const r = await withTimeout(fe.queues[0].submit([Buffer.from('ping')], 8), 5000, what);
  t.is(r.len, 8, what);
  t.deepEqual([...r.data], new Array(8).fill(0x5a), what);
}

/** A new connection to the script test device (test/devices/script-device.ts) at `path` gets a device that serves: no NEEDS_RESET, an echo comes back. */
export async function scriptDeviceServes(t: ExecutionContext, path: string, opts: FrontendOptions): Promise<void> {
  const fe = await VhostUserFrontend.connect(path, opts);
  try {
    t.is((await fe.conn.getStatus()) & 0x40 /* DEVICE_NEEDS_RESET */, 0, 'a fresh device, not the failed one');
    const r = await withTimeout(fe.queues[0].submit([command('echo after')], 32), 5000, 'an echo on a new connection');
    t.is(Buffer.from(r.data.subarray(0, r.len)).toString('latin1'), 'echo after');
  } finally {
    await fe.close();
  }
}
