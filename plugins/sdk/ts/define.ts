// defineDevice: the world's `device` export built from a small description. It turns the
// WIT's calling conventions into plain TypeScript: throw to refuse (activate, finish-load)
// or to fail the device (handle), state as one byte array (the SDK chunks it), config as a
// byte array, and every uncaught error reported through the log before the call traps, so
// the host's log says what went wrong instead of a bare `unreachable`.
import './globals.ts';
import * as witLog from 'vhost:device/log@0.2.2';
import type { Action, DeviceInfo, Event, Frame, IoFailure, PluginIdentity, Request, StateChunk } from './wit.ts';

/** Where a batch's extra actions go: answers to requests held earlier, timers, frames. */
export interface Batch {
  push(action: Action): void;
}

export interface DeviceSpec {
  /** Tags saved state: keep it stable. Lower-case letters, digits and '-'. */
  name: string;
  version: string;
  info: {
    /** Virtio device id (4 = entropy, 2 = block, 3 = console, 26 = fs, ...). */
    deviceId: number;
    numQueues: number;
    /** A power of two, at most 32768. */
    maxQueueSize: number;
    /** Device feature bits offered (0-23 and 50+); default none. */
    features?: bigint;
    /** Readable bytes of each request the device sees (`request.prefix`), at most 4096; default 0. */
    prefixLen?: number;
    /** Each queue may run in its own instance (--queue-threads); default false. */
    queuesIndependent?: boolean;
    /** Bytes of config space; default 0. */
    configSize?: number;
  };
  /**
   * The config space, built again on every GET_CONFIG (it may call capabilities, e.g. the fs
   * tag). Shorter than configSize: the rest reads as zeroes.
   */
  config?: () => Uint8Array;
  /** SET_CONFIG of `data` at `offset` (the host checked the range). Default: ignored. */
  writeConfig?: (offset: number, data: Uint8Array) => void;
  /** The driver acked these bits; throw to refuse them. */
  activate?: (acked: bigint) => void;
  /** Back to the just-created state (held requests are gone with the rings). */
  reset?: () => void;
  /**
   * One request: return answer(...) or hold(...). Requests held earlier are answered through
   * batch.push (from this or any later call). Give this or `handle`.
   */
  request?: (request: Request, batch: Batch) => Action;
  /**
   * The whole batch at once, as the WIT has it (instead of request/ioFailed/timer/frame): for
   * devices that share work across a batch, e.g. one entropy call for all its requests.
   */
  handle?: (events: Event[]) => Action[];
  /** A transfer, op or backing-read of the answer to `failure.id` failed: answer it again. */
  ioFailed?: (failure: IoFailure, batch: Batch) => Action;
  /** The wake-up asked for with wakeAfter(_, token). */
  timer?: (token: bigint, batch: Batch) => void;
  /** A frame from a granted network: read it with frameRead(frame.id, ...) in this call, or it is dropped. */
  frame?: (frame: Frame, batch: Batch) => void;
  /** Called once after each handle call's events, to push actions that need the whole batch. */
  afterBatch?: (batch: Batch) => void;
  /** Migration: the whole state as bytes, and its inverse (throw to refuse a state). */
  state?: {
    save: () => Uint8Array;
    load: (bytes: Uint8Array) => void;
    /** Largest state load() accepts; default 16 MiB. */
    maxBytes?: number;
  };
}

/** The world's device interface, as componentize-js expects it exported (`export const device`). */
export interface DeviceExport {
  identity(): PluginIdentity;
  info(): DeviceInfo;
  readConfig(offset: number, size: number): Uint8Array;
  writeConfig(offset: number, data: Uint8Array): void;
  activate(ackedFeatures: bigint): void;
  reset(): void;
  handle(events: Event[]): Action[];
  getState(offset: bigint, size: number): StateChunk;
  setState(offset: bigint, chunk: Uint8Array): void;
  finishLoad(): void;
}

const DEFAULT_MAX_STATE = 16 << 20;

function message(e: unknown): string {
  if (e instanceof Error) return e.message || e.name;
  return String(e);
}

/**
 * The glue turns a thrown non-Error value into the WIT `err(string)`; an Error object would
 * trap instead. So result-returning exports throw the message as a string.
 */
function refuse(where: string, e: unknown): never {
  throw `${where}: ${message(e)}`;
}

