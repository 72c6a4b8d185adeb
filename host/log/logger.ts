// One log format for the whole host, main thread and device workers alike. Lines go to fd 2
// with a synchronous write: a worker that is about to be terminated, or a host that is about
// to crash, still leaves its last line behind, and lines from different threads never
// interleave mid-line (each is one write(2) under PIPE_BUF for typical lengths).
import { writeSync } from 'node:fs';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const rank: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

let threshold: LogLevel = (process.env.VHOST_WASM_LOG_LEVEL as LogLevel) in rank ? (process.env.VHOST_WASM_LOG_LEVEL as LogLevel) : 'info';
let sink: ((line: string) => void) | null = null;

export function isLogLevel(s: string): s is LogLevel {
  return s in rank;
}

export function setLogLevel(level: LogLevel): void {
  threshold = level;
}

export function getLogLevel(): LogLevel {
  return threshold;
}

/** Tests capture lines here instead of (as well as) stderr. */
export function setLogSink(fn: ((line: string) => void) | null): void {
  sink = fn;
}

export interface Logger {
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  enabled(level: LogLevel): boolean;
  child(scope: string): Logger;
}

export function createLogger(scope: string): Logger {
  const emit = (level: LogLevel, msg: string) => {
    if (rank[level] > rank[threshold]) return;
    const line = `${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} ${scope}: ${msg}\n`;
    if (sink) sink(line);
    try {
      writeSync(2, line);
    } catch {
      // stderr closed (EPIPE): logging must never take the host down.
    }
  };
  return {
    error: (m) => emit('error', m),
    warn: (m) => emit('warn', m),
    info: (m) => emit('info', m),
    debug: (m) => emit('debug', m),
    enabled: (l) => rank[l] <= rank[threshold],
    child: (s) => createLogger(`${scope}/${s}`),
  };
}

/** An Error's message, or a string for anything else thrown. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
