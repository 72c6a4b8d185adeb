// Reads the world a component was built against (as wasm-tools prints it) and says, in
// words a plugin author can act on, what does not match this host.
import { DEVICE_INTERFACE, IMPORTABLE, TYPE_ONLY, WIT_PACKAGE, WIT_VERSION } from './world.ts';

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

/** Problems that make the component unusable here; empty when it fits. */
export function checkWorld(items: WorldItems): string[] {
  const problems: string[] = [];
  const ownPrefix = `${WIT_PACKAGE}/`;
  if (!items.exports.includes(DEVICE_INTERFACE)) {
    const other = items.exports.find((e) => e.startsWith(`${ownPrefix}device@`));
    problems.push(
      other
        ? `this plugin is built for ${WIT_PACKAGE}@${other.slice(`${ownPrefix}device@`.length)}; this host speaks @${WIT_VERSION}: rebuild it against wit/ (docs/plugin-abi.md, "Migrating from 0.1.0")`
        : `does not export ${DEVICE_INTERFACE} (exports: ${items.exports.join(', ') || 'nothing'})`,
    );
    // One message says it all: every import of an older plugin names its version too.
    if (other) return problems;
  }
  for (const imp of items.imports) {
    const ok = [...IMPORTABLE, ...TYPE_ONLY].some((name) => imp === `${ownPrefix}${name}@${WIT_VERSION}`);
    if (ok) continue;
    if (imp.startsWith('wasi:')) {
      problems.push(`imports ${imp}: plugins get no WASI (link without stdio/files, see docs/plugin-abi.md)`);
    } else if (imp.startsWith(ownPrefix)) {
      problems.push(`imports ${imp}, which this host (${WIT_PACKAGE}@${WIT_VERSION}) does not provide`);
    } else {
      problems.push(`imports ${imp}, which this host does not provide`);
    }
  }
  return problems;
}
