// The virtio-rng plugin (dist/plugins/rng.wasm) serving a real guest through QEMU 7.2's
// vhost-user-rng-pci (issue "plugins"): the guest's virtio_rng driver becomes the kernel's
// hardware RNG and reads from /dev/hwrng come from the WebAssembly plugin, which gets its
// bytes from the host's --entropy capability. A second QEMU then connects to the same host.

import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { bootGuest, hasQemu, type BootResult } from './guest/qemu.ts';
import { eventually, REPO, startHost, type HostProcess } from './helpers/host-process.ts';

const RNG_PLUGIN = join(REPO, 'dist', 'plugins', 'rng.wasm');
const skip = process.env.VHOST_WASM_SKIP_GUEST === '1' || !hasQemu();
const guestTest = skip ? test.serial.skip : test.serial;

const BLOCK = 4096;
const BLOCKS = 16;
const BYTES = BLOCK * BLOCKS; // 64 KiB per read

// Two reads, each reported as: byte count, distinct byte values, the most frequent value's
// count, md5. `iflag=fullblock` makes dd keep reading until each 4 KiB block is full, so a
// device that hands out fewer bytes shows up as a short count or a timeout, never as padding.
const GUEST_SCRIPT = [
  'set -e',
  'echo "rng $(cat /sys/class/misc/hw_random/rng_current)"',
  'for n in a b; do',
  `  dd if=/dev/hwrng of=/tmp/$n bs=${BLOCK} count=${BLOCKS} iflag=fullblock 2>/dev/null`,
  '  bytes=$(wc -c < /tmp/$n)',
  "  hexdump -v -e '1/1 \"%02x\\n\"' /tmp/$n | sort | uniq -c > /tmp/$n.hist",
  '  distinct=$(wc -l < /tmp/$n.hist)',
  "  top=$(sort -n /tmp/$n.hist | tail -1 | awk '{print $1}')",
  '  echo "read $n bytes=$bytes distinct=$distinct top=$top md5=$(md5sum < /tmp/$n | cut -d" " -f1)"',
  'done',
].join('\n');

interface Read {
  bytes: number;
  distinct: number;
  top: number;
  md5: string;
}

function explain(r: BootResult, host: HostProcess): string {
  return `exit=${r.exitCode} timedOut=${r.timedOut} qemu=${r.qemuExitCode} ${r.durationMs} ms\n` +
    `--- console ---\n${r.output}\n--- qemu stderr ---\n${r.qemuStderr}\n--- host log ---\n${host.log()}`;
}

/** Boots a guest against the host, checks what it read, returns the two reads. */
async function bootAndRead(t: ExecutionContext, host: HostProcess, which: string): Promise<Read[]> {
  const r = await bootGuest({
    timeoutMs: 60_000,
    qemuArgs: ['-chardev', `socket,id=rng0,path=${host.socketPath}`, '-device', 'vhost-user-rng-pci,chardev=rng0'],
    script: GUEST_SCRIPT,
  });
  t.log(`${which} QEMU: boot + 2 x ${BYTES / 1024} KiB from /dev/hwrng + poweroff in ${r.durationMs} ms`);
  t.is(r.exitCode, 0, explain(r, host));
  const lines = r.scriptOutput.trimEnd().split('\n');
  t.is(lines[0], 'rng virtio_rng.0', `the guest's hwrng is not the virtio device\n${explain(r, host)}`);
  const reads = lines.slice(1).map((l) => {
    const m = /^read [ab] bytes=(\d+) distinct=(\d+) top=(\d+) md5=([0-9a-f]{32})$/.exec(l);
    if (!m) throw new Error(`unexpected guest output line "${l}"\n${explain(r, host)}`);
    return { bytes: Number(m[1]), distinct: Number(m[2]), top: Number(m[3]), md5: m[4] };
  });
  t.is(reads.length, 2, explain(r, host));
  for (const x of reads) {
    t.is(x.bytes, BYTES, 'the guest did not get exactly the bytes it asked for');
    // Uniform bytes: every one of the 256 values appears (expected count 256 each); a stuck,
    // zeroed or patterned device fails these.
    t.true(x.distinct > 200, `only ${x.distinct} distinct byte values in ${BYTES} bytes`);
    t.true(x.top < 400, `one byte value appears ${x.top} times in ${BYTES} bytes (expected ~256)`);
  }
  t.not(reads[0].md5, reads[1].md5, 'two reads returned the same bytes');
  return reads;
}

guestTest('a guest reads random bytes from /dev/hwrng served by the rng plugin, and a second QEMU gets fresh ones', async (t) => {
  if (!existsSync(RNG_PLUGIN)) return t.fail(`${RNG_PLUGIN} is missing: run \`node build.mjs --only plugins\``);
  const host = await startHost(['--socket-path', '{socket}', '--plugin', RNG_PLUGIN, '--entropy']);
  try {
    const baselineFds = host.fdCount();
    const first = await bootAndRead(t, host, '1st');
    await host.waitForLog(/front-end disconnected/);
    t.true(await eventually(() => host.memfdMappings() === 0), `memfd mappings left: ${host.memfdMappings()}`);
    t.true(await eventually(() => host.fdCount() === baselineFds), `fds ${host.fdCount()} vs baseline ${baselineFds}`);

    const second = await bootAndRead(t, host, '2nd');
    t.true(await eventually(() => host.log().split('front-end disconnected').length === 3), host.log());
    const all = [...first, ...second].map((x) => x.md5);
    t.is(new Set(all).size, 4, `repeated bytes across connections: ${all.join(' ')}`);
    // The plugin was really started for each guest, and nothing went wrong on the host's side.
    t.is(host.log().split('virtio-rng activated').length - 1, 2, host.log());
    t.notRegex(host.log(), / (ERROR|WARN) /, host.log());
    // QEMU's memory-backend-memfd seals guest RAM against shrinking (docs/security.md,
    // "Front-ends"): the size check at SET_MEM_TABLE holds for the mapping's life.
    t.notRegex(host.log(), /not sealed against shrinking/, host.log());
    t.true(await eventually(() => host.memfdMappings() === 0), `memfd mappings left: ${host.memfdMappings()}`);
    t.true(await eventually(() => host.fdCount() === baselineFds), `fds ${host.fdCount()} vs baseline ${baselineFds}`);
  } finally {
    await host.stop();
  }
});
