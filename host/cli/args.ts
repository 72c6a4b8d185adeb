// Command-line parsing for the host binary. The spellings follow the vhost-user "back-end
// program conventions" (--socket-path, --fd, --print-capabilities) plus our own; scripts and
// libvirt depend on them, so they are a contract: change none without a deprecation path.

import { defaultBurst, MAX_BYTES_PER_SECOND, MAX_IOPS, type ThrottleLimits } from '../limits/token-bucket.ts';
import { parseArgs } from 'node:util';
import { isLogFormat, isLogLevel, LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../log/logger.ts';
import type { StorageSpec } from '../storage/backing.ts';
import type { FilesystemSpec } from '../fs/option.ts';
import { INODE_FILE_HANDLES, type InodeFileHandles } from '../fs/inode-handles.ts';
import { CACHE_POLICIES, type CachePolicy } from '../fs/cache-policy.ts';
import { IdMap, parseIdMapRule, type IdMapRule } from '../fs/id-map.ts';
import { parseXattrMap, type XattrRule } from '../fs/xattr-map.ts';
import { STATE_PIPE_SIZE } from '../migration/channel.ts';
import { VhostWasmError } from '../errors.ts';
import { parsePluginOptionFlags, type PluginOptions } from '../plugin/plugin-options.ts';
import { checkNetworkName, MAX_GRANTS, NetworkConfigError } from '../net/switch.ts';
import { DEFAULT_POLL_MAX_NS, MAX_POLL_MAX_NS, pollMaxNsError } from '../device/poll-window.ts';

export interface CliOptions {
  help: boolean;
  version: boolean;
  printCapabilities: boolean;
  socketPath: string | null;
  fd: number | null;
  plugin: string | null;
  /** A TypeScript/JS device module (development and tests), instead of --plugin. */
  deviceModule: string | null;
  logLevel: LogLevel;
  logFormat: LogFormat;
  memoryLimitBytes: number;
  callDeadlineMs: number;
  /** SAVE answers SET_DEVICE_STATE_FD with our own memfd holding the state (bit 8 clear). */
  stateReturnMemfd: boolean;
  /** Serve the 2023 RFC's shared-memory state protocol (experimental, off by default). */
  experimentalRfcStateShm: boolean;
  /** --state-pipe-size: F_SETPIPE_SZ for state pipes (0: leave them alone). */
  statePipeBytes: number;
  entropy: boolean;
  /** --storage (with --read-only folded in), or null. */
  storage: StorageSpec | null;
  /** --shared-dir (with --read-only and --tag folded in), or null. */
  filesystem: FilesystemSpec | null;
  /** --control: the control socket's path (plugin upgrade), 'none' for no control socket, or null: beside --socket-path. */
  control: string | null;
  /** --take-over: ask the host serving --socket-path for its device (host upgrade). */
  takeOver: boolean;
  /** --take-over-mode: auto (the connected session moves live when it can, else the sockets only), live (only that), socket (the sockets only). */
  takeOverMode: 'auto' | 'live' | 'socket';
  /** --plugin-option KEY=VALUE, repeated: what the plugin's `options.get` answers. */
  pluginOptions: PluginOptions;
  /** --queue-threads: worker threads a device with independent queues runs in (default 1). */
  queueThreads: number;
  /** --poll-max-ns: adaptive polling of the rings before the worker waits for a kick (0: off). */
  pollMaxNs: number;
  /** --iops, --bps and their bursts, or null when none was given. */
  throttle: ThrottleLimits | null;
  /** --network NAME, repeated: the networks the device joins, in grant order. */
  networks: string[];
  /** --network-rate: frames (and bytes) per second the device may send, or null: no limit. */
  networkRate: ThrottleLimits | null;
}

/** Most --queue-threads: a virtio device has at most this many queues worth a thread each. */
export const MAX_QUEUE_THREADS = 64;

export class UsageError extends VhostWasmError {
  static override readonly code = 'ERR_USAGE';
  override name = 'UsageError';
}

export const HELP = `Usage: vhost-wasm --socket-path PATH --plugin FILE.wasm [options]
       vhost-wasm --fd FD --plugin FILE.wasm [options]
       vhost-wasm --print-capabilities --plugin FILE.wasm
       vhost-wasm migrate --from SRC.sock --to DST.sock [options]   (see: vhost-wasm migrate --help)
       vhost-wasm serve --config FILE [--control PATH]   many devices (see: vhost-wasm serve --help)
       vhost-wasm ctl --control PATH COMMAND           manage a serve daemon (see: vhost-wasm ctl --help)
       vhost-wasm upgrade --socket PATH --plugin FILE.wasm   live plugin upgrade of a running host

A vhost-user back-end whose device logic is a sandboxed WebAssembly component.
QEMU (or another vhost-user front-end) connects to the socket; after it disconnects the
device is reset and the next connection is accepted.

Where to listen (exactly one):
  --socket-path PATH      create a Unix socket at PATH and listen there (a stale socket left
                          by a dead back-end is replaced; a live one is an error)
  --fd FD                 serve an already-listening Unix socket inherited as fd FD

Upgrades (docs/upgrade.md):
  --control PATH|none     the control socket (mode 0600, this uid and root only) that
                          \`vhost-wasm upgrade --socket PATH\` talks to; default: PATH.control
                          beside --socket-path (with --fd: none unless given)
  --take-over             host upgrade: take the device over from the host already serving
                          --socket-path (asked over its control socket): this process loads
                          its device, is handed the listening socket (and a memory disk)
                          and the connected front-end's session (memory table, rings, fds,
                          device state), resumes its rings where the old host stopped them,
                          and the old host exits: the front-end notices a short pause, no
                          reconnect. If this process fails, the old host serves on. Give the
                          same device options as the old host's (docs/upgrade.md)
  --take-over-mode auto|live|socket
                          auto (default): the session moves live when it can; when it cannot
                          (e.g. its state cannot be saved) only the sockets move and the
                          front-end reconnects (QEMU: reconnect=1 / reconnect-ms=) and its
                          inflight area resubmits what was in flight. live: refuse instead.
                          socket: only the sockets move, the front-end reconnects

The device:
  --plugin FILE.wasm      the device plugin (a component implementing vhost:device@0.2.x)
  --device-module FILE    a TypeScript/JavaScript device module instead (development)
  --plugin-option KEY=VALUE
                          a setting the plugin reads (its options.get), repeatable; each
                          plugin documents its keys (net: mac, policy; fs: request-queues=N,
                          1-64, as many as QEMU's num-request-queues=N: docs/virtio-fs.md).
                          Keys are 1-64 of a-z 0-9 . _ -, values at most 4096 bytes, at
                          most 64 options

Capabilities granted to the plugin (it sees nothing else):
  --entropy               random bytes from the host (virtio-rng needs this)
  --storage PATH          a raw disk image or a block device (e.g. a loop device) the
                          block plugin reads and writes; the host opens it (the plugin
                          never sees the path) and checks every range. Flush is
                          fdatasync; discard punches a hole, write-zeroes is fallocate
                          ZERO_RANGE. A missing or unopenable file stops start-up. A
                          plugin that does not import storage is refused when given one.
  --direct                open the --storage file or device O_DIRECT (cache=none):
                          requests not aligned to its logical block go through an
                          aligned bounce buffer (read-modify-write for writes)
  --storage memory:SIZE[,prealloc=on]
                          a zeroed disk of SIZE bytes (e.g. memory:256M) held in the
                          host's memory, gone when the host exits. Its pages are made
                          as they are first written, unless prealloc=on (QEMU's
                          spelling): then all SIZE bytes are committed when the host
                          starts, start-up takes longer (~1.3 s per GiB measured on a
                          2-vCPU VM, docs/migration.md; the socket is made once the
                          pages exist; in the daemon, other devices are served
                          meanwhile), a host without that much
                          memory free refuses to start, and no later write or
                          migration LOAD waits for a page to be made; discards zero
                          the bytes and keep the pages
  --read-only             grant --storage (or --shared-dir) read-only: a disk image is
                          opened O_RDONLY and the plugin's writes, discards and
                          write-zeroes are refused
  --shared-dir DIR        a directory tree for virtio-fs (the fs plugin): the plugin gets
                          opaque handles, never paths; every lookup stays beneath DIR
                          (openat2 RESOLVE_BENEATH, symlinks never followed, no submounts).
                          With --read-only every change is refused with EROFS.
  --readonly              virtiofsd's spelling of --read-only for --shared-dir (libvirt 11
                          passes it for <readonly/>); not for --storage
  --tag NAME              the virtio-fs mount tag (1-36 bytes, default vhost-wasm)
  --xattr                 let the guest get, set, list and remove extended attributes of the
                          --shared-dir (off: the guest is told they are not supported). Names
                          in trusted. and security. are refused (EPERM) and hidden unless
                          --xattrmap says otherwise
  --posix-acl             POSIX ACLs for the guest (virtiofsd's option; implies --xattr): its
                          kernel enforces the share's ACLs (system.posix_acl_access/_default
                          pass through) and default ACLs decide new files' modes instead of
                          the umask. Not with --translate-uid/--translate-gid
  --xattrmap MAP          translate xattr names between guest and host, virtiofsd's syntax:
                          rules :type:scope:key:prepend: (type prefix|ok|bad|unsupported,
                          scope client|server|all), e.g. :prefix:all:trusted.:user.virtiofs.:
                          followed by :ok:all:::, and virtiofsd's shorthand :map:key:prepend:
                          as the last rule, e.g. :map::user.virtiofs.: (see docs/virtio-fs.md)
  --cache never|metadata|auto|always
                          how much the guest caches (virtiofsd's option): never (direct I/O,
                          no attribute cache), metadata (attributes for a day, direct I/O),
                          auto (1 s, the default), always (a day, data kept across opens)
  --translate-uid RULE, --translate-gid RULE (repeatable)
                          translate ids between guest and host, virtiofsd's syntax:
                          guest:G:H:N, host:H:G:N, squash-guest:G:H:N, squash-host:H:G:N,
                          forbid-guest:G:N, map:G:H:N
  --inode-file-handles never|prefer|mandatory
                          how the --shared-dir holds the inodes the guest has looked up:
                          by the kernel's file handle, opened only while a request needs it
                          (prefer, the default, falls back to fds with a warning where the
                          filesystem has no handles or the host lacks CAP_DAC_READ_SEARCH;
                          mandatory refuses to start there), or an O_PATH fd each (never:
                          then the process's fd limit bounds how many files a guest can
                          hold, and past it lookups answer ENFILE). As virtiofsd's option
  --migration-on-error abort|guest-error
                          when a migration destination cannot find a file the guest holds
                          open or looked up: fail the migration (abort, the default; the
                          source keeps running) or load anyway and answer the guest's
                          requests on what was lost with EIO (guest-error)

Networks (virtio-net; the plugin sees frames, never sockets):
  --network NAME          join the host's network NAME (an L2 segment of the switch inside
                          this process, MTU 1500; repeat for more, numbered 0, 1, ... in the
                          order given). Devices of one process granted the same NAME (serve
                          --config) reach each other; forwarding and policy are the plugin's
  --network tap:IFNAME    a network whose other port is the TAP interface IFNAME (created if
                          missing, or an existing persistent one; needs CAP_NET_ADMIN): frames
                          the device sends go out of IFNAME, frames IFNAME receives come in
  --network-rate FRAMES[:BYTES]
                          the most the device may send on its networks per second: FRAMES
                          frames (and BYTES bytes, a size like 10M), bursts of a tenth of a
                          second; frames past it are dropped at the switch and counted
                          (ctl stats, metrics reason "rate"). Default: no limit

Threads:
  --queue-threads N       run the device in N worker threads, each with its own plugin
                          instance, ring i served by thread i mod N (default 1, at most
                          ${MAX_QUEUE_THREADS}). Only for a device whose queues are independent
                          (device-info queues-independent: blk yes, fs no); for any
                          other device the flag is ignored, with a log line saying so. More
                          threads than the device has queues are not started.
  --poll-max-ns N         after serving a batch, spin on the device's rings for up to N
                          nanoseconds (0 to ${MAX_POLL_MAX_NS}) before waiting for the next
                          kick, the window adapting to the gaps between requests as
                          QEMU's iothreads do (grow from 4 us when a wait was shorter
                          than N, drop to 0 when longer). Saves the wake-up and its cold
                          caches when a guest sends its next request soon; the spin is the
                          device's CPU time. Default ${DEFAULT_POLL_MAX_NS} (off): on a machine whose cores
                          the guest's vCPUs and the front-end share, the spin takes the
                          CPU they need (docs/BENCHMARKS.md); with cores to spare, start
                          from 32768 (QEMU's default)

Limits:
  --memory-limit SIZE     cap on all of the plugin's linear memory together, every core
                          instance's, for each queue thread (default 64M; 256M with
                          --storage, since a block device holds a whole batch of request
                          data)
  --call-deadline MS      most CPU time one call into the plugin may use before the device
                          is stopped and marked NEEDS_RESET (time waiting for a CPU does not
                          count; a call asleep in a system call gets it in wall-clock time)
                          (default 100; 1000 with --storage, since a batch of large block
                          requests takes a while to copy);
                          the plugin's code at load (identity, info, also when a reset
                          rebuilds it) gets this deadline too, but at least 5 s
  --iops N                I/O throttle: requests per second the device is handed, over all
                          its queues (token bucket; default: no limit). A throttled ring is
                          not popped until the budget allows: requests wait in the guest's
                          ring (back-pressure), none fails
  --iops-burst N          requests that may go at once after an idle spell (default a tenth
                          of --iops)
  --bps SIZE              I/O throttle: bytes per second of request data (readable and
                          writable descriptors together), e.g. 10M
  --bps-burst SIZE        bytes that may go at once after an idle spell (default a tenth of
                          --bps)

Migration (device state through SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE):
  --state-return-memfd    on SAVE, answer with our own memfd holding the whole state instead of
                          writing into the front-end's pipe (measured: no faster; see
                          docs/BENCHMARKS.md)
  --experimental-rfc-state-shm
                          also offer the 2023 RFC's shared-memory chunk protocol (our own
                          protocol feature bit 63, requests 1000-1002; docs/migration.md)
  --state-pipe-size SIZE  grow each state pipe the front-end hands us to SIZE (default 1M, the
                          unprivileged maximum; 0 leaves pipes as they come)

Other:
  --print-capabilities    print the back-end's type and features as JSON, then exit
  --log-level LEVEL       ${LOG_LEVELS.join(', ')} (default info); logs go to stderr
  --log-format FORMAT     text (default) or json (one object per line: time, level, scope, msg)
  --version               print the version and exit
  -h, --help              this text
`;

/** "64M", "256MiB", "1G", "4096" -> bytes. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${what}: "${text}" is not a size (examples: 4096, 64M, 1G)`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`${what}: "${text}" is out of range`);
  return n;
}

/** A state pipe size: a size, or 0 for "leave the pipe alone"; default STATE_PIPE_SIZE. */
export function parsePipeSize(text: string | undefined, what: string, Err: new (m: string) => Error): number {
  if (text === undefined) return STATE_PIPE_SIZE;
  if (text.trim() === '0') return 0;
  try {
    return parseSize(text, what);
  } catch (e) {
    throw new Err((e as Error).message);
  }
}

/** --network-rate FRAMES[:BYTES]: per second, bursts of a tenth of a second (a policer's). */
export function parseNetworkRate(text: string): ThrottleLimits {
  const [f, b, more] = text.split(':');
  if (more !== undefined || f === '') throw new UsageError(`--network-rate: "${text}" is not FRAMES or FRAMES:BYTES (frames and bytes per second)`);
  const frames = parseIntStrict(f, '--network-rate', 1);
  const bytes = b === undefined ? 0 : parseSize(b, '--network-rate');
  return { iops: frames, iopsBurst: defaultBurst(frames), bytesPerSecond: bytes, bytesBurst: defaultBurst(bytes) };
}

function parseIntStrict(text: string, what: string, min: number): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`${what}: "${text}" is not a whole number`);
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`${what}: ${text} must be at least ${min}`);
  return n;
}

