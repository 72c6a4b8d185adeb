// A single-device host's device-stats over its control socket (S.control): the device's `work`
// counts, with what it has in flight now (requests popped, requests with storage I/O running).
import type { DeviceWork } from '../../host/metrics/device-meter.ts';
import type { HostDeviceStats } from '../../host/server/host-control.ts';
import { rawRpc } from './daemon-process.ts';
import type { HostProcess } from './host-process.ts';

export async function hostWork(host: HostProcess): Promise<DeviceWork> {
  const [answer] = (await rawRpc(`${host.socketPath}.control`, [JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'device-stats', params: {} })], 1)) as {
    result?: HostDeviceStats;
    error?: { message: string };
  }[];
  if (answer.result === undefined) throw new Error(`device-stats refused: ${answer.error?.message}`);
  return answer.result.work;
}
