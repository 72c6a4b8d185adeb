// The fuzz loop: generate case n of a seed, run it against the host, check the oracles, and on
// a failure shrink the case (dropping ops while the same oracle still fails on a fresh host)
// and save it as a reproducer under test/fuzz/corpus/.

import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { REPO } from '../helpers/host-process.ts';
import { CASE_FORMAT, classesOf, type Op, type Finding, type FuzzCase, type Reproducer } from './case.ts';
import { executeCase, releaseLingering } from './execute.ts';
import { CLASSES, generateCase } from './generate.ts';
import { FuzzTarget } from './target.ts';
import { KNOWN_OPEN } from './known-open.ts';

/** Oracles about the host as a whole (any message sequence may trip them). */
const HOST_WIDE = new Set(['host-died', 'bystander-unserved', 'target-unserved', 'stack-trace', 'fd-leak']);

export const CORPUS_DIR = join(REPO, 'test', 'fuzz', 'corpus');

export interface FuzzOptions {
  seed: string;
  /** Stop after this many cases... */
  cases?: number;
  /** ...or after this many seconds, whichever comes first. */
  seconds?: number;
  exclude?: readonly string[];
  /** Shrink failing cases before saving them (restarts the host per attempt). */
  minimize?: boolean;
  /** Where reproducers go (default test/fuzz/corpus); null: do not save. */
  saveDir?: string | null;
  /** Stop at the first finding. */
  stopOnFinding?: boolean;
  log?: (line: string) => void;
}

export interface FuzzReport {
  cases: number;
  messages: number;
  ringOps: number;
  requests: number;
  readsVerified: number;
  connections: number;
  logLines: number;
  findings: { finding: Finding; case: FuzzCase; saved: string | null }[];
  seconds: number;
}

/** Runs one case on `t` and then the host-wide oracles; the first failure, or null. */
export async function runOne(t: FuzzTarget, c: FuzzCase): Promise<{ finding: Finding | null; stats: Awaited<ReturnType<typeof executeCase>>['stats'] }> {
  let r;
  try {
    r = await executeCase(c, t.targetSocket);
  } catch (e) {
    // The executor itself could not go on (e.g. connect refused): the host's fault if it is dead.
    const host = await t.check();
    releaseLingering();
    if (host) return { finding: host, stats: { messages: 0, requests: 0, readsVerified: 0, ringOps: 0 } };
    throw e;
  }
  const host = await t.check();
  releaseLingering();
  return { finding: host ?? r.finding, stats: r.stats };
}

function unknownClasses(exclude: readonly string[]): string[] {
  return exclude.filter((c) => !(CLASSES as readonly string[]).includes(c));
}

export async function fuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const bad = unknownClasses(opts.exclude ?? []);
  if (bad.length > 0) throw new Error(`unknown mutation class(es) to exclude: ${bad.join(', ')}; known: ${CLASSES.join(', ')}`);
  const exclude = new Set(opts.exclude ?? []);
  const log = opts.log ?? (() => {});
  const started = Date.now();
  const report: FuzzReport = { cases: 0, messages: 0, ringOps: 0, requests: 0, readsVerified: 0, connections: 0, logLines: 0, findings: [], seconds: 0 };
  let t = await FuzzTarget.start();
  const first = await t.check();
  if (first) throw new Error(`the fuzz host fails its oracles before any case: ${first.oracle}: ${first.detail}`);
  try {
    for (let n = 0; ; n++) {
      if (opts.cases !== undefined && n >= opts.cases) break;
      if (opts.seconds !== undefined && Date.now() - started > opts.seconds * 1000) break;
      const c = generateCase(opts.seed, n, { exclude });
      const { finding, stats } = await runOne(t, c);
      report.cases++;
      report.messages += stats.messages;
      report.ringOps += stats.ringOps;
      report.requests += stats.requests;
      report.readsVerified += stats.readsVerified;
      report.connections += 3; // the case, and one probe per device
      if (n % 50 === 0) log(`case ${n}: ${report.messages} messages, ${report.requests} requests, ${report.readsVerified} reads verified`);
      if (finding === null) continue;
      const tailLog = t.recentLog();
      report.logLines += t.lines;
      await t.stop();
      log(`case ${c.seed} [${c.classes.join(',')}]: ${finding.oracle}: ${finding.detail}`);
      const dir = opts.saveDir === null ? null : (opts.saveDir ?? CORPUS_DIR);
      if (dir !== null && alreadySaved(dir, c, finding)) {
        log(`  (a reproducer for ${finding.oracle} with these classes is already in ${relative(REPO, dir)}; not saved again)`);
        report.findings.push({ finding, case: c, saved: null });
        if (opts.stopOnFinding) return report;
        t = await FuzzTarget.start();
        if (await t.check()) throw new Error('a fresh fuzz host fails its oracles');
        continue;
      }
      let min = c;
      if (opts.minimize) min = await minimize(c, finding, log);
      const saved = dir === null ? null : save(min, finding, tailLog, dir);
      if (saved) log(`saved ${relative(REPO, saved)} (${min.ops.length} ops); replay: node --import tsx bench/fuzz.ts --replay ${relative(REPO, saved)}`);
      report.findings.push({ finding, case: min, saved });
      if (opts.stopOnFinding) return report;
      t = await FuzzTarget.start();
      const again = await t.check();
      if (again) throw new Error(`a fresh fuzz host fails its oracles: ${again.oracle}: ${again.detail}`);
    }
    report.logLines += t.lines;
  } finally {
    await t.stop();
    report.seconds = Math.round((Date.now() - started) / 1000);
  }
  return report;
}

