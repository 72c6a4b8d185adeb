// Reads the world a component was built against (as wasm-tools prints it) and says, in
// words a plugin author can act on, what does not match this host.
import { DEVICE_INTERFACE, DEVICE_INTERFACES, IMPORTABLE, TYPE_ONLY, WIT_ACCEPTED, WIT_PACKAGE, WIT_VERSION } from './world.ts';
import { isWasiImport, wasiImportsProblem } from './wasi-refusal.ts';

export interface WorldItems {
  imports: string[];
  exports: string[];
}

/** The top-level world's import/export lines of `wasm-tools component wit` output. */
export function parseWorld(wit: string): WorldItems {
  const start = wit.search(/^world [\w-]+ \{/m);
  if (start < 0) return { imports: [], exports: [] };
  const end = wit.indexOf('\n}', start);
  const body = wit.slice(start, end < 0 ? undefined : end);
  const items: WorldItems = { imports: [], exports: [] };
  for (const m of body.matchAll(/^\s*(import|export)\s+([^;{]+?)\s*(?:;|\{)/gm)) {
    (m[1] === 'import' ? items.imports : items.exports).push(m[2]);
  }
  return items;
}

const ACCEPTED_RANGE = `${WIT_PACKAGE}@${WIT_ACCEPTED[0]} to @${WIT_VERSION}`;

/** Dotted numbers, compared part by part; null for anything else (a pre-release tag, junk). */
function versionParts(v: string): number[] | null {
  return /^\d+\.\d+\.\d+$/.test(v) ? v.split('.').map(Number) : null;
}

function newerThanHost(v: string): boolean {
  const a = versionParts(v);
  const b = versionParts(WIT_VERSION)!;
  if (!a) return false;
  const i = a.findIndex((n, k) => n !== b[k]);
  return i >= 0 && a[i] > b[i];
}

/** Why a plugin built for `version` (not an accepted one) is refused, and what to do. */
function versionProblem(version: string): string {
  const built = `this plugin is built for ${WIT_PACKAGE}@${version}`;
  if (newerThanHost(version)) {
    return `${built}, newer than this host (${ACCEPTED_RANGE}): run a newer vhost-wasm, or build the plugin against ${WIT_PACKAGE}@${WIT_VERSION} (docs/plugin-abi.md, "Versioning")`;
  }
  return `${built}; this host speaks ${ACCEPTED_RANGE}: rebuild it against wit/ (docs/plugin-abi.md, "Migrating from 0.1.0")`;
}

const ACCEPTED_IMPORTS = new Set(
  [...IMPORTABLE, ...TYPE_ONLY].flatMap((name) => WIT_ACCEPTED.map((v) => `${WIT_PACKAGE}/${name}@${v}`)),
);

/** Problems that make the component unusable here; empty when it fits. */
export function checkWorld(items: WorldItems): string[] {
  const problems: string[] = [];
  const ownPrefix = `${WIT_PACKAGE}/`;
  if (!items.exports.some((e) => DEVICE_INTERFACES.includes(e))) {
    const other = items.exports.find((e) => e.startsWith(`${ownPrefix}device@`));
    problems.push(
      other
        ? versionProblem(other.slice(`${ownPrefix}device@`.length))
        : `does not export ${DEVICE_INTERFACE} (exports: ${items.exports.join(', ') || 'nothing'})`,
    );
    // One message says it all: every import of another version names its version too.
    if (other) return problems;
  }
  const wasi = wasiImportsProblem(items.imports.filter(isWasiImport));
  if (wasi) problems.push(wasi);
  for (const imp of items.imports) {
    if (ACCEPTED_IMPORTS.has(imp) || isWasiImport(imp)) continue;
    if (imp.startsWith(ownPrefix)) {
      problems.push(`imports ${imp}, which this host (${ACCEPTED_RANGE}) does not provide`);
    } else {
      problems.push(`imports ${imp}, which this host does not provide`);
    }
  }
  return problems;
}
