// A host process serving one device and a front-end connected to it for the length of `run`;
// a failure inside carries the host's log, and the host is stopped either way.
import { VhostUserFrontend, type FrontendOptions } from '../../host/frontend/driver.ts';
import { startHost, type HostProcess } from './host-process.ts';

export async function serving(
  args: string[],
  frontend: FrontendOptions,
  run: (fe: VhostUserFrontend, host: HostProcess) => Promise<void>,
): Promise<HostProcess> {
  const host = await startHost(['--socket-path', '{socket}', ...args]);
  try {
    const fe = await VhostUserFrontend.connect(host.socketPath, frontend);
    try {
      await run(fe, host);
    } finally {
      await fe.close();
    }
  } catch (e) {
    throw new Error(`${(e as Error).message}\nhost log:\n${host.log()}`, { cause: e });
  } finally {
    await host.stop();
  }
  return host;
}
