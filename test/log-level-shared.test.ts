// The log level is one cell shared by the main thread and the device workers: the daemon's
// log-level request (set in the main thread) reaches workers that were already running, and
// their lines at the new level come out. A real worker thread, loading the real logger.
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { getLogLevel, logLevelCell, setLogLevel } from '../host/log/logger.ts';

test('a level set in the main thread reaches a worker started before it', async (t) => {
  setLogLevel('info');
  const tsx = import.meta.resolve('tsx/esm/api');
  const logger = new URL('../host/log/logger.ts', import.meta.url).href;
  const code = `
    const { parentPort, workerData } = await import('node:worker_threads');
    (await import(${JSON.stringify(tsx)})).register();
    const log = await import(${JSON.stringify(logger)});
    log.setLogLevel('info');
    log.useLogLevelCell(workerData);
    const l = log.createLogger('probe');
    parentPort.on('message', () => parentPort.postMessage({ debug: l.enabled('debug'), level: log.getLogLevel() }));
    parentPort.postMessage('ready');
  `;
  const w = new Worker(code, { eval: true, workerData: logLevelCell() });
  t.teardown(() => w.terminate());
  t.is((await once(w, 'message'))[0], 'ready');
  const ask = async () => {
    w.postMessage('?');
    return (await once(w, 'message'))[0] as { debug: boolean; level: string };
  };
  t.deepEqual(await ask(), { debug: false, level: 'info' });
  setLogLevel('debug');
  t.deepEqual(await ask(), { debug: true, level: 'debug' });
  setLogLevel('error');
  t.deepEqual(await ask(), { debug: false, level: 'error' });
  t.is(getLogLevel(), 'error');
  setLogLevel('info');
});
