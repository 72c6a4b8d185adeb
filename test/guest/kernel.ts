// Locates the distribution kernel and turns its bzImage into an uncompressed
// ELF vmlinux. QEMU boots such an ELF through its PVH entry note, which skips
// the in-guest xz decompression that costs seconds under TCG.

import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';

export interface HostKernel {
  version: string;
  bzImage: string;
  modulesDir: string;
}

function compareVersions(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/**
 * The newest /boot/vmlinuz-* that has its modules installed. The running
 * kernel is not used: inside containers it is the host's, without modules here.
 * VHOST_WASM_GUEST_KERNEL=<version> picks another one.
 */
export function findHostKernel(): HostKernel {
  const wanted = process.env.VHOST_WASM_GUEST_KERNEL;
  const versions = (existsSync('/boot') ? readdirSync('/boot') : [])
    .filter((f) => f.startsWith('vmlinuz-'))
    .map((f) => f.slice('vmlinuz-'.length))
    .filter((v) => existsSync(`/lib/modules/${v}/modules.order`))
    .filter((v) => !wanted || v === wanted)
    .sort(compareVersions);
  const version = versions.at(-1);
  if (!version) {
    throw new Error(
      `no /boot/vmlinuz-* with modules under /lib/modules${wanted ? ` for ${wanted}` : ''}: ` +
        'apt-get install linux-image-amd64',
    );
  }
  return { version, bzImage: `/boot/vmlinuz-${version}`, modulesDir: `/lib/modules/${version}` };
}

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/**
 * Decompresses the xz payload of a bzImage. The payload is followed by the
 * decompressor's trailing data, hence --single-stream; the first magic that
 * decodes to an ELF wins, in case the setup code happens to contain the bytes.
 */
export function extractVmlinux(bzImage: string): Buffer {
  const image = readFileSync(bzImage);
  // Seen once on a cold cache with the whole suite starting at once: every candidate failed.
  // Retry, and keep what xz said so a persistent failure explains itself.
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    for (let at = image.indexOf(XZ_MAGIC); at >= 0; at = image.indexOf(XZ_MAGIC, at + 1)) {
      let out: Buffer;
      try {
        out = execFileSync('xz', ['-dc', '--single-stream'], {
          input: image.subarray(at),
          maxBuffer: 1 << 30,
          stdio: ['pipe', 'pipe', 'pipe'],
        });
      } catch (e) {
        const err = e as { message?: string; stderr?: Buffer };
        lastError = `${err.message ?? String(e)} ${err.stderr?.toString().trim() ?? ''}`.trim();
        continue;
      }
      if (out.subarray(0, 4).equals(ELF_MAGIC)) return out;
    }
  }
  throw new Error(
    `${bzImage}: no xz-compressed ELF payload found (is xz-utils installed, is the kernel xz-compressed?)` +
      (lastError ? `; last xz error: ${lastError}` : ''),
  );
}

/** True when the ELF carries the Xen PVH entry note (type 18) that QEMU's -kernel needs for an ELF. */
export function hasPvhNote(vmlinux: Buffer): boolean {
  const phoff = Number(vmlinux.readBigUInt64LE(0x20));
  const phentsize = vmlinux.readUInt16LE(0x36);
  const phnum = vmlinux.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (vmlinux.readUInt32LE(ph) !== 4 /* PT_NOTE */) continue;
    let off = Number(vmlinux.readBigUInt64LE(ph + 8));
    const end = off + Number(vmlinux.readBigUInt64LE(ph + 32));
    while (off + 12 <= end) {
      const namesz = vmlinux.readUInt32LE(off);
      const descsz = vmlinux.readUInt32LE(off + 4);
      const type = vmlinux.readUInt32LE(off + 8);
      const name = vmlinux.toString('ascii', off + 12, off + 12 + namesz).replace(/\0+$/, '');
      if (name === 'Xen' && type === 18) return true;
      off += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}
