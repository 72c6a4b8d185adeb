// Regenerates bindings/: the TypeScript declarations of the vhost:device world as a guest sees
// it (`declare module 'vhost:device/log@0.2.2'` ...), generated from wit/device.wit by jco's own
// type generator, so the SDK's types cannot drift from the WIT by hand-editing.
// Usage: node plugins/sdk/ts/gen-bindings.mjs [--check]  (--check: exit 1 when out of date)
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const outDir = join(here, 'bindings');

/** The generated files, path (relative to bindings/) -> text. */
export async function generateBindings(witFile = join(root, 'wit', 'device.wit')) {
  // jco's type generator reads the WIT through preview2-shim's filesystem, which sees only
  // preopened folders: open exactly the WIT's folder.
  const { _setPreopens } = await import('@bytecodealliance/preview2-shim/filesystem');
  _setPreopens({ '/wit': dirname(witFile) });
  const { generateGuestTypes } = await import('@bytecodealliance/jco-transpile');
  const files = await generateGuestTypes(`/wit/${witFile.split('/').pop()}`, { worldName: 'virtio-device' });
  const out = {};
  for (const [name, data] of Object.entries(files)) out[name] = Buffer.from(data).toString('utf8');
  return out;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const files = await generateBindings();
  if (process.argv.includes('--check')) {
    const stale = Object.entries(files).filter(([n, t]) => !existsSync(join(outDir, n)) || readFileSync(join(outDir, n), 'utf8') !== t);
    if (stale.length) {
      console.error(`out of date: ${stale.map(([n]) => n).join(', ')}; run node ${relative(process.cwd(), fileURLToPath(import.meta.url))}`);
      process.exit(1);
    }
  } else {
    rmSync(outDir, { recursive: true, force: true });
    for (const [name, text] of Object.entries(files)) {
      mkdirSync(dirname(join(outDir, name)), { recursive: true });
      writeFileSync(join(outDir, name), text);
    }
    console.log(`wrote ${Object.keys(files).length} files to ${relative(process.cwd(), outDir)}`);
  }
}
