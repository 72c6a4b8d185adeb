// `vhost-wasm upgrade --socket S --plugin FILE`: live plugin upgrade of a running single-device
// host (`vhost-wasm --socket-path S ...`), through the control socket it opened beside its
// device socket (S.control, or --control PATH). The same request and answer as the daemon's
// `ctl upgrade` (host/cli/ctl.ts), the same code behind it (host/server/plugin-upgrade.ts).
// Exit status: 0 upgraded, 1 refused (the old instance serves on; the reason is printed),
// 2 usage, 3 the host could not be reached.

import { resolve } from 'node:path';
import { human, request } from './ctl.ts';
import { controlPathFor } from '../server/host-control.ts';
import { parseFlags } from './flags.ts';

export const UPGRADE_HELP = `Usage: vhost-wasm upgrade --socket PATH --plugin FILE.wasm [--control PATH] [--json]

Live plugin upgrade of a running host (vhost-wasm --socket-path PATH ...): its device's plugin
is replaced by FILE.wasm (the same plugin, another version) while the front-end runs; the rings
pause, the device state moves to the new instance, and they resume. If FILE does not load, is
another plugin or device, or refuses the state, the old instance keeps serving and the reason
is printed. (For devices of a \`vhost-wasm serve\` daemon: vhost-wasm ctl upgrade ID.)

  --socket PATH       the host's device socket (its --socket-path); its control socket is
                      PATH.control
  --control PATH      the host's control socket, when it was started with --control PATH
                      (or listens on --fd)
  --plugin FILE.wasm  the new build
  --json              print the result (or error) as JSON
  -h, --help          this text

Exit status: 0 upgraded, 1 refused (the old instance serves on), 2 usage error, 3 host unreachable.
`;

export async function runUpgrade(argv: string[]): Promise<number> {
  let values;
  try {
    values = parseFlags(argv, { socket: { type: 'string' }, control: { type: 'string' }, plugin: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } });
    if (values.help) {
      process.stdout.write(UPGRADE_HELP);
      return 0;
    }
    if (!values.plugin) throw new Error('give --plugin FILE.wasm (the new build)');
    if (!values.socket && !values.control) throw new Error('give --socket PATH (the host\'s --socket-path) or --control PATH');
  } catch (e) {
    process.stderr.write(`vhost-wasm upgrade: ${(e as Error).message} (see --help)\n`);
    return 2;
  }
  const path = values.control ?? controlPathFor(values.socket!);
  const plugin = resolve(values.plugin);
  let response;
  try {
    // A large plugin compiles before anything stops: give it time.
    response = await request(path, 'plugin-upgrade', { plugin }, 120_000, 'the host');
  } catch (e) {
    process.stderr.write(`vhost-wasm upgrade: ${(e as Error).message}\n`);
    return 3;
  }
  if ('error' in response) {
    if (values.json) process.stdout.write(JSON.stringify({ error: response.error }, null, 2) + '\n');
    const code = response.error.data?.code ? ` [${response.error.data.code}]` : '';
    process.stderr.write(`vhost-wasm upgrade: refused: ${response.error.message}${code}\n`);
    return 1;
  }
  if (!('result' in response)) {
    process.stderr.write('vhost-wasm upgrade: the host answered something that is not JSON-RPC\n');
    return 3;
  }
  process.stdout.write(values.json ? JSON.stringify(response.result, null, 2) + '\n' : human('plugin-upgrade', response.result));
  return 0;
}
