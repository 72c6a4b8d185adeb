// Tells a test whether the guest can run here, and names the Debian packages
// to install when it cannot.

import { existsSync, readdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export function findOnPath(binary: string): string | undefined {
  if (binary.includes('/')) return existsSync(binary) ? binary : undefined;
  const dirs = (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin']);
  return dirs.map((d) => join(d, binary)).find((p) => existsSync(p));
}

const REQUIREMENTS: [package_: string, present: () => boolean][] = [
  ['qemu-system-x86', () => !!findOnPath('qemu-system-x86_64')],
  ['busybox-static', () => existsSync('/bin/busybox')],
  ['linux-image-amd64', () => existsSync('/boot') && readdirSync('/boot').some((f) => f.startsWith('vmlinuz-'))],
  ['kmod', () => !!findOnPath('modinfo') && !!findOnPath('depmod')],
  ['xz-utils', () => !!findOnPath('xz')],
];

/** Debian packages the guest harness needs that are not installed. */
export function missingGuestPackages(): string[] {
  return REQUIREMENTS.filter(([, present]) => !present()).map(([p]) => p);
}

export function hasQemu(): boolean {
  return missingGuestPackages().length === 0;
}

export function hasStorageDaemon(): boolean {
  return !!findOnPath('qemu-storage-daemon');
}

export function assertGuestPrerequisites(): void {
  const missing = missingGuestPackages();
  if (missing.length) {
    throw new Error(`guest harness needs Debian packages: apt-get install ${missing.join(' ')}`);
  }
}
