// Types for build-plugins.mjs, so TypeScript tests can build fixture plugins with it.
export const WORLD: string;

export interface BuildPluginOptions {
  root: string;
  sources: string[];
  outFile: string;
  defines?: string[];
  witSource?: string;
  world?: string;
  sdk?: boolean;
  coreOnly?: boolean;
}

export function buildPlugin(options: BuildPluginOptions): Promise<{ outFile: string; built: boolean }>;
export function buildPlugins(options: { root?: string; outDir: string }): Promise<{ outFile: string; built: boolean }[]>;
