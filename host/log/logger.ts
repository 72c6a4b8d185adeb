// One log format for the whole host, main thread and device workers alike. Lines go to fd 2
// with a synchronous write: a worker that is about to be terminated, or a host that is about
// to crash, still leaves its last line behind, and lines from different threads never
// interleave mid-line (each is one write(2) of at most MAX_LINE bytes, under PIPE_BUF, which
// a pipe takes whole or not at all).
//
// Messages carry text from untrusted places (plugin log lines and error strings, names a
// front-end sent): every control character is shown escaped (\n, \x1b, ...), so one message
// is always exactly one line and cannot forge another line's timestamp or level, nor drive
// the reader's terminal; and a message is cut to fit one atomic write, with a marker.
import { writeSync } from 'node:fs';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** text: `TIME LEVEL scope: message`; json: one object per line, {"time","level","scope","msg"}. */
export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** Longest line written (bytes, newline included): below PIPE_BUF (4096) so a pipe write is atomic. */
export const MAX_LINE = 4000;

const rank: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/** Set by the CLI (--log-level) or an embedder (setLogLevel); workers get it in their init. */
let threshold: LogLevel = 'info';
/**
 * The level as one Int32 shared by the main thread and every device worker, so the daemon's
 * log-level request reaches workers already running (their `threshold` follows it). Workers
 * adopt the main thread's cell from their init (useLogLevelCell).
 */
let cell = new Int32Array(new SharedArrayBuffer(8));
Atomics.store(cell, 0, 2);
/** cell[1]: the line format (index into LOG_FORMATS), shared the same way. */
const FORMAT_SLOT = 1;
const byRank: LogLevel[] = ['error', 'warn', 'info', 'debug'];
let sink: ((line: string) => void) | null = null;
/** Lines this thread could not write because stderr was full (a non-blocking pipe nobody drained). */
let droppedOnFullStderr = 0;

export function isLogLevel(s: string): s is LogLevel {
  return s in rank;
}

export function isLogFormat(s: string): s is LogFormat {
  return (LOG_FORMATS as readonly string[]).includes(s);
}

/** The line format of every thread (workers follow through the shared cell). */
export function setLogFormat(format: LogFormat): void {
  Atomics.store(cell, FORMAT_SLOT, LOG_FORMATS.indexOf(format));
}

export function setLogLevel(level: LogLevel): void {
  threshold = level;
  Atomics.store(cell, 0, rank[level]);
}

export function getLogLevel(): LogLevel {
  return currentLevel();
}

/** This thread's level, following the shared cell (another thread may have changed it). */
function currentLevel(): LogLevel {
  const r = Atomics.load(cell, 0);
  if (byRank[r] !== undefined && byRank[r] !== threshold) threshold = byRank[r];
  return threshold;
}

/** The shared level cell, for a worker's init. */
export function logLevelCell(): SharedArrayBuffer {
  return cell.buffer as SharedArrayBuffer;
}

/** In a worker: follow the main thread's level from now on (its cell from the init). */
export function useLogLevelCell(buffer: SharedArrayBuffer): void {
  cell = new Int32Array(buffer);
  currentLevel();
}

/**
 * `s` as a JSON string on one line whose parse is `s` exactly: JSON escapes the C0 controls;
 * the separators and bidirectional controls JSON leaves alone (a terminal or a line-based
 * reader would act on them) are escaped too, as \uXXXX.
 */