/** Exports without a result type can only trap: say why in the log first. */
function trap(where: string, e: unknown): never {
  witLog.write('error', `${where} failed: ${message(e)}`);
  throw e;
}

export function defineDevice(spec: DeviceSpec): DeviceExport {
  const info: DeviceInfo = {
    deviceId: spec.info.deviceId,
    numQueues: spec.info.numQueues,
    maxQueueSize: spec.info.maxQueueSize,
    features: spec.info.features ?? 0n,
    configSize: spec.info.configSize ?? 0,
    prefixLen: spec.info.prefixLen ?? 0,
    queuesIndependent: spec.info.queuesIndependent ?? false,
  };
  const identity: PluginIdentity = { name: spec.name, version: spec.version };
  const maxState = spec.state?.maxBytes ?? DEFAULT_MAX_STATE;
  if (!spec.request === !spec.handle) throw new Error(`device ${spec.name}: give exactly one of request() and handle()`);
  const onRequest = spec.request;
  const handleAll = spec.handle;

  // One save is frozen at offset 0 so every chunk of it comes from the same bytes.
  let saving: Uint8Array | null = null;
  let loading: Uint8Array[] = [];
  let loadedBytes = 0;

  return {
    identity: () => identity,
    info: () => info,
    readConfig(offset, size) {
      try {
        const out = new Uint8Array(size);
        if (spec.config) out.set(spec.config().subarray(offset, offset + size));
        return out;
      } catch (e) {
        return trap('read-config', e);
      }
    },
    writeConfig(offset, data) {
      try {
        spec.writeConfig?.(offset, data);
      } catch (e) {
        trap('write-config', e);
      }
    },
    activate(acked) {
      try {
        spec.activate?.(acked);
      } catch (e) {
        refuse('activate', e);
      }
    },
    reset() {
      saving = null;
      loading = [];
      loadedBytes = 0;
      try {
        spec.reset?.();
      } catch (e) {
        trap('reset', e);
      }
    },
    handle(events) {
      if (handleAll) {
        try {
          return handleAll(events);
        } catch (e) {
          return refuse('handle', e);
        }
      }
      const out: Action[] = [];
      const batch: Batch = { push: (a) => void out.push(a) };
      try {
        for (const event of events) {
          switch (event.tag) {
            case 'request':
              out.push(onRequest!(event.val, batch));
              break;
            case 'io-failed':
              if (!spec.ioFailed) throw new Error(`I/O of the answer to request ${event.val.id} failed (errno ${event.val.errno}) and the device has no ioFailed handler`);
              out.push(spec.ioFailed(event.val, batch));
              break;
            case 'timer':
              spec.timer?.(event.val, batch);
              break;
            case 'frame':
              spec.frame?.(event.val, batch);
              break;
          }
        }
        spec.afterBatch?.(batch);
      } catch (e) {
        refuse('handle', e);
      }
      return out;
    },
    getState(offset, size) {
      try {
        if (offset === 0n || saving === null) saving = spec.state ? spec.state.save() : new Uint8Array(0);
        const total = BigInt(saving.length);
        if (offset > total) throw new Error(`offset ${offset} is past the end of the state (${total} bytes)`);
        const start = Number(offset);
        const bytes = saving.slice(start, start + size);
        return { bytes, remaining: total - offset - BigInt(bytes.length) };
      } catch (e) {
        return refuse('get-state', e);
      }
    },
    setState(offset, chunk) {
      try {
        if (offset === 0n) {
          loading = [];
          loadedBytes = 0;
        }
        if (offset !== BigInt(loadedBytes)) throw new Error(`chunk at offset ${offset}, expected ${loadedBytes}`);
        if (loadedBytes + chunk.length > maxState) throw new Error(`state larger than ${maxState} bytes`);
        loading.push(chunk);
        loadedBytes += chunk.length;
      } catch (e) {
        refuse('set-state', e);
      }
    },
    finishLoad() {
      const all = new Uint8Array(loadedBytes);
      let at = 0;
      for (const c of loading) {
        all.set(c, at);
        at += c.length;
      }
      loading = [];
      loadedBytes = 0;
      try {
        if (spec.state) spec.state.load(all);
        else if (all.length !== 0) throw new Error(`this device keeps no state, but ${all.length} bytes were loaded`);
      } catch (e) {
        refuse('finish-load', e);
      }
    },
  };
}
