// `vhost-wasm ctl`: the management API's client. One request per invocation over the daemon's
// control socket; the answer is printed for people, or as the JSON-RPC result with --json.
// Exit status: 0 done, 1 the daemon refused the request (its error is printed), 2 usage,
// 3 the daemon could not be reached or answered something that is not JSON-RPC.

import { parsePluginOptionFlags, type PluginOptions } from '../plugin/plugin-options.ts';
import type { ThrottleLimits } from '../limits/token-bucket.ts';
import { createConnection } from 'node:net';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parsePollMaxNs, UsageError } from './args.ts';
import { MAX_POLL_MAX_NS } from '../device/poll-window.ts';
import { JSONRPC, type RpcResponse } from '../daemon/jsonrpc.ts';
import type { MethodResults } from '../daemon/methods.ts';
import type { DeviceStats, DeviceSummary } from '../daemon/daemon.ts';

export const CTL_HELP = `Usage: vhost-wasm ctl --control PATH [--json] COMMAND [ARGS]

Manage a running \`vhost-wasm serve\` daemon through its management socket (--control, or
$VHOST_WASM_CONTROL). Only the daemon's own user (and root) may.

Commands:
  list                    the devices: id, tenant, state, virtio device, socket
  stats [ID]              counters of one device or all, and the process's memory and fds
  add --id ID --socket PATH --plugin FILE [device options]
                          start serving one more device; the device options are those of
                          the single-device command line: --tenant NAME, --entropy,
                          --storage PATH|memory:SIZE, --direct, --read-only, --shared-dir DIR,
                          --tag NAME, --xattr, --posix-acl, --memory-limit SIZE,
                          --call-deadline MS, --cpu-share CPUS, --queue-threads N,
                          --poll-max-ns N (spin on
                          its rings for up to N ns, 0 to ${MAX_POLL_MAX_NS}, before waiting for
                          a kick; default 0: off), --open-files N (most fds the shared
                          directory may hold), the I/O throttle's flags below, and
                          --throttle-group NAME (devices of a tenant naming the same group
                          share one budget), --plugin-option KEY=VALUE (repeatable),
                          --start eager|on-connect (when its worker starts: now, or when
                          its first front-end connects; default: the daemon's "start").
                          Relative paths are taken from ctl's working directory.
  del ID                  stop serving a device: its front-end is disconnected, its socket
                          removed and its worker ended
  set-limits ID [--call-deadline MS] [--cpu-share CPUS] [I/O throttle flags]
                          a running device's call deadline, from the call in progress on,
                          its CPU share (the time its code may run in calls of 2 ms or
                          more, in CPUs, on
                          average over a second, before its threads drop to the lowest
                          priority; default 0.5), and its
                          I/O throttle, from the next request on (for a device in a
                          throttle group: the whole group's). Its memory and open-files
                          limits are fixed while it runs.
  I/O throttle flags (token buckets; a rate of 0 lifts that limit; a rate without its burst
  gets a tenth of a second's worth):
    --iops N              requests per second
    --iops-burst N        requests that may go at once after an idle spell
    --bps SIZE            bytes per second (request data, readable and writable: 10M, 1G)
    --bps-burst SIZE      bytes that may go at once after an idle spell
  upgrade ID --plugin FILE
                          live plugin upgrade: the device's plugin is replaced by FILE (the
                          same plugin, another version) while its front-end runs; its rings
                          pause, its state moves to the new instance, and they resume. If
                          FILE does not load, is another plugin or refuses the state, the
                          old instance keeps serving and the reason is printed
  log-level LEVEL         the daemon's log level from now on, its device workers' included
                          (error, warn, info, debug)

Options:
  --control PATH          the daemon's management socket
  --json                  print the JSON-RPC result (or error) instead of text
  --timeout SECONDS       give up waiting for the daemon's answer after this long (0: wait
                          as long as the daemon keeps the connection open). Default: 30 s,
                          except for add and upgrade, which wait for the daemon however
                          long their work takes (making a prealloc=on disk's pages,
                          transpiling and warming a new build)
  -h, --help              this text

Exit status: 0 done, 1 refused by the daemon, 2 usage error, 3 daemon unreachable.
`;