/** --iops, --bps and their bursts (the daemon's limits.iops etc. check the same rules: config.ts parseThrottle). */
function parseThrottleFlags(v: { iops?: string; 'iops-burst'?: string; bps?: string; 'bps-burst'?: string }): ThrottleLimits | null {
  if (v.iops === undefined && v['iops-burst'] === undefined && v.bps === undefined && v['bps-burst'] === undefined) return null;
  const rate = (flag: 'iops' | 'bps') => {
    const text = v[flag];
    if (text === undefined || text.trim() === '0') return 0;
    return flag === 'iops' ? parseIntStrict(text, '--iops', 1) : parseSize(text, '--bps');
  };
  const burst = (flag: 'iops-burst' | 'bps-burst', r: number, rateFlag: string) => {
    const text = v[flag];
    if (text === undefined) return defaultBurst(r);
    if (r === 0) throw new UsageError(`--${flag} is a burst of ${rateFlag}: give ${rateFlag} too`);
    const n = flag === 'iops-burst' ? parseIntStrict(text, '--iops-burst', 1) : parseSize(text, '--bps-burst');
    if (n < r / 1000) throw new UsageError(`--${flag}: ${text} is less than a millisecond's worth of ${rateFlag} (${Math.ceil(r / 1000)}): the bucket could never fill`);
    return n;
  };
  const iops = rate('iops');
  const bytesPerSecond = rate('bps');
  if (iops > MAX_IOPS) throw new UsageError(`--iops: ${iops} is more than ${MAX_IOPS}`);
  if (bytesPerSecond > MAX_BYTES_PER_SECOND) throw new UsageError(`--bps: ${bytesPerSecond} is more than ${MAX_BYTES_PER_SECOND}`);
  return { iops, iopsBurst: burst('iops-burst', iops, '--iops'), bytesPerSecond, bytesBurst: burst('bps-burst', bytesPerSecond, '--bps') };
}

