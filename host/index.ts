// The package's embedding entry (`import { Host } from 'vhost-wasm'`): a host serving devices
// on vhost-user sockets from inside another Node.js program, each device in its own worker
// thread. The command line (dist/vhost-wasm.mjs) is built on the same Host. The front-end
// driver (a vhost-user client, for tests and tools) is `vhost-wasm/frontend`.
export { Host, DEFAULT_CALL_DEADLINE_MS } from './server/index.ts';
export type { DeviceConfig, HostDevice } from './server/index.ts';
export type { ListenAddress } from './server/listener.ts';
export type { DeviceSource } from './device/rpc.ts';
export type { DeviceInfo, VirtioDevice, DeviceFactory } from './device/device.ts';
export { TokenBucket, NO_THROTTLE } from './limits/token-bucket.ts';
export type { ThrottleLimits, ThrottleCounters } from './limits/token-bucket.ts';
export { VhostWasmError, errorCode, describeError } from './errors.ts';
export { HOST_VERSION } from './version.ts';