const DEFAULT_TIMEOUT_MS = 30_000;
/**
 * Methods whose work has no bound the client could know: device-add makes a prealloc=on disk's
 * pages (~1.3 s per GiB here) and may transpile a plugin; plugin-upgrade warms a new build. A
 * fixed limit would report a failure for an add that then succeeds.
 */
const UNBOUNDED_METHODS = new Set(['device-add', 'plugin-upgrade']);

/** --timeout SECONDS: a non-negative number (0: no limit), in ms. */
function timeoutFlag(v: string): number {
  if (!/^\d+(\.\d+)?$/.test(v)) throw new CtlUsageError(`--timeout: "${v}" is not a number of seconds (0: wait as long as the daemon keeps the connection)`);
  const ms = Math.round(Number(v) * 1000);
  // Not 0 by rounding (that would mean "no limit"), and within what a timer holds (~24.8 days).
  if (ms === 0 && Number(v) > 0) throw new CtlUsageError(`--timeout: ${v} s is under a millisecond (0 means no limit)`);
  if (ms > MAX_TIMEOUT_MS) throw new CtlUsageError(`--timeout: ${v} s is more than ${MAX_TIMEOUT_MS / 1000} s (0 means no limit)`);
  return ms;
}
const MAX_TIMEOUT_MS = 2_147_483_000;

/** A ctl command line that is wrong (exit status 2). */
class CtlUsageError extends UsageError {
  override name = 'CtlUsageError';
}

