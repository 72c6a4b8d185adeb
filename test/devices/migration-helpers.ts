// Shared setup for the migration tests: host processes running the large-state TS device.
import { join } from 'node:path';
import { REPO, startHost, type HostProcess } from '../helpers/host-process.ts';
import { VhostUserFrontend, VIRTIO_F_VERSION_1, type FrontendOptions } from '../../host/frontend/driver.ts';

export const BIG_DEVICE = join(REPO, 'test', 'devices', 'big-state-device.ts');

export interface BigHostOptions {
  stateBytes?: number;
  name?: string;
  version?: string;
  deviceId?: number;
  /** --state-return-memfd */
  returnMemfd?: boolean;
  /** --experimental-rfc-state-shm */
  rfc?: boolean;
  env?: NodeJS.ProcessEnv;
}

export function startBigHost(o: BigHostOptions = {}): Promise<HostProcess> {
  const env: NodeJS.ProcessEnv = {
    VHOST_WASM_TEST_STATE_BYTES: String(o.stateBytes ?? 4 << 20),
    ...(o.name ? { VHOST_WASM_TEST_DEVICE_NAME: o.name } : {}),
    ...(o.version ? { VHOST_WASM_TEST_DEVICE_VERSION: o.version } : {}),
    ...(o.deviceId !== undefined ? { VHOST_WASM_TEST_DEVICE_ID: String(o.deviceId) } : {}),
    ...o.env,
  };
  const flags = [...(o.returnMemfd ? ['--state-return-memfd'] : []), ...(o.rfc ? ['--experimental-rfc-state-shm'] : [])];
  return startHost(['--socket-path', '{socket}', '--device-module', BIG_DEVICE, '--call-deadline', '5000', ...flags], { env });
}

export const FE_OPTS: FrontendOptions = {
  memoryBytes: 16 << 20,
  queues: [64],
  features: 1n << BigInt(VIRTIO_F_VERSION_1),
  eventIdx: true,
};

export function connect(h: HostProcess, opts: Partial<FrontendOptions> = {}): Promise<VhostUserFrontend> {
  return VhostUserFrontend.connect(h.socketPath, { ...FE_OPTS, ...opts });
}

/** A request to the big-state device: returns the sequence number it was served with and the echo. */
export async function ask(fe: VhostUserFrontend, text: string): Promise<{ seq: number; echo: string }> {
  const r = await fe.queues[0].submit([Buffer.from(text)], 8 + text.length);
  const b = Buffer.from(r.data.subarray(0, r.len));
  return { seq: Number(b.readBigUInt64LE(0)), echo: b.subarray(8).toString() };
}
