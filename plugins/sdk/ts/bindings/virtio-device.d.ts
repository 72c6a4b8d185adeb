/// <reference path="./interfaces/vhost-device-device.d.ts" />
/// <reference path="./interfaces/vhost-device-entropy.d.ts" />
/// <reference path="./interfaces/vhost-device-filesystem.d.ts" />
/// <reference path="./interfaces/vhost-device-log.d.ts" />
/// <reference path="./interfaces/vhost-device-network.d.ts" />
/// <reference path="./interfaces/vhost-device-options.d.ts" />
/// <reference path="./interfaces/vhost-device-storage.d.ts" />
/// <reference path="./interfaces/vhost-device-types.d.ts" />
declare module 'vhost:device/virtio-device@0.2.2' {
  export type * as VhostDeviceEntropy022 from 'vhost:device/entropy@0.2.2'; // import vhost:device/entropy@0.2.2
  export type * as VhostDeviceFilesystem022 from 'vhost:device/filesystem@0.2.2'; // import vhost:device/filesystem@0.2.2
  export type * as VhostDeviceLog022 from 'vhost:device/log@0.2.2'; // import vhost:device/log@0.2.2
  export type * as VhostDeviceNetwork022 from 'vhost:device/network@0.2.2'; // import vhost:device/network@0.2.2
  export type * as VhostDeviceOptions022 from 'vhost:device/options@0.2.2'; // import vhost:device/options@0.2.2
  export type * as VhostDeviceStorage022 from 'vhost:device/storage@0.2.2'; // import vhost:device/storage@0.2.2
  export type * as VhostDeviceTypes022 from 'vhost:device/types@0.2.2'; // import vhost:device/types@0.2.2
  export * as device from 'vhost:device/device@0.2.2'; // export vhost:device/device@0.2.2
}