/** Sends one request, resolves with the one response line, parsed. */
/** `who` names the server in messages (the daemon, the host). */
/** `timeoutMs` 0: no limit (the answer, or the daemon closing the connection, ends the wait). */
export function request(path: string, method: string, params: Record<string, unknown>, timeoutMs = 30_000, who = 'the daemon'): Promise<RpcResponse> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = '';
    const timer = timeoutMs > 0
      ? setTimeout(() => {
          sock.destroy();
          reject(new Error(`no answer from ${path} within ${timeoutMs / 1000} s`));
        }, timeoutMs)
      : undefined;
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify({ jsonrpc: JSONRPC, id: 1, method, params }) + '\n'));
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      sock.end();
      try {
        resolve(JSON.parse(buf.slice(0, nl)) as RpcResponse);
      } catch (e) {
        reject(new Error(`${who} answered something that is not JSON: ${(e as Error).message}`));
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot reach ${who} at ${path}: ${e.message}`));
    });
    sock.on('end', () => {
      clearTimeout(timer);
      if (!buf.includes('\n')) reject(new Error(`${who} at ${path} closed the connection without answering`));
    });
  });
}

/** The device object of device-add, from the command line's flags (the same spellings as the single-device host's). */
function deviceFromFlags(args: string[]): Record<string, unknown> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      id: { type: 'string' },
      tenant: { type: 'string' },
      socket: { type: 'string' },
      plugin: { type: 'string' },
      entropy: { type: 'boolean' },
      storage: { type: 'string' },
      direct: { type: 'boolean' },
      'read-only': { type: 'boolean' },
      'shared-dir': { type: 'string' },
      tag: { type: 'string' },
      xattr: { type: 'boolean' },
      'posix-acl': { type: 'boolean' },
      'memory-limit': { type: 'string' },
      'call-deadline': { type: 'string' },
      'cpu-share': { type: 'string' },
      'open-files': { type: 'string' },
      'queue-threads': { type: 'string' },
      'poll-max-ns': { type: 'string' },
      'throttle-group': { type: 'string' },
      'plugin-option': { type: 'string', multiple: true },
      start: { type: 'string' },
      ...THROTTLE_FLAGS,
    },
  });
  if (positionals.length > 0) throw new CtlUsageError(`add takes options only, not "${positionals[0]}"`);
  // The daemon takes absolute paths only (its working directory is not the caller's): paths
  // given here are the caller's, relative to where ctl runs.
  const abs = (p: string | undefined) => (p === undefined || p === '' ? p : resolve(p));
  const grants: Record<string, unknown> = {};
  if (values.entropy) grants.entropy = true;
  if (values.storage !== undefined) grants.storage = values.storage.startsWith('memory:') ? values.storage : abs(values.storage);
  if (values.direct) grants.direct = true;
  if (values['read-only']) grants.readOnly = true;
  if (values['shared-dir'] !== undefined) grants.sharedDir = abs(values['shared-dir']);
  if (values.tag !== undefined) grants.tag = values.tag;
  if (values.xattr) grants.xattr = true;
  if (values['posix-acl']) grants.posixAcl = true;
  const limits: Record<string, unknown> = {};
  if (values['memory-limit'] !== undefined) limits.memory = values['memory-limit'];
  if (values['call-deadline'] !== undefined) {
    if (!/^\d+$/.test(values['call-deadline'])) throw new CtlUsageError(`--call-deadline: "${values['call-deadline']}" is not a whole number of ms`);
    limits.callDeadlineMs = Number(values['call-deadline']);
  }
  if (values['cpu-share'] !== undefined) limits.cpuShare = cpuShareFlag(values['cpu-share']);
  if (values['open-files'] !== undefined) {
    if (!/^\d+$/.test(values['open-files'])) throw new CtlUsageError(`--open-files: "${values['open-files']}" is not a whole number`);
    limits.openFiles = Number(values['open-files']);
  }
  Object.assign(limits, throttleFromFlags(values));
  let queueThreads: number | undefined;
  if (values['queue-threads'] !== undefined) {
    if (!/^\d+$/.test(values['queue-threads'])) throw new CtlUsageError(`--queue-threads: "${values['queue-threads']}" is not a whole number`);
    queueThreads = Number(values['queue-threads']);
  }
  // The single-device host's own check and words (the daemon checks the field again).
  const pollMaxNs = values['poll-max-ns'] === undefined ? undefined : parsePollMaxNs(values['poll-max-ns']);
  // Missing id, socket or plugin are the daemon's to name (it checks every field anyway).
  return {
    ...(queueThreads !== undefined ? { queueThreads } : {}),
    ...(pollMaxNs !== undefined ? { pollMaxNs } : {}),
    ...(values.id !== undefined ? { id: values.id } : {}),
    ...(values.tenant !== undefined ? { tenant: values.tenant } : {}),
    ...(values['throttle-group'] !== undefined ? { throttleGroup: values['throttle-group'] } : {}),
    ...(values.start !== undefined ? { start: values.start } : {}),
    ...(values.socket !== undefined ? { socket: abs(values.socket) } : {}),
    ...(values.plugin !== undefined ? { plugin: abs(values.plugin) } : {}),
    ...(Object.keys(grants).length ? { grants } : {}),
    ...(Object.keys(limits).length ? { limits } : {}),
    ...(values['plugin-option']?.length ? { options: optionsFromFlags(values['plugin-option']) } : {}),
  };
}

/** --plugin-option KEY=VALUE, repeated: the device's "options" (checked again by the daemon). */
function optionsFromFlags(flags: string[]): PluginOptions {
  try {
    return { ...parsePluginOptionFlags(flags) };
  } catch (e) {
    throw new CtlUsageError((e as Error).message);
  }
}

const THROTTLE_FLAGS = {
  iops: { type: 'string' },
  'iops-burst': { type: 'string' },
  bps: { type: 'string' },
  'bps-burst': { type: 'string' },
} as const;

/** The throttle flags as the daemon's fields (it checks ranges; sizes such as "10M" go as given). */
function throttleFromFlags(values: Partial<Record<keyof typeof THROTTLE_FLAGS, string>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const count = (flag: 'iops' | 'iops-burst', field: string) => {
    const v = values[flag];
    if (v === undefined) return;
    if (!/^\d+$/.test(v)) throw new CtlUsageError(`--${flag}: "${v}" is not a whole number`);
    out[field] = Number(v);
  };
  const bytes = (flag: 'bps' | 'bps-burst', field: string) => {
    const v = values[flag];
    if (v !== undefined) out[field] = /^\d+$/.test(v) ? Number(v) : v;
  };
  count('iops', 'iops');
  count('iops-burst', 'iopsBurst');
  bytes('bps', 'bytesPerSecond');
  bytes('bps-burst', 'bytesBurst');
  return out;
}

function throttleText(t: ThrottleLimits | null): string {
  if (t === null || (t.iops === 0 && t.bytesPerSecond === 0)) return 'no I/O throttle';
  return [t.iops ? `${t.iops} IOPS (burst ${t.iopsBurst})` : null, t.bytesPerSecond ? `${t.bytesPerSecond} bytes/s (burst ${t.bytesBurst})` : null].filter(Boolean).join(', ');
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]))).join('  ')).join('\n') + '\n';
}

function virtio(d: DeviceSummary): string {
  return d.name === null ? (d.state === 'not-started' ? '(starts on connect)' : d.state === 'preparing' ? '(making its disk\'s pages)' : '-') : `${d.name} (${d.virtioId}, ${d.queues}q)`;
}

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** The result for people. */
export function human(method: string, result: unknown): string {
  switch (method) {
    case 'device-list': {
      const { devices } = result as MethodResults['device-list'];
      if (devices.length === 0) return 'no devices\n';
      return table([['ID', 'TENANT', 'STATE', 'DEVICE', 'SOCKET'], ...devices.map((d) => [d.id, d.tenant ?? '-', d.state, virtio(d), d.listen])]);
    }
    case 'device-stats': {
      const { devices, process: p } = result as MethodResults['device-stats'];
      const netText = ({ networks, counters: c }: NonNullable<DeviceStats['net']>) =>
        `  network ${networks.join(', ')}: sent ${c.txFrames} frame(s) (${c.txBytes} bytes), read ${c.rxFrames} (${c.rxBytes} bytes), ${c.rxQueuedFrames} queued; ` +
        `dropped ${c.rxQueueDrops} inbox full, ${c.rxUnread} unread, ${c.rxNotRunning} not running, ${c.txDrops} switch behind, ${c.txNoPort} to a port that left, ${c.txRateDrops} over its rate\n`;
      const limitsText = (d: DeviceStats) =>
        `  limits: memory ${mib(d.limits.memoryLimitBytes)}, call deadline ${d.limits.callDeadlineMs} ms` +
        `${d.limits.openFiles === null ? '' : `, ${d.limits.openFiles} open files`}\n` +
        (d.pollMaxNs > 0 ? `  polling: spins on its rings for up to ${d.pollMaxNs} ns after a batch before it waits for a kick\n` : '');
      const ioText = (d: DeviceStats) => `  I/O: ${throttleText(d.limits.throttle)}${d.throttleGroup ? ` (throttle group ${d.throttleGroup})` : ''}`;
      // Nothing of a preparing device runs yet: what it waits for, and the limits it will have.
      const preparingText = (d: DeviceStats, pages: NonNullable<DeviceStats['preparing']>) =>
        `${d.id}: preparing, making its memory disk's pages (${mib(pages.madeBytes)} of ${mib(pages.diskBytes)} made, for ${d.uptimeSeconds} s); ` +
        `no socket at ${d.listen} until they exist\n` +
        limitsText(d) +
        `${ioText(d)}\n`;
      const lines = devices.map((d: DeviceStats) =>
        d.preparing !== null
          ? preparingText(d, d.preparing)
          : `${d.id}: ${d.state}, ${virtio(d)} on ${d.listen}, up ${d.uptimeSeconds} s\n` +
          `  front-end ${d.frontEnd ? 'connected' : 'none'}, ${d.waitingFrontEnds} waiting; ${d.connectionsAccepted} connection(s) accepted, ${d.connectionsRefusedBusy} refused busy\n` +
          `  worker started ${d.workerStarts} time(s)${d.lastFailure ? `; last failure: ${d.lastFailure}` : ''}${d.startBackoff ? `; ${d.startBackoff.failures} failed start(s) in a row, next try ${d.startBackoff.retryInSeconds > 0 ? `in ${d.startBackoff.retryInSeconds} s` : 'on the next connection'}` : ''}\n` +
          `  served ${d.work.requests} request(s) in ${d.work.batches} batch(es): ${d.work.handleCalls} handle() call(s), ${d.work.otherCalls} other call(s) into its code${d.work.memoryDiskCopiedBytes > 0 ? `; ${d.work.memoryDiskCopiedBytes} bytes copied to and from its memory disk` : ''}${d.work.completionsOutOfOrder > 0 ? `; ${d.work.completionsOutOfOrder} completion(s) out of order` : ''}\n` +
          `  in flight now: ${d.work.requestsInFlight} request(s) popped and not completed, ${d.work.ioInFlight} with storage I/O running; longest call ${d.work.longestCallCpuSeconds > 0 ? `${(d.work.longestCallCpuSeconds * 1000).toFixed(1)} ms of CPU` : 'under 2 ms'}\n` +
          limitsText(d) +
          `${ioText(d)}; ${d.throttled.passedOps} request(s), ${d.throttled.passedBytes} bytes let through, ${d.throttled.waits} wait(s)\n` +
          (d.cpu
            ? `  CPU: it claimed ${d.cpu.demand} (share ${d.cpu.limit}: long calls${d.pollMaxNs > 0 || d.cpu.pollSpin > 0 ? `, and ${d.cpu.pollSpin} spinning on its rings` : ''}), its threads ${d.cpu.running} CPU over the last second; ${d.cpu.demoted ? `demoted to the lowest priority${d.cpu.restoreRefused ? ` (${d.cpu.restoreRefused})` : ` until its calls of 2 ms or more (run or waiting for a CPU: ${d.cpu.slowCalls}) and its spin take under ${d.cpu.limit / 2}`}` : 'normal priority'}, demoted ${d.cpu.demotions} time(s)\n`
            : '') +
          (d.net ? netText(d.net) : ''),
      );
      return (
        lines.join('') +
        `process ${p.pid}: resident ${mib(p.rssBytes)}, ${p.openFds} open fds, share fd budget ${p.fdBudget.used}/${p.fdBudget.budget} (RLIMIT_NOFILE ${p.fdBudget.limit})\n`
      );
    }
    case 'device-add': {
      const d = result as MethodResults['device-add'];
      return d.state === 'not-started' ? `added ${d.id} on ${d.listen} (its worker starts when a front-end connects)\n` : `added ${d.id}: ${virtio(d)} on ${d.listen}\n`;
    }
    case 'device-del':
      return `removed ${(result as MethodResults['device-del']).id}\n`;
    case 'set-limits': {
      const r = result as MethodResults['set-limits'];
      const t = r.limits.throttle;
      return `${r.id}: call deadline ${r.limits.callDeadlineMs} ms${t && (t.iops || t.bytesPerSecond) ? `, ${throttleText(t)}` : ''}\n`;
    }
    case 'plugin-upgrade': {
      const r = result as MethodResults['plugin-upgrade'];
      return (
        `${r.id}: ${r.name} ${r.fromVersion ?? '(none running)'} -> ${r.toVersion} (${r.plugin})` +
        (r.frontEnd ? `; rings ${r.rings.join(', ') || 'none running'} stopped ${r.stoppedMs.toFixed(2)} ms, ${r.stateBytes} state bytes moved\n` : '; no front-end connected\n')
      );
    }
    case 'log-level': {
      const r = result as MethodResults['log-level'];
      return `log level ${r.level} (was ${r.previous})\n`;
    }
    default:
      return JSON.stringify(result, null, 2) + '\n';
  }
}

