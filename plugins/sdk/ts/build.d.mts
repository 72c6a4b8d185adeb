// Types for build.mjs, so TypeScript tests and benches can build TS plugins with it.
export const WORLD: string;
export const SDK_SPECIFIER: string;
export const ENTRY: string;
export const DISABLED_FEATURES: string[];
export function buildTsPlugin(options: { root: string; dir: string; outFile: string; witSource?: string }): Promise<{ outFile: string; built: boolean }>;
export function writeEditorConfig(dir: string): boolean;
export const COMPONENTIZE: string;
