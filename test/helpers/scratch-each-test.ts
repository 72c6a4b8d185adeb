// A fresh directory for each test of a file, and the processes each test starts: after the
// test (passed or failed) any of them still running is SIGKILLed, then the directory goes.
// For the take-over and handover tests, whose tests each start several hosts or daemons and
// may leave one behind when an assertion fails half-way.
import type { TestFn } from 'ava';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Keeps `p` to be killed after the test if it still runs; returns it. */
export type Keep = <P extends { child: ChildProcess }>(p: P) => P;

/**
 * Registers the beforeEach/afterEach hooks. `onDir` gets each test's directory (a mkdtemp
 * under the system temporary directory, named from `prefix`) before the test starts.
 */
export function scratchEachTest(test: TestFn, prefix: string, onDir: (dir: string) => void): Keep {
  let dir = '';
  const kept: { child: ChildProcess }[] = [];
  test.beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), prefix));
    onDir(dir);
  });
  test.afterEach.always(() => {
    for (const p of kept.splice(0)) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  return (p) => {
    kept.push(p);
    return p;
  };
}