/** --cpu-share: a number of CPUs (0.25); the daemon checks its range. */
function cpuShareFlag(v: string): number {
  if (!/^\d+(\.\d+)?$/.test(v)) throw new CtlUsageError(`--cpu-share: "${v}" is not a number of CPUs (0.5: half of one)`);
  return Number(v);
}

function parseCommand(rest: string[]): { method: string; params: Record<string, unknown> } {
  const [cmd, ...args] = rest;
  const none = () => {
    if (args.length > 0) throw new CtlUsageError(`${cmd} takes no arguments`);
  };
  switch (cmd) {
    case 'list':
      none();
      return { method: 'device-list', params: {} };
    case 'stats':
      if (args.length > 1) throw new CtlUsageError('stats takes at most one device id');
      return { method: 'device-stats', params: args.length ? { id: args[0] } : {} };
    case 'add':
      return { method: 'device-add', params: deviceFromFlags(args) };
    case 'del':
      if (args.length !== 1) throw new CtlUsageError('del takes one device id');
      return { method: 'device-del', params: { id: args[0] } };
    case 'set-limits': {
      const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: { 'call-deadline': { type: 'string' }, 'cpu-share': { type: 'string' }, ...THROTTLE_FLAGS } });
      if (positionals.length !== 1) throw new CtlUsageError('set-limits takes one device id');
      const params: Record<string, unknown> = { id: positionals[0], ...throttleFromFlags(values) };
      const ms = values['call-deadline'];
      if (ms !== undefined) {
        if (!/^\d+$/.test(ms)) throw new CtlUsageError(`--call-deadline: "${ms}" is not a whole number of ms`);
        params.callDeadlineMs = Number(ms);
      }
      if (values['cpu-share'] !== undefined) params.cpuShare = cpuShareFlag(values['cpu-share']);
      if (Object.keys(params).length === 1) throw new CtlUsageError('set-limits: give --call-deadline MS, --cpu-share CPUS or a throttle flag (--iops, --iops-burst, --bps, --bps-burst)');
      return { method: 'set-limits', params };
    }
    case 'upgrade': {
      const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: { plugin: { type: 'string' } } });
      if (positionals.length !== 1) throw new CtlUsageError('upgrade takes one device id');
      if (values.plugin === undefined) throw new CtlUsageError('upgrade: give --plugin FILE (the new build)');
      return { method: 'plugin-upgrade', params: { id: positionals[0], plugin: resolve(values.plugin) } };
    }
    case 'log-level':
      if (args.length !== 1) throw new CtlUsageError('log-level takes one level (error, warn, info, debug)');
      return { method: 'log-level', params: { level: args[0] } };
    case undefined:
      throw new CtlUsageError('no command (see: vhost-wasm ctl --help)');
    default:
      throw new CtlUsageError(`unknown command "${cmd}" (list, stats, add, del, set-limits, upgrade, log-level)`);
  }
}