function jsonString(s: string): string {
  return JSON.stringify(s).replace(/[\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** One JSON log line of at most MAX_LINE bytes: the message is cut (with the marker) until it fits. */
function jsonLine(time: string, level: LogLevel, scope: string, msg: string): string {
  const line = (m: string) => `{"time":"${time}","level":"${level}","scope":${jsonString(scope)},"msg":${jsonString(m)}}\n`;
  let out = line(msg);
  for (let room = MAX_LINE - 200; Buffer.byteLength(out) > MAX_LINE; room = Math.floor(room / 2)) {
    out = line(cutToBytes(msg, Math.max(32, room)));
    if (room <= 32) break;
  }
  return out;
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

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * `text` on one line: C0 and C1 controls, DEL, the Unicode line/paragraph separators and the
 * bidirectional overrides (which reorder what a terminal shows) as escapes: \n, \r, \t,
 * \xNN, \u2028.
 */
export function escapeControls(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]/g, (c) => {
    const named = NAMED[c];
    if (named) return named;
    const code = c.charCodeAt(0);
    return code > 0xff ? `\\u${code.toString(16)}` : `\\x${code.toString(16).padStart(2, '0')}`;
  });
}

/** Marks a cut message so a reader sees it was cut and by how much. */
export function cutMarker(bytes: number): string {
  return `…(${bytes} bytes cut)`;
}

/** `text` cut to at most `max` UTF-8 bytes (on a character boundary), marker included. */
export function cutToBytes(text: string, max: number): string {
  const total = Buffer.byteLength(text);
  if (total <= max) return text;
  const room = max - 24; // the marker's longest form
  let bytes = 0;
  let end = 0;
  for (const ch of text) {
    const n = Buffer.byteLength(ch);
    if (bytes + n > room) break;
    bytes += n;
    end += ch.length;
  }
  return text.slice(0, end) + cutMarker(total - bytes);
}

function write(line: string): boolean {
  try {
    writeSync(2, line);
    return true;
  } catch (e) {
    // EAGAIN: a non-blocking stderr pipe is full. Blocking here would stall a device on its
    // log reader, so the line is dropped, and counted. EPIPE: stderr is gone; logging must
    // never take the host down.
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
      droppedOnFullStderr++;
      scheduleDropNote();
    }
    return false;
  }
}

// The count goes out at most once a second (a nearly full pipe must not get a note per
// line), after a line got through or from a timer, so it is never lost while the thread runs.
let lastDropNote = -Infinity;
let dropNoteTimer: NodeJS.Timeout | null = null;

function scheduleDropNote(): void {
  if (dropNoteTimer !== null) return;
  dropNoteTimer = setTimeout(() => {
    dropNoteTimer = null;
    writeDropNote();
  }, 1000);
  dropNoteTimer.unref?.();
}

function writeDropNote(): void {
  if (droppedOnFullStderr === 0) return;
  const now = Date.now();
  if (now - lastDropNote < 1000) return scheduleDropNote();
  const n = droppedOnFullStderr;
  const time = new Date(now).toISOString();
  const what = `${n} log lines of this thread were dropped: stderr was full`;
  const note = Atomics.load(cell, FORMAT_SLOT) === 1 ? jsonLine(time, 'warn', 'log', what) : `${time} WARN  log: ${what}\n`;
  if (!write(note)) return;
  droppedOnFullStderr -= n;
  lastDropNote = now;
}

export function createLogger(scope: string): Logger {
  const emit = (level: LogLevel, msg: string) => {
    if (rank[level] > rank[currentLevel()]) return;
    const time = new Date().toISOString();
    let line: string;
    if (Atomics.load(cell, FORMAT_SLOT) === 1) line = jsonLine(time, level, scope, msg);
    else {
      const head = `${time} ${level.toUpperCase().padEnd(5)} ${escapeControls(scope)}: `;
      line = `${head}${cutToBytes(escapeControls(msg), MAX_LINE - Buffer.byteLength(head) - 1)}\n`;
    }
    if (sink) sink(line);
    if (write(line) && droppedOnFullStderr > 0) writeDropNote();
  };
  return {
    error: (m) => emit('error', m),
    warn: (m) => emit('warn', m),
    info: (m) => emit('info', m),
    debug: (m) => emit('debug', m),
    enabled: (l) => rank[l] <= rank[currentLevel()],
    child: (s) => createLogger(`${scope}/${s}`),
  };
}

/** An Error's message, or a string for anything else thrown. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
