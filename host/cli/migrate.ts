// `vhost-wasm migrate`: move a device's state between two running vhost-wasm hosts by hand.
//
// What this means: a vhost-user back-end only ever has its state while a front-end drives it
// (it resets the device when the front-end disconnects), and guest memory belongs to the
// front-end. So this tool IS the front-end: it connects to the source host, gives it guest RAM of
// its own (memfds), negotiates and starts the queues, optionally drives a few requests, then
// migrates exactly as QEMU 8.2+ does during a live migration (stop the rings, SAVE through the
// state channel, LOAD into the destination, CHECK both, restart the rings on the destination at
// the source's indexes) and drives a few more requests on the destination. It cannot take over a
// device that QEMU is driving; for a VM, QEMU performs this sequence itself.
//
// Exit status: 0 migrated; 1 failed and the source resumed; 3 failed and the source did not
// resume; 2 usage error.

import { parseArgs } from 'node:util';
import { FRONTEND_PROTOCOL_FEATURES, VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../frontend/driver.ts';
import { featureBit } from '../protocol/constants.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE } from '../protocol/rfc-state-shm.ts';
import { DISK_HANDOVER_PROTOCOL_FEATURE, PRECOPY_PROTOCOL_FEATURE } from '../protocol/precopy.ts';
import { migrate, MigrationError, type MigrateReport, type StateChannelMode } from '../frontend/migrate.ts';
import { parsePipeSize, parseSize, UsageError } from './args.ts';

export const MIGRATE_HELP = `Usage: vhost-wasm migrate --from SOURCE.sock --to DEST.sock [options]

Moves a device's state from the vhost-wasm host listening at SOURCE.sock to the one at
DEST.sock (same plugin on both). This tool is the vhost-user front-end for both: it brings up
the device on the source with guest memory of its own, migrates it the way QEMU 8.2+ does
(stop rings, SET_DEVICE_STATE_FD SAVE/LOAD, CHECK_DEVICE_STATE, restart rings at the same
indexes on the destination), and reports. A device a QEMU is driving cannot be taken over.

Options:
  --from PATH            the source host's socket
  --to PATH              the destination host's socket
  --channel pipe|direct-pipe|memfd|rfc-shm|handover
                         state channel (default pipe: this tool reads every byte from the
                         source's pipe and writes it to the destination's, as QEMU does;
                         direct-pipe: one pipe, its write end to the source and its read end
                         to the destination, both hosts on this machine, this tool carries no
                         byte; memfd: the destination reads the same memfd the source wrote,
                         no copy through this tool; rfc-shm: EXPERIMENTAL, the 2023 RFC's
                         shared-memory chunks, both hosts need --experimental-rfc-state-shm;
                         handover: both hosts on this machine with a memory disk of the same
                         size: the source's disk memfd goes to the destination by reference
                         (its bytes are not copied), the rest as direct-pipe; no pre-copy)
  --state-pipe-size SIZE with --channel pipe or direct-pipe and pre-copy rounds: grow the
                         state pipes this tool makes to SIZE (default 1M; 0: this tool leaves
                         them at the kernel's 64 KiB, but each host still grows the end it is
                         given to its own --state-pipe-size)
  --precopy-rounds N     at most N pre-copy rounds of a memory disk while the rings still run
                         (default 5 when the source offers it: a vhost-wasm host with a memory
                         disk; 0: none). Rounds end early once one takes <= 20 ms or two in a
                         row stop shrinking (the source throttles a writing guest after the
                         first); then one round with the rings stopped and the state without
                         the disk
  --memory SIZE          guest RAM this front-end gives the device (default 64M)
  --queue-size N         ring size (default 256)
  --queues N             queues to start (default 1)
  --before N             requests sent to queue 0 on the source before migrating (default 0)
  --after N              requests sent to queue 0 on the destination afterwards (default 0)
  --request-size BYTES   readable bytes per request; the writable space is this + 64 (default 64)
  --json                 print the report as one JSON object
  -h, --help             this text
`;

/** A usage error of the migrate subcommand (ERR_USAGE, like the back-end's). */
class MigrateUsageError extends UsageError {
  override name = 'MigrateUsageError';
}

interface MigrateCliOptions {
  from: string;
  to: string;
  channel: StateChannelMode;
  memoryBytes: number;
  queueSize: number;
  queues: number;
  before: number;
  after: number;
  requestSize: number;
  json: boolean;
  pipeBytes: number;
  /** undefined: 5 when the source offers pre-copy, else 0. */
  precopyRounds: number | undefined;
}

function int(text: string | undefined, what: string, dflt: number, min: number, max: number): number {
  if (text === undefined) return dflt;
  if (!/^\d+$/.test(text)) throw new MigrateUsageError(`${what}: "${text}" is not a whole number`);
  const n = Number(text);
  if (n < min || n > max) throw new MigrateUsageError(`${what}: ${n} is outside [${min}, ${max}]`);
  return n;
}

export function parseMigrateArgs(argv: string[]): MigrateCliOptions | 'help' {
  let v;
  try {
    v = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        from: { type: 'string' },
        to: { type: 'string' },
        channel: { type: 'string' },
        memory: { type: 'string' },
        'queue-size': { type: 'string' },
        queues: { type: 'string' },
        before: { type: 'string' },
        after: { type: 'string' },
        'request-size': { type: 'string' },
        json: { type: 'boolean' },
        'state-pipe-size': { type: 'string' },
        'precopy-rounds': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (e) {
    throw new MigrateUsageError(`${(e as Error).message} (see migrate --help)`);
  }
  if (v.help) return 'help';
  if (!v.from || !v.to) throw new MigrateUsageError('give both --from SOURCE.sock and --to DEST.sock');
  const channel = v.channel ?? 'pipe';
  if (channel !== 'pipe' && channel !== 'direct-pipe' && channel !== 'memfd' && channel !== 'rfc-shm' && channel !== 'handover') {
    throw new MigrateUsageError(`--channel: "${channel}" is not pipe, direct-pipe, memfd, rfc-shm or handover`);
  }
  let memoryBytes = 64 << 20;
  if (v.memory !== undefined) {
    try {
      memoryBytes = parseSize(v.memory, '--memory');
    } catch (e) {
      throw new MigrateUsageError((e as Error).message);
    }
  }
  if (memoryBytes % 4096 !== 0) throw new MigrateUsageError('--memory must be a multiple of 4096');
  const queueSize = int(v['queue-size'], '--queue-size', 256, 1, 32768);
  if ((queueSize & (queueSize - 1)) !== 0) throw new MigrateUsageError('--queue-size must be a power of two');
  return {
    from: v.from,
    to: v.to,
    channel,
    memoryBytes,
    queueSize,
    queues: int(v.queues, '--queues', 1, 1, 64),
    before: int(v.before, '--before', 0, 0, 1_000_000),
    after: int(v.after, '--after', 0, 0, 1_000_000),
    requestSize: int(v['request-size'], '--request-size', 64, 1, 1 << 20),
    json: v.json ?? false,
    pipeBytes: parsePipeSize(v['state-pipe-size'], '--state-pipe-size', MigrateUsageError),
    precopyRounds: v['precopy-rounds'] === undefined ? undefined : int(v['precopy-rounds'], '--precopy-rounds', 0, 0, 100),
  };
}

async function drive(fe: VhostUserFrontend, n: number, size: number, tag: string): Promise<number[]> {
  const lens: number[] = [];
  for (let i = 0; i < n; i++) {
    const b = Buffer.alloc(size, 0x2e);
    b.write(`${tag} ${i}`.slice(0, size));
    const r = await fe.queues[0].submit([b], size + 64);
    lens.push(r.len);
  }
  return lens;
}

export async function runMigrateCli(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  let o: MigrateCliOptions | 'help';
  try {
    o = parseMigrateArgs(argv);
  } catch (e) {
    if (e instanceof MigrateUsageError) {
      process.stderr.write(`vhost-wasm migrate: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (o === 'help') {
    out(MIGRATE_HELP);
    return 0;
  }
  let fe: VhostUserFrontend;
  try {
    fe = await VhostUserFrontend.connect(o.from, {
      memoryBytes: o.memoryBytes,
      queues: Array.from({ length: o.queues }, () => o.queueSize),
      features: 1n << BigInt(VIRTIO_F_VERSION_1),
      // The experimental extension is negotiated only when asked for.
      protocolFeatures:
        FRONTEND_PROTOCOL_FEATURES |
        (o.channel === 'rfc-shm' ? featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE) : 0n) |
        (o.precopyRounds !== 0 && o.channel !== 'rfc-shm' && o.channel !== 'handover' ? featureBit(PRECOPY_PROTOCOL_FEATURE) : 0n) |
        (o.channel === 'handover' ? featureBit(DISK_HANDOVER_PROTOCOL_FEATURE) : 0n),
    });
  } catch (e) {
    process.stderr.write(`vhost-wasm migrate: cannot bring up the device on ${o.from}: ${(e as Error).message}\n`);
    return 3;
  }
  try {
    const before = await drive(fe, o.before, o.requestSize, 'before');
    let report: MigrateReport;
    try {
      report = await migrate(fe, o.to, {
        channel: o.channel,
        pipeBytes: o.pipeBytes,
        precopyRounds: o.precopyRounds ?? (o.channel !== 'handover' && fe.conn.hasProtocol(PRECOPY_PROTOCOL_FEATURE) ? 5 : 0),
        onStep: (s) => {
          if (!o.json) process.stderr.write(`migrate: ${s}\n`);
        },
      });
    } catch (e) {
      const resumed = e instanceof MigrationError && e.sourceResumed;
      process.stderr.write(`vhost-wasm migrate: ${(e as Error).message}\n`);
      if (resumed) {
        // Show that the source still serves.
        const again = await drive(fe, Math.min(1, o.before), o.requestSize, 'resumed').catch(() => null);
        if (again === null) return 3;
      }
      return resumed ? 1 : 3;
    }
    const after = await drive(fe, o.after, o.requestSize, 'after');
    const summary = {
      from: o.from,
      to: o.to,
      channel: report.channel,
      // null over direct-pipe: the bytes never passed through this tool.
      stateBytes: report.channel === 'direct-pipe' || report.channel === 'handover' ? null : report.bytes,
      ringBases: report.bases,
      sourceReturnedFd: report.sourceReturnedFd,
      transferMs: Number(report.transferMs.toFixed(2)),
      downtimeMs: Number(report.downtimeMs.toFixed(2)),
      precopyMs: report.precopyMs.map((m) => Number(m.toFixed(2))),
      ...(report.handoverMs !== undefined ? { handoverMs: Number(report.handoverMs.toFixed(2)) } : {}),
      requestsBefore: before.length,
      requestsAfter: after.length,
      nextAvail: await Promise.all(fe.queues.map((_, i) => fe.stopQueue(i))),
    };
    if (o.json) out(JSON.stringify(summary) + '\n');
    else {
      out(
        // Over direct-pipe the bytes never passed through here: the hosts' logs count them.
        `migrated ${summary.stateBytes === null ? 'the' : `${summary.stateBytes} bytes of`} device state from ${o.from} to ${o.to} over a ${summary.channel} ` +
          `in ${summary.transferMs} ms (rings stopped for ${summary.downtimeMs} ms); ring bases ${summary.ringBases.join(', ')}; ` +
          `${summary.requestsBefore} request(s) before, ${summary.requestsAfter} after\n`,
      );
    }
    return 0;
  } finally {
    await fe.close();
  }
}
