// `vhost-wasm serve --config FILE`: the multi-tenant daemon. The whole config is read and
// checked first (a bad field stops start-up with the field named, exit status 2, and nothing
// started); then the management socket, if any, is opened; then each device is started on its
// own, and one that cannot start (its socket taken, its plugin unloadable) is logged while the
// others serve. Runs until SIGINT/SIGTERM, with the single-device host's shutdown promise.

import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { closeSpareWorkers, keepSpareWorkers } from '../device/spare-workers.ts';

import { ConfigError, parseDaemonConfig, type DaemonConfig } from '../daemon/config.ts';
import { activatedSockets } from '../daemon/systemd.ts';
import { Daemon } from '../daemon/daemon.ts';
import { ControlServer } from '../daemon/control-server.ts';
import { daemonMethods } from '../daemon/methods.ts';
import { takeOverDaemon, type TakenOver, type TakeOverMode } from '../daemon/take-over.ts';
import type { ListenAddress } from '../server/listener.ts';
import { stopOnSignals } from '../server/shutdown.ts';
import { createLogger, isLogFormat, isLogLevel, LOG_FORMATS, LOG_LEVELS, setLogFormat, setLogLevel } from '../log/logger.ts';
import { describeError } from '../errors.ts';
import { MetricsAddressError, parseMetricsAddress } from '../metrics/address.ts';
import { MetricsExporter } from '../metrics/exporter.ts';
import { MetricsServer } from '../metrics/server.ts';
import { UsageError } from './args.ts';
import { parseFlags } from './flags.ts';

export const SERVE_HELP = `Usage: vhost-wasm serve --config FILE [--control PATH] [--metrics ADDRESS] [--log-level LEVEL]
                          [--log-format text|json] [--take-over [--take-over-mode auto|live|socket]]

Serve every device listed in FILE (JSON, or TOML if its name ends in .toml) from one process, each on its own socket and in its
own worker, and optionally a management socket for \`vhost-wasm ctl\` (README, "Operating
a daemon", has an example file). The whole file is checked before anything starts: a bad
field stops start-up (exit status 2) with the field named. A device that cannot start (its
socket taken by another back-end, its plugin or disk unusable) is logged and the others are
served.

  --config FILE       the devices; relative paths in it are relative to FILE's directory
  --control PATH      listen for management requests (JSON-RPC 2.0) at PATH, mode 0600;
                      overrides the file's "control"
  --metrics ADDRESS   serve Prometheus metrics (GET /metrics) on IP:PORT (such as
                      127.0.0.1:9464) or unix:PATH (mode 0600); overrides the file's
                      "metrics"; off unless asked for
  --log-level LEVEL   ${LOG_LEVELS.join(', ')} (overrides the file's "logLevel"; default info)
  --log-format FORMAT text (default: TIME LEVEL scope: message) or json (one object per
                      line: time, level, scope, msg); overrides the file's "logFormat"
  --take-over         host upgrade: take every device over from the daemon already serving
                      FILE's management socket ("control"): sockets, memory disks, connected
                      sessions (no reconnect) and limits now; every device of that daemon must
                      be in FILE. All or nothing: a refusal leaves the old daemon serving, and
                      it exits 0 once this one serves (docs/upgrade.md)
  --take-over-mode auto|live|socket
                      auto (default): sessions move live, those that cannot reconnect; live:
                      refuse the take-over unless every session moves live; socket: only the
                      sockets move and every front-end reconnects
  -h, --help          this text

Socket activation: a device (or the control socket) with "systemd": "NAME" takes the socket
systemd passed with FileDescriptorName=NAME (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).
`;

const log = createLogger('vhost-wasm');

/** A serve command line that is wrong (exit status 2). */
class ServeUsageError extends UsageError {
  override name = 'ServeUsageError';
}

/** Every device's listening address, resolved before anything starts (systemd names included). */
function addresses(config: DaemonConfig): { listen: ListenAddress[]; control: ListenAddress | null } {
  const sockets = activatedSockets();
  const listen = config.devices.map((d, i): ListenAddress => {
    const l = d.listen;
    return 'systemd' in l ? { fd: sockets.take(l.systemd, `devices[${i}].systemd`) } : l;
  });
  const c = config.control;
  const control = c === null ? null : 'systemd' in c ? { fd: sockets.take(c.systemd, 'control.systemd') } : c;
  const unused = sockets.unused();
  if (unused.length > 0) log.warn(`systemd passed socket(s) no device asks for: ${unused.join(', ')} (their connections are never served)`);
  return { listen, control };
}

