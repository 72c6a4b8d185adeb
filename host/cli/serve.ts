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
                          [--log-format text|json]

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

export async function runServe(argv: string[]): Promise<number> {
  let values;
  try {
    values = parseFlags(argv, {
      config: { type: 'string' },
      control: { type: 'string' },
      metrics: { type: 'string' },
      'log-level': { type: 'string' },
      'log-format': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    });
    if (values.help) {
      process.stdout.write(SERVE_HELP);
      return 0;
    }
    if (values.config === undefined) throw new ServeUsageError('give --config FILE (see: vhost-wasm serve --help)');
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
  if (where.control) {
    try {
      control = ControlServer.open(where.control, daemonMethods(daemon));
    } catch (e) {
      // The operator asked to manage this daemon: one that cannot be managed does not start.
      log.error(describeError(e));
      await daemon.close();
      return 1;
    }
    log.info(`management socket on ${'path' in where.control ? where.control.path : `fd ${where.control.fd}`}`);
  }
  let metrics: MetricsServer | null = null;
  if (config.metrics !== null) {
    try {
      metrics = await MetricsServer.open(config.metrics, new MetricsExporter(() => daemon.metered()));
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
  const starter = async () => {
    for (let i = next++; i < config.devices.length; i = next++) {
      try {
        await daemon.add(config.devices[i], where.listen[i]);
      } catch (e) {
        outcomes[i] = describeError(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(availableParallelism(), config.devices.length) }, starter));
  config.devices.forEach((spec, i) => {
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
