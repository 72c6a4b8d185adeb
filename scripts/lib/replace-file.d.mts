// Types for replace-file.mjs, so TypeScript tests can do what build.mjs does with it.
export function installFile(src: string, dst: string): void;
export function writeFileReplacing(dst: string, data: Uint8Array | string, mode?: number): void;
