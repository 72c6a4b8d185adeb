// Runs a shell script in the test guest from the command line, streaming the
// console, for poking at a device by hand:
//   npx tsx scripts/guest-run.ts [--timeout MS] [--mem MIB] 'SCRIPT' [-- QEMU ARGS...]
// Exits with the guest script's status (124 on timeout, 125 when none came back).

import { bootGuest } from '../test/guest/qemu.ts';

const argv = process.argv.slice(2);
const dashdash = argv.indexOf('--');
const own = dashdash >= 0 ? argv.slice(0, dashdash) : argv;
const qemuArgs = dashdash >= 0 ? argv.slice(dashdash + 1) : [];
let timeoutMs = 60_000;
let memMiB = 256;
const rest: string[] = [];
for (let i = 0; i < own.length; i++) {
  if (own[i] === '--timeout') timeoutMs = Number(own[++i]);
  else if (own[i] === '--mem') memMiB = Number(own[++i]);
  else rest.push(own[i]);
}
if (rest.length !== 1) {
  console.error("usage: guest-run.ts [--timeout MS] [--mem MIB] 'SCRIPT' [-- QEMU ARGS...]");
  process.exit(2);
}

const r = await bootGuest({ script: rest[0], qemuArgs, timeoutMs, memMiB, onOutput: (c) => process.stdout.write(c) });
if (r.qemuStderr) process.stderr.write(r.qemuStderr);
console.error(`[guest-run] exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms`);
process.exit(r.timedOut ? 124 : (r.exitCode ?? 125));
