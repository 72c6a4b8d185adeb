// Loads the native addon for this thread and gives it its TypeScript type. The addon is
// found next to the running file first (the esbuild bundle in dist/ ships a copy beside
// it), then in node-gyp's output next to this source file.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import type { Native } from './api.ts';
export type { NativeFs, FdBudgetInfo } from './fs-api.ts';

export type { Native, Mapping, MemoryFdInfo, RecvResult, Watcher, WatchEvents, FdKind, Uring, UringIov, BackingInfo } from './api.ts';

/**
 * Where the addon may live, in the order they are tried: beside the running file (a source
 * checkout's dist/, where build.mjs copies it), node-gyp's output beside the C sources, and in an
 * installed package the build for this platform that node-gyp-build picks (the prebuilt one
 * shipped in host/native/prebuilds/<platform>-<arch>/, or one the install script compiled).
 */
const nativeDir = fileURLToPath(import.meta.url.endsWith('.ts') ? new URL('./', import.meta.url) : new URL('../host/native/', import.meta.url));
export const addonCandidates: readonly string[] = [
  fileURLToPath(new URL('./vhost_native.node', import.meta.url)),
  join(nativeDir, 'build', 'Release', 'vhost_native.node'),
  join(nativeDir, 'prebuilds', `${process.platform}-${process.arch}`),
];

/** The prebuilt addon for this platform (node-gyp-build's choice among host/native/prebuilds), or null. */
function prebuilt(): string | null {
  if (!existsSync(join(nativeDir, 'prebuilds'))) return null;
  const require = createRequire(import.meta.url);
  let nodeGypBuild: { path(dir: string): string };
  try {
    nodeGypBuild = require('node-gyp-build') as typeof nodeGypBuild;
  } catch {
    return null;
  }
  try {
    return nodeGypBuild.path(nativeDir);
  } catch {
    return null; // none for this platform: reported below with every place looked in
  }
}

function load(): Native {
  const path = addonCandidates.slice(0, 2).find((p) => existsSync(p)) ?? prebuilt() ?? undefined;
  if (path === undefined) {
    throw new Error(
      `vhost_native.node (the native addon) was not found for ${process.platform}-${process.arch}; looked in:\n  ${addonCandidates.join('\n  ')}\n` +
        'In a source checkout build it with `npm run build` (or just the addon: `node build.mjs --only addon`); ' +
        'in an installed package, reinstall it on a machine with make, a C compiler and python3 so that its install script can build it.',
    );
  }
  try {
    return createRequire(import.meta.url)(path) as Native;
  } catch (e) {
    throw new Error(
      `could not load the native addon ${path}: ${(e as Error).message}\n` +
        'It may have been built for another platform: rebuild it with `node build.mjs --only addon` (source checkout) or reinstall the package.',
      { cause: e },
    );
  }
}

export const native: Native = load();

/** The errno name ('EBADF') of an error thrown by the addon, if it carries one. */
export function errnoCode(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const code = (e as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}