/** --network NAME, repeated (the daemon's grants.network checks the same rules). */
export function parseNetworks(names: readonly string[], where = '--network'): string[] {
  try {
    const out = names.map((n) => checkNetworkName(n, where));
    if (out.length > MAX_GRANTS) throw new UsageError(`${where}: ${out.length} networks, at most ${MAX_GRANTS}`);
    const dup = out.find((n, i) => out.indexOf(n) !== i);
    if (dup !== undefined) throw new UsageError(`${where}: ${dup} is given twice (a device has one port per network)`);
    return out;
  } catch (e) {
    if (e instanceof NetworkConfigError) throw new UsageError(e.message);
    throw e;
  }
}

export function parsePollMaxNs(text: string, where = '--poll-max-ns'): number {
  const n = parseIntStrict(text, where, 0);
  const error = pollMaxNsError(n);
  if (error !== null) throw new UsageError(`${where}: ${error}`);
  return n;
}

export function parseQueueThreads(text: string): number {
  const n = parseIntStrict(text, '--queue-threads', 1);
  if (n > MAX_QUEUE_THREADS) throw new UsageError(`--queue-threads: ${text} is more than ${MAX_QUEUE_THREADS} (one thread per queue is the most that helps)`);
  return n;
}

/**
 * A block device holds a whole batch of request data in its linear memory at once (up to
 * 256 requests, which Linux makes up to 1.25 MiB each): 64 MiB ran out at ~60 queued 1 MiB
 * writes. Memory is only taken as it is used.
 */
