// Talks to your device the way QEMU would (the project's front-end driver: handshake, memfd
// guest RAM, a split ring), sends a few requests and prints the answers and the config space.
//   cd /path/to/vhost-wasm && npx tsx /path/to/my-device/drive.mts /tmp/my-device.sock
// Run it from the vhost-wasm checkout (it imports the driver from there).
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const root = process.env.VHOST_WASM ?? process.cwd();
const { VhostUserFrontend, VIRTIO_F_VERSION_1 } = await import(pathToFileURL(join(root, 'host', 'frontend', 'index.ts')).href);

const socket = process.argv[2];
if (!socket) throw new Error('usage: drive.mts SOCKET');
const fe = await VhostUserFrontend.connect(socket, { memoryBytes: 4 << 20, queues: [64], features: 1n << BigInt(VIRTIO_F_VERSION_1) });
try {
  for (const text of ['hello, device', 'vhost-wasm']) {
    const r = await fe.queues[0].submit([Buffer.from(text)], 64);
    console.log(`sent ${JSON.stringify(text)} -> got ${JSON.stringify(Buffer.from(r.data.subarray(0, r.len)).toString())}`);
  }
  const config = await fe.getConfig(0, 8);
  console.log(`config space: served = ${Buffer.from(config).readBigUInt64LE(0)}`);
} finally {
  await fe.close();
}
