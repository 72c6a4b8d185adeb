// The error classes a device worker's reply may carry, so the main thread rebuilds each as its
// own class (instanceof and `code` work as if it had been thrown here). An error of a class
// not listed arrives as a plain Error with the same name, message and code.

import type { VhostWasmErrorClass } from '../errors.ts';
import { DeviceError } from './errors.ts';
import { QueueFault, QueueSetupError } from '../virtqueue/chain.ts';
import { MemoryFault, MemoryTableError } from '../memory/guest-memory.ts';
import { MemoryFdError } from '../memory/memory-fd.ts';
import { PluginError } from '../plugin/errors.ts';
import { CapabilityError } from '../plugin/imports.ts';
import { LiftError } from '../plugin/lift-guard.ts';
import { UntrustedCacheError } from '../plugin/cache-dir.ts';
import { FsShareError } from '../fs/share.ts';
import { BackingError } from '../storage/backing.ts';
import { StateFormatError } from '../migration/container.ts';

export const WORKER_ERROR_CLASSES: readonly VhostWasmErrorClass[] = [
  DeviceError,
  QueueFault,
  QueueSetupError,
  MemoryFault,
  MemoryTableError,
  MemoryFdError,
  PluginError,
  CapabilityError,
  LiftError,
  UntrustedCacheError,
  FsShareError,
  BackingError,
  StateFormatError,
];