function defaultMemoryLimit(storage: boolean): number {
  return (storage ? 256 : 64) * 2 ** 20;
}

/**
 * "memory:SIZE[,prealloc=on|off]" is a memory disk; anything else a path (write ./memory:x for
 * such a file). prealloc is spelled as QEMU's memory backends spell it (-object
 * memory-backend-ram,size=...,prealloc=on): the disk's pages are made when the host starts.
 */
export function parseStorage(text: string, readOnly: boolean, direct = false): StorageSpec {
  if (text === '') throw new UsageError('--storage: empty (give a file path or memory:SIZE)');
  const m = /^memory:(.*)$/.exec(text);
  if (m) {
    if (direct) throw new UsageError('--direct applies to a --storage file or block device: a memory disk has no page cache to bypass');
    const [sizeText, ...options] = m[1].split(',');
    let prealloc = false;
    for (const option of options) {
      const kv = /^prealloc=(on|off)$/.exec(option);
      if (!kv) {
        throw new UsageError(`--storage memory:SIZE: "${option}" is not an option of a memory disk (the one there is: prealloc=on or prealloc=off)`);
      }
      prealloc = kv[1] === 'on';
    }
    const size = parseSize(sizeText, '--storage memory:SIZE');
    if (prealloc && readOnly) {
      throw new UsageError('--storage memory:SIZE: prealloc=on makes pages for writes, and a read-only memory disk is never written: drop prealloc=on or the read-only grant');
    }
    return prealloc ? { kind: 'memory', size, readOnly, prealloc } : { kind: 'memory', size, readOnly };
  }
  return direct ? { kind: 'file', path: text, readOnly, direct } : { kind: 'file', path: text, readOnly };
}

