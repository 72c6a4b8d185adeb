// Errors about a device as a whole: its code misbehaved, it could not be loaded, or its worker
// is gone. (What a guest or a front-end gets wrong has its own classes: QueueFault,
// ProtocolError, ...)

import { VhostWasmError } from '../errors.ts';

/** The device (not the guest) misbehaved: a bad return value, a failed process(). */
export class DeviceError extends VhostWasmError {
  static override readonly code = 'ERR_DEVICE_FAULT';
  override name = 'DeviceError';
}

/**
 * The device's worker did not come up: it did not load within the start timeout, its code ran
 * past the load deadline, or the thread crashed or exited while loading. (An error the loading
 * code threw arrives as its own class instead, a PluginError say.)
 */
export class DeviceLoadError extends VhostWasmError {
  static override readonly code = 'ERR_DEVICE_LOAD';
  override name = 'DeviceLoadError';
}

/**
 * The device's worker is gone (killed by the watchdog, crashed, terminated): the call was not
 * made, or its answer will never come. The device needs a reset.
 */
export class DeviceStoppedError extends VhostWasmError {
  static override readonly code = 'ERR_DEVICE_STOPPED';
  override name = 'DeviceStoppedError';
}
