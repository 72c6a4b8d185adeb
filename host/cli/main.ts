#!/usr/bin/env node
// The one entry point of the vhost-wasm binary (dist/vhost-wasm.mjs is this file bundled):
// subcommands are dispatched here, and no other module checks whether it is the program being
// run. Inside the bundle every module shares one file, so such a check fires in all of them.
// Without a subcommand: parse the command line, start the device, serve until SIGINT/SIGTERM.

import { TokenBucket } from '../limits/token-bucket.ts';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { HELP, parseCli, UsageError, type CliOptions } from './args.ts';
import { Host } from '../server/index.ts';
import { stopOnSignals } from '../server/shutdown.ts';
import { DeviceWorker } from '../device/worker-client.ts';
import type { DeviceSource } from '../device/rpc.ts';
import { capabilitiesFor } from './capabilities.ts';
import { createLogger, setLogFormat, setLogLevel } from '../log/logger.ts';
import { describeError } from '../errors.ts';
import { checkSharedDir, checkStorage } from './grant-checks.ts';

import { HOST_VERSION as VERSION } from '../version.ts';
const log = createLogger('vhost-wasm');

function deviceSource(o: CliOptions, extra: Record<string, unknown> = {}): DeviceSource {
  if (o.deviceModule) {
    if (o.storage) throw new Error('--storage is granted to --plugin devices only');
    return { kind: 'module', url: pathToFileURL(resolve(o.deviceModule)).href };
  }
  const storage = checkStorage(o.storage);
  return {
    kind: 'plugin',
    path: resolve(o.plugin!),
    options: {
      memoryLimitBytes: o.memoryLimitBytes,
      entropy: o.entropy,
      ...(Object.keys(o.pluginOptions).length ? { pluginOptions: o.pluginOptions } : {}),
      ...(storage ? { storage } : {}),
      ...(o.filesystem ? { filesystem: checkSharedDir(o.filesystem) } : {}),
      ...extra,
    },
  };
}

async function printCapabilities(o: CliOptions): Promise<void> {
  // A block plugin describes itself from its storage grant (read-only or not): without
  // --storage, lend it an empty read-only one that nothing else depends on.
  // A net plugin states its MTU from its first network and refuses to load without one: lend it
  // the description of one (no port on any switch: the probe moves no frames).
  const probe = {
    ...(o.storage ? {} : { storage: { kind: 'memory', size: 0, readOnly: true }, storageProbe: true }),
    networks: [{ mtu: 1500 }],
  };
  const worker = await DeviceWorker.start(deviceSource(o, probe), { label: 'capabilities', callDeadlineMs: 5000 });
  try {
    process.stdout.write(JSON.stringify(capabilitiesFor(worker.info)) + '\n');
  } finally {
    await worker.terminate();
  }
}

async function serve(o: CliOptions): Promise<void> {
  const label = o.socketPath ?? `fd ${o.fd}`;
  const host = await Host.start([
    {
      label,
      listen: o.socketPath !== null ? { path: o.socketPath } : { fd: o.fd! },
      source: deviceSource(o),
      callDeadlineMs: o.callDeadlineMs,
      queueThreads: o.queueThreads,
      ...(o.throttle ? { throttle: TokenBucket.create(o.throttle) } : {}),
      ...(o.networks.length > 0 ? { networks: o.networks } : {}),
      session: {
        stateReturnMemfd: o.stateReturnMemfd,
        experimentalRfcStateShm: o.experimentalRfcStateShm,
        statePipeBytes: o.statePipeBytes,
      },
    },
  ]);
  const info = host.devices[0].slot.info!;
  log.info(`serving ${info.name} (virtio device id ${info.deviceId}, ${info.numQueues} queue(s)) on ${label}`);
  stopOnSignals(host, log);
}

async function main(): Promise<number> {
  if (process.argv[2] === 'migrate') {
    // A front-end tool, not the back-end: see host/cli/migrate.ts.
    const { runMigrateCli } = await import('./migrate.ts');
    try {
      return await runMigrateCli(process.argv.slice(3));
    } catch (e) {
      // A bug, not a refused migration: whether the source still runs is unknown (exit 3).
      process.stderr.write(`vhost-wasm migrate: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      return 3;
    }
  }
  if (process.argv[2] === 'serve') {
    // The multi-tenant daemon: see host/cli/serve.ts.
    const { runServe } = await import('./serve.ts');
    return runServe(process.argv.slice(3));
  }
  if (process.argv[2] === 'ctl') {
    // The daemon's management client: see host/cli/ctl.ts.
    const { runCtl } = await import('./ctl.ts');
    return runCtl(process.argv.slice(3));
  }
  let o: CliOptions;
  try {
    o = parseCli(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`vhost-wasm: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (o.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (o.version) {
    process.stdout.write(`vhost-wasm ${VERSION}\n`);
    return 0;
  }
  setLogLevel(o.logLevel);
  setLogFormat(o.logFormat);
  try {
    if (o.printCapabilities) {
      await printCapabilities(o);
      return 0;
    }
    await serve(o);
    return -1; // keep running
  } catch (e) {
    // With its code, so a supervisor can tell a bad plugin from a busy socket without parsing prose.
    log.error(describeError(e));
    return 1;
  }
}

main().then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (e) => {
    log.error(`fatal: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exit(1);
  },
);
