// The process the fuzzer attacks: the real Host (host/server) with two devices in one process,
// both the blk plugin on a memory disk. The fuzzer attacks `target.sock`; `bystander.sock` is the
// health probe, so a fault that escapes the target device (a crash, a wedged event loop, a dead
// process) shows on a device the attacker never touched. The CLI serves one device per process,
// which cannot show that, hence this entry; everything below Host.start is the shipped code.
//
// usage: node --import tsx test/fuzz/host-entry.ts DIR PLUGIN.wasm [TARGET_DISK_BYTES]
import { join } from 'node:path';
import { Host } from '../../host/server/index.ts';
import { createLogger, errorText, setLogLevel } from '../../host/log/logger.ts';

const [dir, plugin, diskArg] = process.argv.slice(2);
if (!dir || !plugin) {
  process.stderr.write('usage: host-entry.ts DIR PLUGIN.wasm [TARGET_DISK_BYTES]\n');
  process.exit(2);
}
const log = createLogger('fuzz-host');
setLogLevel('info');

const blk = (size: number) => ({
  kind: 'plugin' as const,
  path: plugin,
  // The CLI's defaults for a --storage device (256M memory cap, 1 s call deadline).
  options: { memoryLimitBytes: 256 * 2 ** 20, entropy: false, storage: { kind: 'memory', size, readOnly: false } },
});

const host = await Host.start([
  { label: 'target', listen: { path: join(dir, 'target.sock') }, source: blk(Number(diskArg ?? 4 * 2 ** 20)), callDeadlineMs: 1000 },
  { label: 'bystander', listen: { path: join(dir, 'bystander.sock') }, source: blk(2 ** 20), callDeadlineMs: 1000 },
]);
log.info(`serving target and bystander in ${dir} (pid ${process.pid})`);
let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  host.close().then(
    () => process.exit(0),
    (e) => {
      log.error(`shutdown failed: ${errorText(e)}`);
      process.exit(1);
    },
  );
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
