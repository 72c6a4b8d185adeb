// Where one thread of our host spends its CPU, by stage, from a `perf record -g` profile (CPU
// samples, unlike --cpu-prof's wall-time ones: a blocked or preempted thread does not count).
// Each sample goes to the innermost frame that belongs to a stage; JS frames (named by
// --perf-basic-prof) are mapped to their source file through dist/*.mjs.map; a sample in the
// kernel under a call made by host/fs counts as the share's syscalls.
//
//   perf record -F 4999 -g -o fs.data -- node --import tsx bench/fs-host.ts --only getattr \
//     --count 20000 --rounds 2 --host-flags=--perf-basic-prof        (prints the host's pid)
//   perf script -i fs.data -F pid,tid,ip,sym > fs.txt
//   node --import tsx bench/perf-stages.ts fs.txt PID [US_PER_REQUEST]
//
// PID: the host process (its busiest thread, the device worker, is taken) or PID/TID.
// US_PER_REQUEST (the bench's CPU per request): each stage's share is also given in µs.
import { existsSync, readFileSync } from 'node:fs';
import { SourceMap } from 'node:module';
import { join } from 'node:path';
import { REPO } from '../test/helpers/host-process.ts';

const [file, who, usArg] = process.argv.slice(2);
if (!file || !who) {
  console.error('usage: node --import tsx bench/perf-stages.ts PERF_SCRIPT_OUTPUT PID[/TID] [US_PER_REQUEST]');
  process.exit(2);
}
const usPerRequest = usArg === undefined ? null : Number(usArg);

interface JsFrame {
  fn: string;
  src: string;
}
const maps = new Map<string, SourceMap | null>();
function jsFrame(sym: string): JsFrame | null {
  const m = /^JS:[*^~+]?(\S*) (?:file:\/\/\S*\/)?([^/\s]+\.mjs):(\d+):(\d+)/.exec(sym);
  if (!m) return sym.startsWith('JS:') ? { fn: sym, src: sym } : null;
  if (!maps.has(m[2])) {
    const mapFile = join(REPO, 'dist', `${m[2]}.map`);
    maps.set(m[2], existsSync(mapFile) ? new SourceMap(JSON.parse(readFileSync(mapFile, 'utf8'))) : null);
  }
  const e = maps.get(m[2])?.findEntry(Number(m[3]) - 1, Number(m[4]) - 1) as { originalSource?: string } | undefined;
  return { fn: m[1], src: (e?.originalSource ?? m[2]).replace(/^.*?\/(host|plugins|node_modules|test|bench)\//, '$1/') };
}

const STAGES: [stage: string, test: (sym: string, js: JsFrame | null) => boolean][] = [
  ['io syscalls (io_uring submit/reap, preadv)', (s) => /^(uring_|preadv64v2|pwritev64v2)/.test(s)],
  ['notify: the eventfd write that wakes the front-end', (s, j) => (j !== null && /^(notifyTouched|notify|signalCall|leaveDevice)$/.test(j.fn) && /host\/device\//.test(j.src)) || s === '__GI___libc_write'],
  ['GC', (s) => /Heap::|Scavenge|MarkCompact|GarbageCollect/.test(s)],
  ['lift/lower of handle (direct-handle.ts)', (_s, j) => j !== null && /direct-handle\.ts/.test(j.src)],
  ['share JS + addon (host/fs)', (_s, j) => j !== null && /host\/fs\//.test(j.src)],
  ['wasm (the plugin)', (s) => /wasm-function/.test(s)],
  ['jco glue + plugin seam (host/plugin)', (s, j) => (j !== null && /host\/plugin\//.test(j.src)) || /vhost-plugin-/.test(s)],
  ['answer check', (_s, j) => j !== null && /answer-check/.test(j.src)],
  ['ring pop/walk, used update', (_s, j) => j !== null && /host\/(virtqueue|memory)\//.test(j.src)],
  ['runner (host/device)', (_s, j) => j !== null && /host\/device\//.test(j.src)],
  ['metrics', (_s, j) => j !== null && /host\/metrics\//.test(j.src)],
  ['event loop (epoll, uv, napi callback)', (s) => /epoll_pwait|uv__io_poll|uv_run/.test(s)],
];
const SHARE_SYSCALLS = "share's syscalls, kernel side";

interface Sample {
  who: string;
  stack: string[];
}
const samples: Sample[] = [];
let cur: Sample | null = null;
for (const line of readFileSync(file, 'utf8').split('\n')) {
  if (!line.trim()) {
    if (cur) samples.push(cur);
    cur = null;
  } else if (!/^\s/.test(line) || /^\s*\d+\/\d+\s*$/.test(line)) {
    // A sample's pid/tid line (this perf pads it with a leading space); its frames are indented.
    cur = { who: line.trim(), stack: [] };
  } else if (cur) {
    cur.stack.push(line.trim().split(' ').slice(1).join(' ').replace(/\+0x[0-9a-f]+$/, ''));
  }
}
if (cur) samples.push(cur);
const perThread = new Map<string, number>();
for (const s of samples) perThread.set(s.who, (perThread.get(s.who) ?? 0) + 1);
const candidates = [...perThread].filter(([t]) => t === who || t.startsWith(`${who}/`)).sort((a, b) => b[1] - a[1]);
if (candidates.length === 0) throw new Error(`no samples of ${who} in ${file} (was it recorded with -F pid,tid,ip,sym?)`);
const thread = candidates[0][0];

const byStage = new Map<string, number>();
let n = 0;
for (const s of samples) {
  if (s.who !== thread) continue;
  n++;
  let stage = 'other';
  const firstJs = s.stack.find((f) => f.startsWith('JS:'));
  const fj = firstJs ? jsFrame(firstJs) : null;
  if (s.stack.some((f) => f.startsWith('entry_SYSCALL_64')) && fj && /host\/fs\//.test(fj.src)) stage = SHARE_SYSCALLS;
  else {
    for (const f of s.stack) {
      const hit = STAGES.find(([, t]) => t(f, f.startsWith('JS:') ? jsFrame(f) : null));
      if (hit) {
        stage = hit[0];
        break;
      }
    }
  }
  byStage.set(stage, (byStage.get(stage) ?? 0) + 1);
}
const total = [...perThread].filter(([t]) => t.split('/')[0] === thread.split('/')[0]).reduce((a, [, c]) => a + c, 0);
console.log(`thread ${thread}: ${n} samples, ${((100 * n) / total).toFixed(0)}% of its process's`);
for (const [stage, c] of [...byStage].sort((a, b) => b[1] - a[1])) {
  const share = c / n;
  console.log(`${(100 * share).toFixed(1).padStart(5)}%${usPerRequest === null ? '' : `  ${(share * usPerRequest).toFixed(2).padStart(6)} us`}  ${stage}`);
}
