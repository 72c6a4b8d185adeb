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
import { createLogger, errorText, setLogFormat, setLogLevel } from '../log/logger.ts';
import { describeError } from '../errors.ts';
import { checkSharedDir, checkStorage } from './grant-checks.ts';
import { ControlServer } from '../daemon/control-server.ts';
import { controlPathFor, hostMethods } from '../server/host-control.ts';
import { HANDOVER_DEADLINE_MS, HandoverRefused, receiveHandover, type HandoverFd, type HandoverHeader } from '../server/takeover.ts';
import { request } from './ctl.ts';
import { native } from '../native/index.ts';

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
  const controlPath = defaultControlPath(o);
  // Host upgrade: the old host's sockets (and memory disk) come first; see host/server/takeover.ts.
  const handover = o.takeOver ? await askForDevice(controlPath, o.takeOverMode) : null;
  const handed = handover?.received.fds ?? new Map<HandoverFd, number>();
  // The connected front-end's session moved here (asked for once our device runs), or why it
  // could not (the front-end reconnects).
  let moved = false;
  let liveRefused: string | null = null;
  // Handed-over fds nothing owns yet (closed here if the take-over fails). Their socket files
  // are the old host's until it lets go: they are adopted (removed at our exit) only after that.
  const loose = new Set(handed.values());
  let host: Host | null = null;
  let control: ControlServer | null = null;
  try {
    if (handover) checkHandedDevice(o, handover.received.header, label);
    const memoryDisk = handed.get('memory-disk');
    // The device slot owns a handed memory disk from its start on.
    if (memoryDisk !== undefined) loose.delete(memoryDisk);
    let source = deviceSource(o);
    if (memoryDisk !== undefined && source.kind === 'plugin') {
      source = { ...source, options: { ...source.options, storage: { ...(source.options!.storage as object), fd: memoryDisk } } };
    }
    const listenFd = handed.get('listen');
    host = await Host.start([
      {
        label,
        // Handed over: nothing is accepted before the session that came with it runs here.
        listen: listenFd !== undefined ? { fd: listenFd, hold: true } : o.socketPath !== null ? { path: o.socketPath } : { fd: o.fd! },
        source,
        callDeadlineMs: o.callDeadlineMs,
        queueThreads: o.queueThreads,
        pollMaxNs: o.pollMaxNs,
        ...(o.throttle ? { throttle: TokenBucket.create(o.throttle) } : {}),
        ...(o.networks.length > 0 ? { networks: o.networks } : {}),
        ...(o.networkRate ? { networkRate: TokenBucket.create(o.networkRate) } : {}),
        session: {
          stateReturnMemfd: o.stateReturnMemfd,
          experimentalRfcStateShm: o.experimentalRfcStateShm,
          statePipeBytes: o.statePipeBytes,
        },
      },
    ]);
    if (listenFd !== undefined) loose.delete(listenFd);
    if (controlPath !== 'none') {
      const running = host;
      const hooks = { control: () => control, exitAfterHandover: () => exitAfterHandover(running, control) };
      const controlFd = handed.get('control');
      control = ControlServer.open(controlFd !== undefined ? { fd: controlFd } : { path: controlPath }, hostMethods(host, hooks));
      if (controlFd !== undefined) loose.delete(controlFd);
    }
    if (handover?.received.header.sessionOffered === true) {
      // Our device runs: only now does the old host stop its session (its pause starts here).
      const got = await handover.received.takeSession();
      if ('refused' in got) {
        if (o.takeOverMode === 'live') throw new HandoverRefused(`--take-over-mode live: the old host's session cannot move live: ${got.refused}`);
        liveRefused = got.refused;
      } else {
        // Takes the session's fds, whatever happens.
        const r = handover.received;
        await host.devices[0].listener.adoptLive(got.record, got.fds, { stop: () => r.takeStop(got.record.rings.length), commit: () => r.ready() });
        moved = true;
      }
    }
  } catch (e) {
    // Asked for (or the default): a host that cannot be managed does not start half-way.
    control?.close();
    await host?.close();
    for (const fd of loose) native.close(fd);
    if (handover) {
      // The old host serves on, and is told why not.
      handover.received.answer(errorText(e));
      // When the old host broke off (it closed the connection), its answer says why: say it too.
      const theirs = await handover.outcome.then(
        () => null,
        (x: unknown) => errorText(x),
      );
      if (theirs !== null && e instanceof Error && !theirs.includes(e.message)) e.message += `; ${theirs}`;
    }
    throw e;
  }
  const info = host.devices[0].slot.info!;
  if (handover) {
    handover.received.answer(null);
    const h = handover.received.header;
    try {
      await handover.outcome;
    } catch (e) {
      // We serve: the old host was told so and lets go whatever its answer says.
      log.warn(`the old host's answer to the handover: ${errorText(e)}`);
    }
    // The socket files are ours now: removed when this host stops.
    host.devices[0].listener.adoptPath(o.socketPath!);
    host.devices[0].listener.holdAccepting(false);
    control?.adoptPath(controlPath);
    if (moved) {
      log.info(`took the device and its connected front-end over from host ${h.hostVersion} (pid ${h.pid}): the session carries on here without a reconnect`);
    } else {
      const why = liveRefused !== null ? ` (its session could not move live: ${liveRefused})` : '';
      log.info(`took the device over from host ${h.hostVersion} (pid ${h.pid}); its front-end reconnects here${why}`);
    }
  }
  // Before the "serving" line: a SIGTERM right after it must find the handler (see serve.ts).
  stopOnSignals(host, log, undefined, () => control?.close());
  log.info(`serving ${info.name} (virtio device id ${info.deviceId}, ${info.numQueues} queue(s)) on ${label}${control ? `; control socket ${controlPath}` : ''}`);
}

