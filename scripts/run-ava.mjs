// Runs ava with its usual output, then prints one plain summary line ("ava: N passed, N failed")
// that CI and readers can take in without knowing ava's format. Exit status is ava's, or 1 when
// a test was skipped (below).
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
  const skipped = count(/^ *(\d+) tests? skipped/m);
  const todo = count(/^ *(\d+) tests? todo/m);
  const known = count(/^ *(\d+) known failures?/m);
  const also = [skipped && `${skipped} skipped`, todo && `${todo} todo`, known && `${known} known failure(s)`].filter(Boolean);
  process.stdout.write(`ava: ${passed} passed, ${count(/^ *(\d+) tests? failed/m)} failed${also.length ? `, ${also.join(', ')}` : ''}\n`);
  // A test that did not run is a test that did not pass (the developers' guide: skipped tests
  // are failures in CI): a guest test skipped because QEMU is missing, or a migration test because
  // dist/ was not built, would otherwise leave the run green while checking nothing. Only the
  // explicit VHOST_WASM_SKIP_GUEST=1 of a developer without QEMU lets skips through.
  if ((skipped || todo) && process.env.VHOST_WASM_SKIP_GUEST !== '1') {
    process.stderr.write(`ava: ${also.join(', ')}: every test must run (install what the skipped tests need with scripts/install-deps.sh, or set VHOST_WASM_SKIP_GUEST=1 to run without guests on purpose)\n`);
    process.exit(1);
  }
  process.exit(code ?? (signal ? 1 : 0));
});
