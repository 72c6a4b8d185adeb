/// <reference path="./interfaces/vhost-device-device.d.ts" />
/// <reference path="./interfaces/vhost-device-entropy.d.ts" />
/// <reference path="./interfaces/vhost-device-filesystem.d.ts" />
/// <reference path="./interfaces/vhost-device-log.d.ts" />
/// <reference path="./interfaces/vhost-device-network.d.ts" />
/// <reference path="./interfaces/vhost-device-options.d.ts" />
/// <reference path="./interfaces/vhost-device-storage.d.ts" />
/// <reference path="./interfaces/vhost-device-types.d.ts" />
declare module 'vhost:device/virtio-device@0.2.1' {
  export type * as VhostDeviceEntropy021 from 'vhost:device/entropy@0.2.1'; // import vhost:device/entropy@0.2.1
  export type * as VhostDeviceFilesystem021 from 'vhost:device/filesystem@0.2.1'; // import vhost:device/filesystem@0.2.1
  export type * as VhostDeviceLog021 from 'vhost:device/log@0.2.1'; // import vhost:device/log@0.2.1
  export type * as VhostDeviceNetwork021 from 'vhost:device/network@0.2.1'; // import vhost:device/network@0.2.1
  export type * as VhostDeviceOptions021 from 'vhost:device/options@0.2.1'; // import vhost:device/options@0.2.1
  export type * as VhostDeviceStorage021 from 'vhost:device/storage@0.2.1'; // import vhost:device/storage@0.2.1
  export type * as VhostDeviceTypes021 from 'vhost:device/types@0.2.1'; // import vhost:device/types@0.2.1
  export * as device from 'vhost:device/device@0.2.1'; // export vhost:device/device@0.2.1
}
