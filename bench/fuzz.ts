// The long fuzz run (and replays): a structure-aware vhost-user message and ring fuzzer
// against the real host process. See docs/security.md, "Fuzzing".
//
//   node --import tsx bench/fuzz.ts --seconds 1800 --seed 7          # hunt, every class
//   node --import tsx bench/fuzz.ts --seconds 300 --skip-known-open  # what the suite runs, longer
//   node --import tsx bench/fuzz.ts --replay test/fuzz/corpus/FILE.json
//   node --import tsx bench/fuzz.ts --print-case 7:12                 # show a generated case
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fuzz, replay, CORPUS_DIR } from '../test/fuzz/fuzzer.ts';
import { generateCase } from '../test/fuzz/generate.ts';
import { KNOWN_OPEN } from '../test/fuzz/known-open.ts';
import type { Reproducer } from '../test/fuzz/case.ts';

const { values: v } = parseArgs({
  options: {
    seconds: { type: 'string' },
    cases: { type: 'string' },
    seed: { type: 'string', default: '1' },
    exclude: { type: 'string' },
    'skip-known-open': { type: 'boolean', default: false },
    'no-minimize': { type: 'boolean', default: false },
    out: { type: 'string' },
    'no-save': { type: 'boolean', default: false },
    'stop-on-finding': { type: 'boolean', default: false },
    replay: { type: 'string' },
    'print-case': { type: 'string' },
  },
});
const say = (l: string) => process.stderr.write(`${new Date().toISOString()} fuzz: ${l}\n`);

if (v['print-case']) {
  const at = v['print-case'].lastIndexOf(':');
  const c = generateCase(v['print-case'].slice(0, at), Number(v['print-case'].slice(at + 1)), { exclude: new Set(v['skip-known-open'] ? KNOWN_OPEN : []) });
  process.stdout.write(JSON.stringify(c, null, 1) + '\n');
  process.exit(0);
}

if (v.replay) {
  const rep = JSON.parse(readFileSync(v.replay, 'utf8')) as Reproducer;
  say(`replaying ${rep.case.seed} [${rep.case.classes.join(',')}], ${rep.case.ops.length} ops; saved finding: ${rep.finding.oracle}: ${rep.finding.detail}`);
  const { finding, log } = await replay(rep.case);
  if (finding === null) {
    say('every oracle held: the finding no longer reproduces');
    process.exit(0);
  }
  say(`reproduced: ${finding.oracle}: ${finding.detail}`);
  process.stderr.write(log.map((l) => `  host: ${l}\n`).join(''));
  process.exit(1);
}

const exclude = [...(v['skip-known-open'] ? KNOWN_OPEN : []), ...(v.exclude ? v.exclude.split(',').filter(Boolean) : [])];
const seconds = v.seconds !== undefined ? Number(v.seconds) : v.cases !== undefined ? undefined : 60;
const r = await fuzz({
  seed: v.seed!,
  seconds,
  cases: v.cases !== undefined ? Number(v.cases) : undefined,
  exclude,
  minimize: !v['no-minimize'],
  saveDir: v['no-save'] ? null : (v.out ?? CORPUS_DIR),
  stopOnFinding: v['stop-on-finding'],
  log: say,
});
say(`${r.cases} cases in ${r.seconds} s: ${r.messages} messages, ${r.ringOps} hostile ring ops, ${r.requests} valid requests (${r.readsVerified} sector reads verified), ${r.connections} connections, ${r.logLines} host log lines`);
say(`excluded classes: ${exclude.length > 0 ? exclude.join(', ') : 'none'}`);
for (const f of r.findings) say(`finding: ${f.finding.oracle} [${f.case.classes.join(',')}] ${f.finding.detail}${f.saved ? ` -> ${f.saved}` : ''}`);
process.exit(r.findings.length > 0 ? 1 : 0);
