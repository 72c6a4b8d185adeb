// Loads the native addon for this thread and gives it its TypeScript type. The addon is
// found next to the running file first (the esbuild bundle in dist/ ships a copy beside
// it), then in node-gyp's output next to this source file.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Native } from './api.ts';
export type { NativeFs, FdBudgetInfo } from './fs-api.ts';

export type { Native, Mapping, MemoryFdInfo, RecvResult, Watcher, WatchEvents, FdKind, Uring, UringIov, BackingInfo } from './api.ts';

/** Where the addon may live, in the order they are tried. */
export const addonCandidates: readonly string[] = [
  fileURLToPath(new URL('./vhost_native.node', import.meta.url)),
  fileURLToPath(new URL('./build/Release/vhost_native.node', import.meta.url)),
];

function load(): Native {
  const path = addonCandidates.find((p) => existsSync(p));
  if (path === undefined) {
    throw new Error(
      `vhost_native.node (the native addon) was not found; looked in:\n  ${addonCandidates.join('\n  ')}\n` +
        'Build it with `npm run build` (or just the addon: `node build.mjs --only addon`).',
    );
  }
  try {
    return createRequire(import.meta.url)(path) as Native;
  } catch (e) {
    throw new Error(
      `could not load the native addon ${path}: ${(e as Error).message}\n` +
        'It may have been built for another Node version: rebuild it with `node build.mjs --only addon`.',
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
