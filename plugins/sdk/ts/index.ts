// The vhost-wasm TypeScript plugin SDK (vhost:device@0.2.2). A device module does
//   import { defineDevice, answer, bytes } from '@vhost-wasm/sdk';
//   export const device = defineDevice({ ... });
// and plugins/sdk/ts/build.mjs turns it into a component. docs/writing-a-ts-plugin.md.
export { defineDevice, type Batch, type DeviceSpec, type DeviceExport } from './define.ts';
export * from './answers.ts';
export { log, entropy, storage, fs, network, options, errnoOf } from './capabilities.ts';
export type * from './wit.ts';
