/* The SDK's filesystem glue, compiled into this plugin (plugins/build-plugins.mjs links
 * only vhost_device.c from the SDK). */
#include "vhost_fs.c"
