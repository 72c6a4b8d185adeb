// The transpile cache holds JavaScript the host runs as itself. A local user who can write
// it (a cache folder they pre-created, made world-writable, or own; a symlink to one) or a
// cache entry whose glue was changed behind the host's back must never get that glue run:
// the real host binary is started against each, with a planted glue.js that would write a
// marker file, and must not run it, must say why in its log, and must still serve.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserFrontend, VIRTIO_F_VERSION_1 } from '../host/frontend/driver.ts';
import { startHost } from './helpers/host-process.ts';

const root = join(import.meta.dirname, '..');
let dir: string;
let rng: string;
/** A cache entry the real host wrote for rng.wasm (its folder name is the host's business). */
let goodEntry: string;
const NOBODY = 65534;

/** Starts the host with XDG_CACHE_HOME=xdg, checks rng serves random bytes, returns its log. */
async function serveRng(t: ExecutionContext, xdg: string): Promise<string> {
  const host = await startHost(['--socket-path', '{socket}', '--plugin', rng, '--entropy'], { env: { XDG_CACHE_HOME: xdg } });
  try {
    const fe = await VhostUserFrontend.connect(host.socketPath, { memoryBytes: 1 << 20, queues: [16], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
    const r = await fe.queues[0].submit([], 64);
    t.is(r.len, 64);
    t.true(new Set(r.data).size > 16, 'rng answers with random bytes');
    await fe.close();
    return host.log();
  } finally {
    await host.stop();
  }
}

/** A copy of the good entry in `cacheDir` whose glue.js writes `marker` when evaluated; `rehash` updates the manifest to match, as an attacker who can write the folder would. */
function plantTamperedEntry(cacheDir: string, marker: string, rehash: boolean): string {
  const entry = join(cacheDir, goodEntry.split('/').pop()!);
  if (!existsSync(entry)) cpSync(goodEntry, entry, { recursive: true });
  const gluePath = join(entry, 'glue.js');
  const glue = `process.getBuiltinModule('fs').writeFileSync(${JSON.stringify(marker)}, 'glue ran');\n${readFileSync(gluePath, 'utf8')}`;
  writeFileSync(gluePath, glue);
  if (rehash) {
    const manifestPath = join(entry, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
    manifest.glue = createHash('sha256').update(glue).digest('hex');
    writeFileSync(manifestPath, JSON.stringify(manifest));
  }
  return entry;
}

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'plugin-cache-trust-'));
  execFileSync(process.execPath, ['build.mjs', '--only', 'plugins'], { cwd: root, stdio: 'ignore' });
  rng = join(root, 'dist', 'plugins', 'rng.wasm');
});

test.after.always(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test.serial('the host makes its own cache under $XDG_CACHE_HOME, 0700, and reuses it', async (t) => {
  const xdg = join(dir, 'own');
  mkdirSync(xdg);
  await serveRng(t, xdg);
  const cache = join(xdg, 'vhost-wasm');
  const st = statSync(cache);
  t.is(st.mode & 0o777, 0o700, 'created private');
  t.is(st.uid, process.geteuid!());
  const entries = readdirSync(cache);
  t.is(entries.length, 1, `one entry: ${entries.join(', ')}`);
  goodEntry = join(cache, entries[0]);
  for (const f of ['glue.js', 'manifest.json']) t.is(statSync(join(goodEntry, f)).mode & 0o077, 0, `${f} is private`);
  const log = await serveRng(t, xdg);
  t.notRegex(log, /plugin cache/, 'a good entry is used without complaint');
});

test.serial('a glue.js changed inside our own cache is detected, never run, and the entry is re-created', async (t) => {
  const marker = join(dir, 'marker-own');
  const entry = plantTamperedEntry(join(dir, 'own', 'vhost-wasm'), marker, false);
  const log = await serveRng(t, join(dir, 'own'));
  t.regex(log, /plugin cache: entry .* failed verification \(glue\.js does not match the hash in its manifest\): removed, the plugin is transpiled again/);
  t.false(existsSync(marker), 'the tampered glue never ran');
  t.false(readFileSync(join(entry, 'glue.js'), 'utf8').includes(marker), 'the entry was written again from the component');
});

for (const [label, prepare, why] of [
  [
    'world-writable',
    (cache: string) => {
      mkdirSync(cache);
      chmodSync(cache, 0o777);
    },
    /is writable by group or others \(mode 0777\)/,
  ],
  [
    'owned by another user',
    (cache: string) => {
      mkdirSync(cache, { mode: 0o755 });
      chownSync(cache, NOBODY, NOBODY);
    },
    new RegExp(`is owned by uid ${NOBODY}, not by this process's uid`),
  ],
  [
    'a symlink to a folder the attacker chose',
    (cache: string) => {
      const elsewhere = mkdtempSync(join(dir, 'elsewhere-'));
      symlinkSync(elsewhere, cache);
    },
    /is a symbolic link/,
  ],
] as [string, (cache: string) => void, RegExp][]) {
  test.serial(`a pre-created cache folder that is ${label} is not used, and its glue never runs`, async (t) => {
    const xdg = mkdtempSync(join(dir, 'xdg-'));
    const cache = join(xdg, 'vhost-wasm');
    prepare(cache);
    const marker = join(dir, `marker-${label.replace(/\W+/g, '-')}`);
    // The attacker controls the folder, so the manifest matches the planted glue.
    plantTamperedEntry(cache, marker, true);
    const log = await serveRng(t, xdg);
    t.regex(log, why);
    t.regex(log, /not using it .*plugins are transpiled in memory on every load instead/);
    t.false(existsSync(marker), 'the planted glue never ran');
  });
}