/** Replays a case on a fresh host; the finding, or null when every oracle held. */
export async function replay(c: FuzzCase): Promise<{ finding: Finding | null; log: string[] }> {
  if (c.format !== CASE_FORMAT) throw new Error(`case format ${c.format} is not ${CASE_FORMAT}`);
  const t = await FuzzTarget.start();
  try {
    const pre = await t.check();
    if (pre) throw new Error(`the fuzz host fails its oracles before the case: ${pre.oracle}: ${pre.detail}`);
    const { finding } = await runOne(t, c);
    return { finding, log: t.recentLog() };
  } finally {
    await t.stop();
  }
}

/**
 * Drops chunks of ops (halves, quarters, ... single ops) while the same oracle still fails.
 * Bounded to `budget` attempts. A host is reused while attempts pass (it is still healthy) and
 * replaced after one that reproduced.
 */
export async function minimize(c: FuzzCase, finding: Finding, log: (l: string) => void = () => {}, budget = 60): Promise<FuzzCase> {
  let best = c;
  let attempts = 0;
  let t: FuzzTarget | null = null;
  const fails = async (candidate: FuzzCase): Promise<boolean> => {
    if (t === null) {
      t = await FuzzTarget.start();
      if (await t.check()) throw new Error('a fresh fuzz host fails its oracles');
    }
    const { finding: f } = await runOne(t, candidate);
    if (f === null) return false;
    await t.stop();
    t = null;
    return f.oracle === finding.oracle;
  };
  try {
    // An oracle inside the case (valid requests answered, data, guard) judges the session the
    // QEMU-like messages set up: only mutated messages and ring/blk ops may go, or shrinking
    // would turn "a valid session failed" into "no session at all".
    const keepBase = !HOST_WIDE.has(finding.oracle);
    const removable = (op: Op) => !keepBase || op.t !== 'msg' || (op.cls?.length ?? 0) > 0;
    let chunk = Math.max(1, Math.floor(best.ops.length / 2));
    while (chunk >= 1 && attempts < budget) {
      let progressed = false;
      for (let i = 0; i < best.ops.length && attempts < budget; ) {
        const cut = best.ops.slice(i, i + chunk);
        const ops = [...best.ops.slice(0, i), ...best.ops.slice(i + chunk)];
        if (ops.length === 0 || !cut.every(removable)) {
          i += chunk;
          continue;
        }
        attempts++;
        const candidate = { ...best, ops, classes: classesOf(ops) };
        if (await fails(candidate)) {
          best = candidate;
          progressed = true;
        } else {
          i += chunk;
        }
      }
      if (!progressed) chunk = Math.floor(chunk / 2);
    }
  } finally {
    if (t !== null) await (t as FuzzTarget).stop();
  }
  // The shrunk case must still fail on its own, on a fresh host.
  if (best !== c && (await replay(best)).finding?.oracle !== finding.oracle) best = c;
  log(`minimized ${c.seed}: ${c.ops.length} -> ${best.ops.length} ops in ${attempts} attempts`);
  return best;
}

const fileTag = (c: FuzzCase, f: Finding) => `${f.oracle}--${(c.classes.length > 0 ? c.classes.join('+') : 'valid').replace(/[^a-z0-9+-]/g, '')}--`;

/**
 * Covered: a saved reproducer with the same oracle whose classes are a subset of this case's,
 * or that shares a KNOWN_OPEN class with it (a known bug met again beside other mutations).
 */
function alreadySaved(dir: string, c: FuzzCase, f: Finding): boolean {
  if (!existsSync(dir)) return false;
  const mine = new Set(c.classes.length > 0 ? c.classes : ['valid']);
  return readdirSync(dir).some((n) => {
    const [oracle, tag] = n.split('--');
    if (oracle !== f.oracle || tag === undefined) return false;
    const theirs = tag.split('+');
    return theirs.every((k) => mine.has(k)) || theirs.some((k) => mine.has(k) && KNOWN_OPEN.includes(k));
  });
}

export function save(c: FuzzCase, finding: Finding, log: string[], dir: string): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${fileTag(c, finding)}${c.seed.replace(/[^A-Za-z0-9-]/g, '_')}.json`);
  const rep: Reproducer = { case: c, finding, log, replay: `node --import tsx bench/fuzz.ts --replay ${relative(REPO, path)}` };
  writeFileSync(path, JSON.stringify(rep, null, 1) + '\n');
  return path;
}
