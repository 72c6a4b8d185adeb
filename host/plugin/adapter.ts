// Turns the raw functions jco's glue exposes into a VirtioDevice that can be trusted:
// every answer is checked against the contract in docs/plugin-abi.md, and every failure
// becomes a PluginError naming the plugin and the call. After a trap or a contract
// violation the instance is not called again (its memory may be half-updated).
import type { DeviceAction, DeviceEvent, DeviceInfo, StateChunk, VirtioDevice } from '../device/device.ts';
import { liftActions, lowerEvents, type WitAction, type WitEvent } from './handle-lift.ts';
import type { DirectHandle } from './direct-handle.ts';
import { CapabilityError } from './imports.ts';
import { PluginError, type PluginErrorKind } from './errors.ts';
import { LiftError, type CallBudget, type LiftGuard } from './lift-guard.ts';
import { checkIdentity, checkInfo, type PluginIdentity } from './validate.ts';

/** The device interface as jco lifts it (types per wit/device.wit). */
export interface RawDevice {
  identity(): unknown;
  info(): unknown;
  readConfig(offset: number, size: number): Uint8Array;
  writeConfig(offset: number, data: Uint8Array): void;
  activate(acked: bigint): void;
  reset(): void;
  handle(events: WitEvent[]): WitAction[];
  getState(offset: bigint, size: number): { bytes: Uint8Array; remaining: bigint };
  setState(offset: bigint, chunk: Uint8Array): void;
  finishLoad(): void;
}

export interface PluginDevice extends VirtioDevice {
  /** Name and version the plugin reports: the tag its saved state carries. */
  readonly identity: PluginIdentity;
  /** Current size of all of the plugin's linear memories together, in bytes. */
  memoryBytes(): number;
  /** Why this instance may not be called again (a trap or a contract violation), or null. */
  unusable(): string | null;
  /** How `handle` is called: lowered and lifted by the host, or through jco's glue. */
  readonly handlePath: 'direct' | 'jco';
}

export interface AdapterContext {
  label: string;
  /** Sum of the current sizes of every linear memory of every core instance. */
  memoryBytes: () => number;
  memoryLimitBytes: number;
  /** Bounds what each call may make the host copy out of plugin memory. */
  guard: LiftGuard;
  /** `handle` lowered and lifted by the host itself (direct-handle.ts); null: through jco's glue. */
  direct?: DirectHandle | null;
}

const MAX_U32 = 0xffffffff;
/** List entries (actions, pieces, transfers, ops) a handle() result may hold per request it may answer, plus an allowance. */
const HANDLE_ITEMS_PER_REQUEST = 64;
const HANDLE_ITEMS_ALLOWANCE = 1024;

