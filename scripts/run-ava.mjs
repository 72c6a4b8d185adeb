// Runs ava with its usual output, then prints one plain summary line ("ava: N passed, N failed")
// that CI and readers can take in without knowing ava's format. Exit status is ava's.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// ava's package exports do not include its CLI entry, so it is found by path (its `bin`).
const ava = fileURLToPath(new URL('../node_modules/ava/entrypoints/cli.mjs', import.meta.url));
const child = spawn(process.execPath, [ava, ...process.argv.slice(2)], { stdio: ['inherit', 'pipe', 'pipe'] });
let out = '';
for (const [from, to] of [[child.stdout, process.stdout], [child.stderr, process.stderr]]) {
  from.on('data', (d) => {
    out += d;
    to.write(d);
  });
}
child.on('close', (code, signal) => {
  const count = (re) => Number(re.exec(out)?.[1] ?? 0);
  // ava prints "N tests passed" only when nothing failed; otherwise count its per-test ticks.
  const passed = /^ *\d+ tests? passed/m.test(out) ? count(/^ *(\d+) tests? passed/m) : (out.match(/^ *✔ /gm) ?? []).length;
  process.stdout.write(`ava: ${passed} passed, ${count(/^ *(\d+) tests? failed/m)} failed\n`);
  process.exit(code ?? (signal ? 1 : 0));
});