export async function runCtl(argv: string[]): Promise<number> {
  // Options before the command are ctl's own; everything after it belongs to the command.
  const first = argv.findIndex((a, i) => !a.startsWith('-') && argv[i - 1] !== '--control' && argv[i - 1] !== '--timeout');
  const own = first < 0 ? argv : argv.slice(0, first);
  const rest = first < 0 ? [] : argv.slice(first);
  let path: string;
  let json: boolean;
  let call: { method: string; params: Record<string, unknown> };
  let timeoutMs: number;
  try {
    const { values } = parseArgs({
      args: own,
      strict: true,
      allowPositionals: false,
      options: { control: { type: 'string' }, json: { type: 'boolean' }, timeout: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    });
    if (values.help) {
      process.stdout.write(CTL_HELP);
      return 0;
    }
    json = values.json ?? false;
    const p = values.control ?? process.env.VHOST_WASM_CONTROL;
    if (!p) throw new CtlUsageError('give --control PATH (the daemon\'s management socket) or set VHOST_WASM_CONTROL');
    path = p;
    call = parseCommand(rest);
    timeoutMs = values.timeout === undefined ? (UNBOUNDED_METHODS.has(call.method) ? 0 : DEFAULT_TIMEOUT_MS) : timeoutFlag(values.timeout);
  } catch (e) {
    process.stderr.write(`vhost-wasm ctl: ${(e as Error).message.replace(/\. To specify.*$/, '')}\n`);
    return 2;
  }
  let response: RpcResponse;
  try {
    response = await request(path, call.method, call.params, timeoutMs);
  } catch (e) {
    // The daemon goes on with what it was asked: say where to see how it ended.
    const after = timeoutMs > 0 && UNBOUNDED_METHODS.has(call.method) ? '; the daemon may still be doing it: see `vhost-wasm ctl list`' : '';
    process.stderr.write(`vhost-wasm ctl: ${(e as Error).message}${after}\n`);
    return 3;
  }
  if ('error' in response) {
    if (json) process.stdout.write(JSON.stringify({ error: response.error }, null, 2) + '\n');
    const code = response.error.data?.code ? ` [${response.error.data.code}]` : '';
    process.stderr.write(`vhost-wasm ctl: ${call.method} refused: ${response.error.message}${code}\n`);
    return 1;
  }
  if (!('result' in response)) {
    process.stderr.write('vhost-wasm ctl: the daemon answered something that is not JSON-RPC\n');
    return 3;
  }
  process.stdout.write(json ? JSON.stringify(response.result, null, 2) + '\n' : human(call.method, response.result));
  return 0;
}