/** --control, or S.control beside --socket-path S (none with --fd, or when S.control would be too long a socket path). */
function defaultControlPath(o: CliOptions): string {
  if (o.control !== null) return o.control;
  if (o.socketPath === null) return 'none';
  const p = controlPathFor(o.socketPath);
  if (Buffer.byteLength(p) < UNIX_PATH_MAX) return p;
  if (o.takeOver) throw new UsageError(`--take-over: the old host's control socket ${p} would be longer than a Unix socket path may be: give --control PATH (the one it was started with)`);
  log.warn(`no control socket (vhost-wasm upgrade cannot reach this host): ${p} is longer than a Unix socket path may be (${UNIX_PATH_MAX - 1} bytes); give --control PATH`);
  return 'none';
}

/** sun_path's size on Linux, its terminating NUL included. */
const UNIX_PATH_MAX = 108;

/**
 * --take-over: the host on the control socket hands its device over (takeover.ts), with its
 * connected session unless the mode is socket. A host of the release before live handover does
 * not know `live` (it refuses the parameter): it is asked again without it (auto only).
 */
async function askForDevice(controlPath: string, mode: CliOptions['takeOverMode']) {
  const ask = (live: boolean) =>
    receiveHandover(async (to) => {
      const r = await request(controlPath, 'host-handover', live ? { to, live: true } : { to }, HANDOVER_DEADLINE_MS + 10_000, 'the old host');
      if ('error' in r) {
        const e = new HandoverRefused(`the host on ${controlPath} refused the handover: ${r.error.message}`);
        if (live && /params\.live: unknown parameter/.test(r.error.message)) (e as { olderHost?: boolean }).olderHost = true;
        throw e;
      }
      return r.result;
    });
  if (mode === 'socket') return ask(false);
  try {
    return await ask(true);
  } catch (e) {
    if (!(e as { olderHost?: boolean }).olderHost) throw e;
    if (mode === 'live') throw new HandoverRefused(`--take-over-mode live: the host on ${controlPath} is of a release without live handover`);
    log.warn(`the old host is of a release without live handover: only its sockets move, and its front-end reconnects`);
    return ask(false);
  }
}

/** The device handed over must be the one this command line describes: same socket, memory disk or not. */
function checkHandedDevice(o: CliOptions, h: HandoverHeader, label: string): void {
  if (h.label !== label) throw new HandoverRefused(`the old host serves ${h.label}, not ${label}`);
  const mem = o.storage?.kind === 'memory' ? o.storage.size : null;
  const theirs = h.memoryDiskBytes ?? null;
  if (mem !== theirs) {
    throw new HandoverRefused(
      theirs === null
        ? `this command line asks for --storage memory:${mem}, but the old host's disk is not a memory disk: give its --storage`
        : `the old host's disk is a ${theirs}-byte memory disk: give --storage memory:${theirs} (a memory disk's bytes move with it; another disk would lose them)`,
    );
  }
}

/** The old host after a handover: its sockets are the new host's (kept), its device is let go, it exits. */
function exitAfterHandover(host: Host, control: ControlServer | null): void {
  control?.close(true);
  host.close().then(
    () => process.exit(0),
    (e) => {
      log.error(`closing after the handover: ${errorText(e)}`);
      process.exit(1);
    },
  );
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
  if (process.argv[2] === 'upgrade') {
    // A live plugin upgrade of a running single-device host: see host/cli/upgrade.ts.
    const { runUpgrade } = await import('./upgrade.ts');
    return runUpgrade(process.argv.slice(3));
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
