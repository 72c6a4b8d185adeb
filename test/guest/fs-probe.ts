// The guest's fs probe (test/fixtures/guest/fs-probe.c), built static for the busybox guest;
// put it in the guest with `files: { 'bin/fs-probe': compileFsProbe() }`.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from '../helpers/host-process.ts';

const PROBE_SRC = join(REPO, 'test', 'fixtures', 'guest', 'fs-probe.c');

/** The probe's static binary, compiled now. */
export function compileFsProbe(): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), 'fs-probe-'));
  try {
    const bin = join(dir, 'fs-probe');
    execFileSync('gcc', ['-static', '-O2', '-o', bin, PROBE_SRC], { stdio: 'pipe' });
    return readFileSync(bin);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
