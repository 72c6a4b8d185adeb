// The `storage` import: what a plugin may know of its disk (vhost:device@0.2.2). The bytes
// never pass through the plugin: it names ranges of backing 0 in its answers, and the host
// checks them (host/device/answer-check.ts) and moves them (host/io). Without the grant
// every call traps, like every refused capability.
import type { Backing } from '../storage/backing.ts';

export function storageImports(backing: Backing | undefined, refuse: () => never): Record<string, unknown> {
  const need = (): Backing => backing ?? refuse();
  return {
    size: (): bigint => BigInt(need().size),
    readOnly: (): boolean => need().readOnly,
    blockSize: (): number => need().blockSize,
  };
}
