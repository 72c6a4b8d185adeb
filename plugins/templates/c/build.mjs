// Builds every .c file in this folder, plus the vhost-wasm C SDK, into one component:
//   VHOST_WASM=/path/to/vhost-wasm node build.mjs [out.wasm]
// (VHOST_WASM may be left out when this folder is inside the vhost-wasm checkout.)
// clang-16 -> core module -> WIT embedded -> component: the same steps as the project's own
// plugins (plugins/build-plugins.mjs). Rebuilds only when an input changed.
import { existsSync, readdirSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

function findCheckout() {
  if (process.env.VHOST_WASM) return resolve(process.env.VHOST_WASM);
  for (let dir = here; dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'plugins', 'build-plugins.mjs'))) return dir;
  }
  console.error('set VHOST_WASM to your vhost-wasm checkout (the folder with plugins/build-plugins.mjs)');
  process.exit(1);
}

const root = findCheckout();
const { buildPlugin } = await import(pathToFileURL(join(root, 'plugins', 'build-plugins.mjs')).href);
const sources = readdirSync(here).filter((f) => f.endsWith('.c')).sort().map((f) => join(here, f));
const outFile = resolve(process.argv[2] ?? join(here, `${basename(here)}.wasm`));
const started = performance.now();
const { built } = await buildPlugin({ root, sources, outFile });
console.log(`${built ? `built in ${Math.round(performance.now() - started)} ms` : 'up to date'}: ${outFile}`);
