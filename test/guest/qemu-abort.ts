// QEMU itself can abort while a guest boots, in code no back-end reaches: CI saw QEMU 10.0.13
// (Debian trixie) with 2 vCPUs under TCG die in the firmware-to-kernel phase with
//   hw/pci/msix.c:228: msix_table_mmio_write: Assertion `addr + size <= ...' failed.
// The MSI-X table is QEMU's own emulation of the PCI function; a vhost-user back-end never sees
// those writes (only the guest's CPU makes them), and the guest script had not started. Such a
// boot says nothing about our host, so the harness boots again, once, and says so in the result;
// a second abort, or one after the guest script began, is reported as the failure it is.
import { START_MARKER } from './protocol.ts';

/** An assert() in QEMU's own source, as glibc prints it: `qemu-system-x86_64: FILE:LINE: FUNC: Assertion `...' failed.` */
const QEMU_ASSERT = /^qemu-system-[\w-]+: ([^\n:]+?\.c):\d+: [^\n]*Assertion `[^\n]*' failed\.$/m;
/**
 * Source files whose assertions a back-end's replies can reach (virtio and vhost devices, the
 * vhost-user protocol, the chardev the socket is): such an abort may be our host's doing and is
 * never retried.
 */
const REACHABLE_BY_BACKEND = /virtio|vhost|chardev/;

/**
 * The assertion line when QEMU aborted in its own code, in a file no back-end reaches, before
 * the guest script started (the console has no start marker), else undefined: only then is a
 * boot worth making again.
 */
export function qemuAbortBeforeScript(stderr: string, console: string): string | undefined {
  if (console.includes(`\n${START_MARKER}\n`)) return undefined;
  const m = QEMU_ASSERT.exec(stderr);
  if (m === null || REACHABLE_BY_BACKEND.test(m[1])) return undefined;
  return m[0];
}

/**
 * The harness's one retry: runs `attempt`; when `abortOf` finds QEMU's own abort before the
 * script in its result, says so on stderr (`what` names the run) and runs it once more, the
 * first abort recorded in the second result's `qemuAbortRetried`.
 */
export async function onceMoreAfterQemuAbort<R extends { qemuAbortRetried?: string }>(
  what: string,
  attempt: () => Promise<R>,
  abortOf: (r: R) => string | undefined,
): Promise<R> {
  const first = await attempt();
  const abort = abortOf(first);
  if (abort === undefined) return first;
  process.stderr.write(`${what}: QEMU aborted in its own code before the guest script began (${abort}); running it once more\n`);
  return { ...(await attempt()), qemuAbortRetried: abort };
}
