// Why a plugin's WASI imports are refused, in words that say which build switch removes them.
// The host grants no WASI at all: no stdio, files, sockets, clocks or random beyond the
// world's own capabilities (log, entropy, storage, filesystem), because each is ambient
// authority or a timing channel the operator did not grant per device. Plugins get there
// without it: the C SDK links only malloc/memcpy from wasi-libc, and the TypeScript SDK builds
// with every componentize-js feature disabled (plugins/sdk/ts/build.mjs), leaving a component
// that imports nothing but vhost:device/*. Components built otherwise are refused at load
// (docs/writing-a-plugin.md, "TypeScript plugins and WASI").

/**
 * The componentize-js feature (--disable NAME) that pulls in each WASI package (wasi:io comes
 * with each of them, so it names none).
 */
const COMPONENTIZE_FEATURE: ReadonlyArray<[RegExp, string]> = [
  [/^wasi:cli\//, 'stdio'],
  [/^wasi:filesystem\//, 'stdio'],
  [/^wasi:clocks\//, 'clocks'],
  [/^wasi:random\//, 'random'],
  [/^wasi:http\//, 'http, fetch-event'],
];

export function isWasiImport(name: string): boolean {
  return name.startsWith('wasi:');
}

/** One message for all of a component's WASI imports (empty list: null). */
export function wasiImportsProblem(imports: readonly string[]): string | null {
  if (imports.length === 0) return null;
  const features = new Set<string>();
  for (const imp of imports) {
    for (const [pattern, feature] of COMPONENTIZE_FEATURE) if (pattern.test(imp)) feature.split(', ').forEach((f) => features.add(f));
  }
  const shown = imports.length > 4 ? `${imports.slice(0, 4).join(', ')} and ${imports.length - 4} more` : imports.join(', ');
  const js = features.size
    ? `a componentize-js build must disable ${[...features].sort().join(', ')} (plugins/sdk/ts/build.mjs disables every feature)`
    : 'a componentize-js build must disable every feature (plugins/sdk/ts/build.mjs does)';
  return (
    `imports ${shown}: plugins get no WASI (no stdio, files, sockets, clocks or random; use the log and ` +
    `entropy imports). A C plugin must link without stdio/files (docs/plugin-abi.md); ${js}`
  );
}
