// What the JavaScript engine's ambient APIs do inside a plugin. The SDK builds components
// with every componentize-js WASI feature disabled (the host grants no WASI: docs/
// writing-a-plugin.md, "TypeScript plugins and WASI"), which leaves some globals quietly
// wrong: crypto.getRandomValues would return the same bytes in every instance (the engine's
// generator is seeded when the component is built), Date.now() the build's time,
// performance.now() would trap with a bare `unreachable`, console.* would print nowhere.
// Installed once, when the device module is evaluated (at build time, in the snapshot).
import * as witLog from 'vhost:device/log@0.2.2';
import * as witEntropy from 'vhost:device/entropy@0.2.2';

type Level = witLog.Level;

function noClock(what: string): never {
  throw new Error(`${what}: a plugin has no clock (its time would be the build's); ask the host for a timer with wakeAfter()`);
}

function consoleLine(level: Level) {
  return (...args: unknown[]): void => {
    witLog.write(level, args.map((a) => (typeof a === 'string' ? a : a instanceof Error ? `${a.name}: ${a.message}` : String(a))).join(' '));
  };
}

const g = globalThis as Record<string, unknown>;

/** Some of the engine's globals are accessors without setters: define over them. */
function define(on: object, name: string, value: unknown): void {
  Object.defineProperty(on, name, { value, writable: true, configurable: true, enumerable: false });
}

/** The engine's object `name` (crypto, performance), or a fresh one installed in its place. */
function globalObject(name: string): object {
  const existing = g[name];
  if (typeof existing === 'object' && existing !== null) return existing;
  const made = {};
  define(g, name, made);
  return made;
}

// Real randomness, or a trap when the operator did not grant --entropy: never a silent
// deterministic stream where a device asked for cryptographic bytes.
define(globalObject('crypto'), 'getRandomValues', <T extends ArrayBufferView>(array: T): T => {
  const view = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  // The Web API's own limit, and the host's per-call cap is far above it.
  if (view.length > 65536) throw new RangeError(`crypto.getRandomValues: ${view.length} bytes asked, at most 65536`);
  view.set(witEntropy.fill(view.length));
  return array;
});

const BuildDate = Date;
// new Date(ms) and Date.UTC stay (they compute, they do not read a clock).
define(g, 'Date', new Proxy(BuildDate, {
  construct(target, args: unknown[], newTarget) {
    if (args.length === 0) noClock('new Date()');
    return Reflect.construct(target, args, newTarget) as object;
  },
  apply() {
    return noClock('Date()');
  },
  get(target, key, receiver) {
    if (key === 'now') return () => noClock('Date.now()');
    return Reflect.get(target, key, receiver) as unknown;
  },
}));
define(globalObject('performance'), 'now', () => noClock('performance.now()'));
for (const timer of ['setTimeout', 'setInterval']) define(g, timer, () => noClock(`${timer}()`));

define(g, 'console', {
  log: consoleLine('info'),
  info: consoleLine('info'),
  warn: consoleLine('warn'),
  error: consoleLine('error'),
  debug: consoleLine('debug'),
  trace: consoleLine('trace'),
});