export function parseSharedDir(
  dir: string,
  readOnly: boolean,
  tag: string | undefined,
  onError?: string,
  xattr = false,
  inodeFileHandles?: string,
  more: { cache?: string; translateUid?: string[]; translateGid?: string[]; xattrmap?: string; posixAcl?: boolean } = {},
): FilesystemSpec {
  // virtiofsd's --posix-acl implies --xattr (ACLs are extended attributes), and so does ours.
  const posixAcl = more.posixAcl ?? false;
  if (posixAcl) xattr = true;
  if (posixAcl && (more.translateUid?.length || more.translateGid?.length)) {
    throw new UsageError('--posix-acl: cannot go with --translate-uid or --translate-gid: ACL entries name host ids, which the guest would check untranslated (virtiofsd refuses the same)');
  }
  if (more.cache !== undefined && !CACHE_POLICIES.includes(more.cache as CachePolicy)) {
    throw new UsageError(`--cache: "${more.cache}" is not one of ${CACHE_POLICIES.join(', ')}`);
  }
  const rules = (flag: string, list: string[] | undefined): IdMapRule[] | undefined => {
    if (list === undefined || list.length === 0) return undefined;
    const parsed = list.map((text) => {
      try {
        return parseIdMapRule(text);
      } catch (e) {
        throw new UsageError(`${flag}: ${(e as Error).message}`);
      }
    });
    try {
      new IdMap(parsed, flag); // overlapping ranges are refused here, not in the worker
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    return parsed;
  };
  const translateUid = rules('--translate-uid', more.translateUid);
  const translateGid = rules('--translate-gid', more.translateGid);
  let xattrmap: XattrRule[] | undefined;
  if (more.xattrmap !== undefined) {
    if (!xattr) throw new UsageError('--xattrmap applies to --xattr: give --xattr too');
    try {
      xattrmap = parseXattrMap(more.xattrmap);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  }
  if (dir === '') throw new UsageError('--shared-dir: empty (give a directory)');
  if (onError !== undefined && onError !== 'abort' && onError !== 'guest-error') {
    throw new UsageError(`--migration-on-error: "${onError}" is not one of abort, guest-error`);
  }
  if (inodeFileHandles !== undefined && !INODE_FILE_HANDLES.includes(inodeFileHandles as InodeFileHandles)) {
    throw new UsageError(`--inode-file-handles: "${inodeFileHandles}" is not one of ${INODE_FILE_HANDLES.join(', ')}`);
  }
  if (tag !== undefined) {
    const n = Buffer.byteLength(tag);
    if (n === 0 || n > 36) throw new UsageError(`--tag: "${tag}" must be 1-36 bytes (virtio-fs config space)`);
  }
  return {
    dir,
    readOnly,
    ...(tag === undefined ? {} : { tag }),
    ...(onError === undefined ? {} : { migrationOnError: onError }),
    ...(xattr ? { xattr } : {}),
    ...(posixAcl ? { posixAcl } : {}),
    ...(inodeFileHandles === undefined ? {} : { inodeFileHandles: inodeFileHandles as InodeFileHandles }),
    ...(more.cache === undefined ? {} : { cache: more.cache as CachePolicy }),
    ...(translateUid ? { translateUid } : {}),
    ...(translateGid ? { translateGid } : {}),
    ...(xattrmap ? { xattrmap } : {}),
  };
}

function pluginOptionsOf(flags: string[]): PluginOptions {
  try {
    return parsePluginOptionFlags(flags);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export function parseCli(argv: string[]): CliOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
        'print-capabilities': { type: 'boolean' },
        'socket-path': { type: 'string' },
        fd: { type: 'string' },
        control: { type: 'string' },
        'take-over': { type: 'boolean' },
        'take-over-mode': { type: 'string' },
        plugin: { type: 'string' },
        'device-module': { type: 'string' },
        'plugin-option': { type: 'string', multiple: true },
        'log-level': { type: 'string' },
        'log-format': { type: 'string' },
        'memory-limit': { type: 'string' },
        'call-deadline': { type: 'string' },
        'state-return-memfd': { type: 'boolean' },
        'experimental-rfc-state-shm': { type: 'boolean' },
        'state-pipe-size': { type: 'string' },
        entropy: { type: 'boolean' },
        storage: { type: 'string' },
        'read-only': { type: 'boolean' },
        // virtiofsd's spelling, which libvirt (11.0 on) appends for a <filesystem> with <readonly/>.
        readonly: { type: 'boolean' },
        direct: { type: 'boolean' },
        'shared-dir': { type: 'string' },
        tag: { type: 'string' },
        'migration-on-error': { type: 'string' },
        xattr: { type: 'boolean' },
        'posix-acl': { type: 'boolean' },
        'inode-file-handles': { type: 'string' },
        cache: { type: 'string' },
        'translate-uid': { type: 'string', multiple: true },
        'translate-gid': { type: 'string', multiple: true },
        xattrmap: { type: 'string' },
        'queue-threads': { type: 'string' },
        'poll-max-ns': { type: 'string' },
        iops: { type: 'string' },
        'iops-burst': { type: 'string' },
        bps: { type: 'string' },
        'bps-burst': { type: 'string' },
        network: { type: 'string', multiple: true },
        'network-rate': { type: 'string' },
      },
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.replace(/\. To specify.*$/, '')} (see --help)`);
  }
  const v = parsed.values;
  const logLevel = v['log-level'] ?? 'info';
  if (!isLogLevel(logLevel)) throw new UsageError(`--log-level: "${logLevel}" is not one of ${LOG_LEVELS.join(', ')}`);
  const logFormat = v['log-format'] ?? 'text';
  if (!isLogFormat(logFormat)) throw new UsageError(`--log-format: "${logFormat}" is not one of ${LOG_FORMATS.join(', ')}`);
  const opts: CliOptions = {
    help: v.help ?? false,
    version: v.version ?? false,
    printCapabilities: v['print-capabilities'] ?? false,
    socketPath: v['socket-path'] ?? null,
    fd: v.fd === undefined ? null : parseIntStrict(v.fd, '--fd', 0),
    control: v.control ?? null,
    takeOver: v['take-over'] ?? false,
    takeOverMode: parseTakeOverMode(v['take-over-mode']),
    plugin: v.plugin ?? null,
    deviceModule: v['device-module'] ?? null,
    logLevel,
    logFormat,
    memoryLimitBytes: v['memory-limit'] === undefined ? defaultMemoryLimit(v.storage !== undefined) : parseSize(v['memory-limit'], '--memory-limit'),
    // A batch of large block requests is legitimately slow to copy (100 x 1 MiB writes took
    // ~115 ms): block devices get a longer default before the watchdog calls them hung.
    callDeadlineMs: v['call-deadline'] === undefined ? (v.storage !== undefined ? 1000 : 100) : parseIntStrict(v['call-deadline'], '--call-deadline', 1),
    stateReturnMemfd: v['state-return-memfd'] ?? false,
    experimentalRfcStateShm: v['experimental-rfc-state-shm'] ?? false,
    statePipeBytes: parsePipeSize(v['state-pipe-size'], '--state-pipe-size', UsageError),
    entropy: v.entropy ?? false,
    storage: v.storage === undefined ? null : parseStorage(v.storage, v['read-only'] ?? false, v.direct ?? false),
    filesystem: v['shared-dir'] === undefined ? null : parseSharedDir(v['shared-dir'], (v['read-only'] || v.readonly) ?? false, v.tag, v['migration-on-error'], v.xattr ?? false, v['inode-file-handles'], {
          cache: v.cache,
          translateUid: v['translate-uid'],
          translateGid: v['translate-gid'],
          xattrmap: v.xattrmap,
          posixAcl: v['posix-acl'],
        }),
    pluginOptions: pluginOptionsOf(v['plugin-option'] ?? []),
    queueThreads: v['queue-threads'] === undefined ? 1 : parseQueueThreads(v['queue-threads']),
    pollMaxNs: v['poll-max-ns'] === undefined ? DEFAULT_POLL_MAX_NS : parsePollMaxNs(v['poll-max-ns']),
    throttle: parseThrottleFlags(v),
    networks: parseNetworks(v.network ?? []),
    networkRate: v['network-rate'] === undefined ? null : parseNetworkRate(v['network-rate']),
  };
  if (v['migration-on-error'] !== undefined && opts.filesystem === null) {
    throw new UsageError('--migration-on-error applies to --shared-dir: give --shared-dir DIR too');
  }
  if (v['inode-file-handles'] !== undefined && opts.filesystem === null) {
    throw new UsageError('--inode-file-handles applies to --shared-dir: give --shared-dir DIR too');
  }
  if (v.xattr && opts.filesystem === null) throw new UsageError('--xattr applies to --shared-dir: give --shared-dir DIR too');
  for (const flag of ['cache', 'translate-uid', 'translate-gid', 'xattrmap', 'posix-acl'] as const) {
    if (v[flag] !== undefined && opts.filesystem === null) throw new UsageError(`--${flag} applies to --shared-dir: give --shared-dir DIR too`);
  }
  if (v.tag !== undefined && opts.filesystem === null) throw new UsageError('--tag names a --shared-dir: give --shared-dir DIR too');
  if (v.direct && opts.storage === null) throw new UsageError('--direct applies to --storage: give --storage FILE too');
  if (v['read-only'] && opts.storage === null && opts.filesystem === null) {
    throw new UsageError('--read-only applies to --storage or --shared-dir: give one of them too');
  }
  if (v.readonly && opts.filesystem === null) {
    throw new UsageError(`--readonly is virtiofsd's spelling for --shared-dir: give --shared-dir DIR too${opts.storage ? ' (for --storage, write --read-only)' : ''}`);
  }
  if (opts.help || opts.version) return opts;
  if (opts.plugin && opts.deviceModule) throw new UsageError('--plugin and --device-module are exclusive: give one device');
  if (!opts.plugin && !opts.deviceModule) throw new UsageError('no device: give --plugin FILE.wasm (see --help)');
  if (opts.printCapabilities) return opts;
  if (opts.socketPath !== null && opts.fd !== null) throw new UsageError('--socket-path and --fd are exclusive: listen on one socket');
  if (opts.socketPath === null && opts.fd === null) throw new UsageError('nowhere to listen: give --socket-path PATH or --fd FD');
  if (opts.control === '') throw new UsageError('--control: empty (give a path, or none)');
  if (opts.takeOver && opts.socketPath === null) throw new UsageError('--take-over takes the device of the host on --socket-path PATH: give --socket-path');
  if (opts.takeOver && opts.control === 'none') throw new UsageError('--take-over asks the old host over its control socket: --control none cannot go with it');
  if (v['take-over-mode'] !== undefined && !opts.takeOver) throw new UsageError('--take-over-mode goes with --take-over');
  return opts;
}

function parseTakeOverMode(v: string | undefined): CliOptions['takeOverMode'] {
  if (v === undefined) return 'auto';
  if (v === 'auto' || v === 'live' || v === 'socket') return v;
  throw new UsageError(`--take-over-mode: "${v}" is not auto, live or socket`);
}
