// `npm pack` / `npm publish` (the "prepack" script, after `node build.mjs`): what the package
// ships beyond dist/'s bundles and plugins. The native addon this machine built becomes the
// prebuilt one for its platform (node-gyp-build's layout: host/native/prebuilds/<platform>-<arch>/,
// tags "napi" and the C library), and the entry points' type declarations go to dist/types.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const prebuilds = join(root, 'host', 'native', 'prebuilds');
rmSync(prebuilds, { recursive: true, force: true });
const libc = process.report?.getReport?.().header?.glibcVersionRuntime ? 'glibc' : 'musl';
const dir = join(prebuilds, `${process.platform}-${process.arch}`);
mkdirSync(dir, { recursive: true });
copyFileSync(join(root, 'host', 'native', 'build', 'Release', 'vhost_native.node'), join(dir, `vhost_native.napi.${libc}.node`));

rmSync(join(root, 'dist', 'types'), { recursive: true, force: true });
execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.types.json')], { stdio: 'inherit' });