/**
 * The metrics endpoint; after a take-over the old daemon holds the address until it exits
 * (just after its answer), so it is tried again for a few seconds.
 */
async function openMetrics(address: DaemonConfig['metrics'] & object, exporter: MetricsExporter, afterTakeOver: boolean): Promise<MetricsServer> {
  const until = Date.now() + (afterTakeOver ? 10_000 : 0);
  for (;;) {
    try {
      return await MetricsServer.open(address, exporter);
    } catch (e) {
      if (Date.now() >= until) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export async function runServe(argv: string[]): Promise<number> {
  let values;
  try {
    values = parseFlags(argv, {
      config: { type: 'string' },
      control: { type: 'string' },
      metrics: { type: 'string' },
      'log-level': { type: 'string' },
      'log-format': { type: 'string' },
      'take-over': { type: 'boolean' },
      'take-over-mode': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    });
    if (values.help) {
      process.stdout.write(SERVE_HELP);
      return 0;
    }
    if (values.config === undefined) throw new ServeUsageError('give --config FILE (see: vhost-wasm serve --help)');
    if (values['take-over-mode'] !== undefined && !values['take-over']) throw new ServeUsageError('--take-over-mode goes with --take-over');
    if (values['take-over-mode'] !== undefined && !['auto', 'live', 'socket'].includes(values['take-over-mode'])) {
      throw new ServeUsageError(`--take-over-mode: "${values['take-over-mode']}" is not auto, live or socket`);
    }
    if (values['log-level'] !== undefined && !isLogLevel(values['log-level'])) {
      throw new ServeUsageError(`--log-level: "${values['log-level']}" is not one of ${LOG_LEVELS.join(', ')}`);
    }
    if (values['log-format'] !== undefined && !isLogFormat(values['log-format'])) {
      throw new ServeUsageError(`--log-format: "${values['log-format']}" is not one of ${LOG_FORMATS.join(', ')}`);
    }
    // Chosen before anything is logged, so every line of this run has one format.
    if (values['log-format'] !== undefined) setLogFormat(values['log-format'] as 'text' | 'json');
    if (values.metrics !== undefined) {
      try {
        parseMetricsAddress(values.metrics);
      } catch (e) {
        if (e instanceof MetricsAddressError) throw new ServeUsageError(`--metrics: ${e.message}`);
        throw e;
      }
    }
  } catch (e) {
    process.stderr.write(`vhost-wasm serve: ${(e as Error).message}\n`);
    return 2;
  }
  const file = values.config;
  let config: DaemonConfig;
  let where: ReturnType<typeof addresses>;
  try {
    let text;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError('(file)', `cannot read ${file}: ${(e as Error).message}`);
    }
    config = parseDaemonConfig(text, file);
    if (values['log-format'] === undefined && config.logFormat !== null) setLogFormat(config.logFormat);
    if (values.control !== undefined) {
      if (values.control === '') throw new ConfigError('--control', 'is empty');
      config = { ...config, control: { path: values.control } };
    }
    if (values.metrics !== undefined) config = { ...config, metrics: parseMetricsAddress(values.metrics) };
    where = addresses(config);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`vhost-wasm serve: config ${file}: ${e.message} [${e.code}]\n`);
      return 2;
    }
    throw e;
  }
  const level = values['log-level'] ?? config.logLevel ?? 'info';
  if (isLogLevel(level)) setLogLevel(level);

  const daemon = Daemon.create(config.start);
  const report: { started: string[]; failed: { id: string; error: string }[] } = { started: [], failed: [] };
  let control: ControlServer | null = null;
  let metrics: MetricsServer | null = null;
  // The old daemon (after it handed its devices to a new one): its sockets are the new daemon's (kept), it exits.
  const hooks = {
    control: () => control,
    // From the handover's commit the management socket is the new daemon's: no ctl client reaches this one any more.
    committed: (toPid: number) => control?.retire(`this daemon (pid ${process.pid}) has handed over to pid ${toPid}: connect again to reach it`, 'daemon-handover'),
    exitAfterHandover: () => {
      control?.close(true);
      Promise.all([daemon.close(), metrics?.close(), closeSpareWorkers()]).then(
        () => process.exit(0),
        (e: unknown) => {
          log.error(`closing after the handover: ${describeError(e)}`);
          process.exit(1);
        },
      );
    },
  };
  // Host upgrade: the old daemon's devices first (host/daemon/take-over.ts), then the file's others.
  let taken: TakenOver | null = null;
  if (values['take-over']) {
    const controlPath = config.control !== null && 'path' in config.control ? config.control.path : null;
    if (controlPath === null) {
      process.stderr.write('vhost-wasm serve: --take-over asks the old daemon over its management socket: give "control" (a path) in the file or --control PATH\n');
      return 2;
    }
    try {
      taken = await takeOverDaemon(daemon, config, controlPath, (values['take-over-mode'] ?? 'auto') as TakeOverMode);
    } catch (e) {
      log.error(`take-over refused, nothing was taken (an old daemon serves on): ${describeError(e)}`);
      await daemon.close();
      return 1;
    }
    for (const d of taken.devices) {
      const l = daemon.deviceOf(d.id).listener;
      // The socket files are this daemon's now: removed when it stops.
      if (d.socket !== null) l.adoptPath(d.socket);
      l.holdAccepting(false);
    }
    if (taken.partial !== null) log.error(taken.partial);
    const refused = taken.liveRefused.map((r) => `${r.id} (${r.why})`).join(', ');
    log.info(
      `took ${taken.devices.length} device(s) over from the old daemon: ${taken.live.length} with the front-end's session (no reconnect)` +
        `${refused ? `; front-ends that reconnect: ${refused}` : ''}`,
    );
  }
  if (taken !== null && taken.controlFd !== null) {
    control = ControlServer.open({ fd: taken.controlFd }, daemonMethods(daemon, hooks));
    control.adoptPath((config.control as { path: string }).path);
    log.info(`management socket on ${(config.control as { path: string }).path} (taken over)`);
  } else if (where.control && taken?.partial == null) {
    try {
      control = ControlServer.open(where.control, daemonMethods(daemon, hooks));
    } catch (e) {
      // The operator asked to manage this daemon: one that cannot be managed does not start.
      log.error(describeError(e));
      await daemon.close();
      return 1;
    }
    log.info(`management socket on ${'path' in where.control ? where.control.path : `fd ${where.control.fd}`}`);
  }
  if (config.metrics !== null) {
    try {
      metrics = await openMetrics(config.metrics, new MetricsExporter(() => daemon.metered()), taken !== null);
    } catch (e) {
      // Asked for and not available: a daemon nobody can watch does not start.
      log.error(describeError(e));
      control?.close();
      await daemon.close();
      return 1;
    }
    log.info(`metrics on ${metrics.where}`);
  }
  // Devices start a few at a time (each compiles its plugin in its own worker thread); the
  // "not started" lines and the summary keep the file's order.
  const outcomes: (string | null)[] = new Array(config.devices.length).fill(null);
  let next = 0;
  const takenIds = new Set(taken?.oldIds ?? []);
  const starter = async () => {
    for (let i = next++; i < config.devices.length; i = next++) {
      // Taken over (running already), or left with the old daemon by a partial take-over.
      if (takenIds.has(config.devices[i].id)) continue;
      try {
        await daemon.add(config.devices[i], where.listen[i]);
      } catch (e) {
        outcomes[i] = describeError(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(availableParallelism(), config.devices.length) }, starter));
  config.devices.forEach((spec, i) => {
    if (takenIds.has(spec.id) && !taken!.devices.some((d) => d.id === spec.id)) {
      report.failed.push({ id: spec.id, error: 'served by the old daemon (partial take-over)' });
      return;
    }
    const error = outcomes[i];
    if (error === null) {
      report.started.push(spec.id);
    } else {
      report.failed.push({ id: spec.id, error });
      log.error(`device ${spec.id} not started: ${error}`);
    }
  });
  if (report.started.length === 0 && config.devices.length > 0 && control === null) {
    log.error('no device could start and there is no management socket: exiting');
    await metrics?.close();
    await daemon.close();
    return 1;
  }
  log.info(daemon.describeBudget());
  const failed = report.failed.length > 0 ? `; not started: ${report.failed.map((f) => f.id).join(', ')}` : '';
  // Before the line that tells a supervisor (or a test) the daemon serves: a SIGTERM right after
  // it must find the handler, not the default action that kills the process without a cleanup.
  stopOnSignals(daemon.host, log, undefined, async () => {
    control?.close();
    await Promise.all([closeSpareWorkers(), metrics?.close()]);
  });
  log.info(`serving ${report.started.length} of ${config.devices.length} device(s)${failed}`);
  // From now on a device-add (or a device restarted after a failure) takes a thread booted ahead.
  keepSpareWorkers(config.spareWorkers);
  return -1;
}
