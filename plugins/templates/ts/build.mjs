// Builds device.ts (and what it imports), with the vhost-wasm TypeScript SDK, into a component:
//   VHOST_WASM=/path/to/vhost-wasm node build.mjs [out.wasm]
// (VHOST_WASM may be left out when this folder is inside the vhost-wasm checkout.)
// tsc (type check) -> esbuild (one module) -> componentize-js (no WASI): the same steps as the
// project's own TypeScript plugins (plugins/sdk/ts/build.mjs). Rebuilds only when an input
// changed; a build takes 6-15 s.
import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

function findCheckout() {
  if (process.env.VHOST_WASM) return resolve(process.env.VHOST_WASM);
  for (let dir = here; dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'plugins', 'sdk', 'ts', 'build.mjs'))) return dir;
  }
  console.error('set VHOST_WASM to your vhost-wasm checkout (the folder with plugins/sdk/ts/build.mjs)');
  process.exit(1);
}

const root = findCheckout();
const { buildTsPlugin, writeEditorConfig } = await import(pathToFileURL(join(root, 'plugins', 'sdk', 'ts', 'build.mjs')).href);
// For your editor: a tsconfig.json pointing at the SDK, unless you have one.
if (writeEditorConfig(here)) console.log('wrote tsconfig.json (for your editor)');
const outFile = resolve(process.argv[2] ?? join(here, `${basename(here)}.wasm`));
const started = performance.now();
const { built } = await buildTsPlugin({ root, dir: here, outFile });
console.log(`${built ? `built in ${Math.round(performance.now() - started)} ms` : 'up to date'}: ${outFile}`);
