// jco 1.35's CLI reads --wit paths through WASI preview2-shim, which sees no files unless a
// directory is preopened. Preload this to use `jco embed` / `jco new` by hand:
//   VHOST_WASM=/path/to/vhost-wasm node --import ./jco-preopen.mjs $VHOST_WASM/node_modules/.bin/jco embed ...
// (build.mjs does not need it: it calls the same wasm-tools in-process.)
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(join(process.env.VHOST_WASM ?? process.cwd(), 'package.json'));
const { _setPreopens } = await import(require.resolve('@bytecodealliance/preview2-shim/filesystem'));
_setPreopens({ '/': '/' });