export function adaptDevice(raw: RawDevice, ctx: AdapterContext): PluginDevice {
  let plugin = ctx.label;
  let dead: string | null = null;

  const memoryNote = (): string => {
    const used = ctx.memoryBytes();
    // Memory cannot be watched failing to grow; a trap near the cap is the usual sign
    // (malloc returned NULL and the plugin or the SDK's cabi_realloc gave up).
    const near = used >= ctx.memoryLimitBytes * 0.75 ? ': likely out of memory' : '';
    return ` (memory ${used} bytes of its limit of ${ctx.memoryLimitBytes}${near})`;
  };

  const die = (call: string, kind: PluginErrorKind, detail: string, cause?: unknown): never => {
    dead = `${kind} in ${call}`;
    throw new PluginError(plugin, call, kind, detail, { cause });
  };

  // The direct handle path's per-call state (handle() below), made once.
  const NO_EVENTS: readonly DeviceEvent[] = Object.freeze([]) as readonly DeviceEvent[];
  const handleBudget: CallBudget = { bytes: 0, items: 0 };
  let directEvents: readonly DeviceEvent[] = NO_EVENTS;
  const direct = ctx.direct;
  const NO_WIT_EVENTS = Object.freeze([]) as unknown as WitEvent[];
  const viaGlue = (): unknown => raw.handle(NO_WIT_EVENTS);
  const directCall = direct ? (): DeviceAction[] => direct.call(directEvents, handleBudget, viaGlue) : null;

  /** Run one plugin call; `error` results (thrown strings) leave the instance usable. */
  function call<T>(name: string, fn: () => T, budget?: CallBudget): T {
    if (dead) throw new PluginError(plugin, name, 'trap', `not called: instance unusable after ${dead}`);
    ctx.guard.arm(name, budget);
    try {
      return fn();
    } catch (e) {
      if (typeof e === 'string') throw new PluginError(plugin, name, 'error', e);
      if (e instanceof PluginError) throw e;
      if (e instanceof CapabilityError) return die(name, 'trap', `host import refused: ${e.message}`, e);
      if (e instanceof WebAssembly.RuntimeError || e instanceof RangeError) {
        return die(name, 'trap', `trapped: ${e.message}${memoryNote()}`, e);
      }
      if (e instanceof LiftError) return die(name, 'invalid', e.message.replace(`${name}: `, ''), e);
      // The glue rejects malformed lifts (bad discriminant, misaligned list) with TypeError.
      return die(name, 'invalid', `returned a malformed value: ${String(e)}`, e);
    }
  }
  const invalid = (name: string, detail: string): never => die(name, 'invalid', detail);

  let identity: PluginIdentity;
  let info: DeviceInfo;
  try {
    identity = checkIdentity(call('identity', () => raw.identity()));
    plugin = identity.name;
    info = checkInfo(call('info', () => raw.info()), identity.name);
  } catch (e) {
    // Whatever went wrong, a device that cannot describe itself did not load.
    if (e instanceof PluginError) throw new PluginError(e.plugin, e.call, 'load', e.detail, { cause: e });
    throw new PluginError(plugin, 'load', 'load', (e as Error).message, { cause: e });
  }

  // Requests handed to the plugin by id, with their writable room (see handle()).
  // An array, not a Map: the host hands out ids densely from 0 (the runner reuses freed ones), and
  // this runs once per request.
  let known: number[] = [];
  let knownCount = 0;
  let knownBytes = 0;

  // Save and load progress, to hold the plugin to one consistent state per transfer.
  let saveTotal: number | null = null;
  let loadOffset = 0;

  const checkConfigRange = (offset: number, size: number): void => {
    if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 0 || offset + size > info.configSize) {
      throw new RangeError(`config access ${offset}+${size} outside ${info.configSize} bytes`);
    }
  };

  return {
    info,
    identity,
    memoryBytes: ctx.memoryBytes,
    unusable: () => dead,
    handlePath: ctx.direct ? 'direct' : 'jco',

    readConfig(offset: number, size: number): Uint8Array {
      checkConfigRange(offset, size);
      const data = call('read-config', () => raw.readConfig(offset, size), { bytes: size, items: 0 });
      if (!(data instanceof Uint8Array) || data.length !== size) {
        invalid('read-config', `returned ${data?.length} bytes for a ${size}-byte read`);
      }
      return data;
    },

    writeConfig(offset: number, data: Uint8Array): void {
      checkConfigRange(offset, data.length);
      call('write-config', () => raw.writeConfig(offset, data));
    },

    activate(ackedFeatures: bigint): void {
      // The plugin only ever hears about bits it offered (QEMU may pass others through).
      call('activate', () => raw.activate(ackedFeatures & info.features));
    },

    reset(): void {
      known = [];
      knownCount = 0;
      knownBytes = 0;
      saveTotal = null;
      loadOffset = 0;
      call('reset', () => raw.reset());
    },

    handle(events: readonly DeviceEvent[]): DeviceAction[] {
      // What the result may make the host copy out of plugin memory: literal reply bytes can
      // never exceed the writable room of the requests the plugin may answer, which is at most
      // every request it has been given and not been told the end of (ids are reused, so the
      // table is as big as the rings). Checked while the glue lifts, before each copy.
      for (let i = 0; i < events.length; i++) {
        const ev = events[i];
        if (ev.kind !== 'request') continue;
        const { id, writableLen } = ev.request;
        const before = known[id];
        if (before === undefined) knownCount++;
        knownBytes += writableLen - (before ?? 0);
        known[id] = writableLen;
      }
      const items = Math.min(HANDLE_ITEMS_ALLOWANCE + HANDLE_ITEMS_PER_REQUEST * knownCount, 1 << 22);
      if (directCall) {
        // One budget object and one call closure for every call (the guard and the direct
        // handle read the budget during the call only): no allocation here per request.
        handleBudget.bytes = knownBytes;
        handleBudget.items = items;
        directEvents = events;
        try {
          return call('handle', directCall, handleBudget);
        } finally {
          directEvents = NO_EVENTS;
        }
      }
      const budget = { bytes: knownBytes, items };
      const lowered = lowerEvents(events);
      const out = call('handle', () => raw.handle(lowered), budget);
      try {
        return liftActions(out);
      } catch (e) {
        return invalid('handle', (e as Error).message);
      }
    },

    getState(offset: number, size: number): StateChunk {
      if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isInteger(size) || size < 1 || size > MAX_U32) {
        throw new RangeError(`getState(${offset}, ${size}): bad arguments`);
      }
      if (offset === 0) saveTotal = null;
      const chunk = call('get-state', () => raw.getState(BigInt(offset), size), { bytes: size, items: 0 });
      const { bytes, remaining } = chunk;
      if (!(bytes instanceof Uint8Array) || typeof remaining !== 'bigint') invalid('get-state', 'malformed chunk');
      if (bytes.length > size) invalid('get-state', `returned ${bytes.length} bytes when asked for at most ${size}`);
      if (remaining > BigInt(Number.MAX_SAFE_INTEGER)) invalid('get-state', `claims ${remaining} bytes remaining`);
      const rest = Number(remaining);
      if (bytes.length < size && rest > 0) {
        invalid('get-state', `returned a short chunk (${bytes.length} of ${size} bytes) with ${rest} bytes still remaining`);
      }
      const total = offset + bytes.length + rest;
      if (saveTotal !== null && total !== saveTotal) {
        invalid('get-state', `state size changed between calls: ${saveTotal} bytes, now ${total} at offset ${offset}`);
      }
      saveTotal = total;
      return { bytes, remaining: rest };
    },

    setState(offset: number, chunk: Uint8Array): void {
      if (offset === 0) loadOffset = 0;
      if (offset !== loadOffset) {
        throw new RangeError(`setState at offset ${offset}, expected ${loadOffset}: chunks must arrive in order`);
      }
      call('set-state', () => raw.setState(BigInt(offset), chunk));
      loadOffset = offset + chunk.length;
    },

    finishLoad(): string | null {
      loadOffset = 0;
      try {
        call('finish-load', () => raw.finishLoad());
        return null;
      } catch (e) {
        if (e instanceof PluginError && e.kind === 'error') return e.message;
        throw e;
      }
    },

    close(): void {
      dead = dead ?? 'close';
    },
  };
}
