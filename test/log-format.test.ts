// --log-format json (issue 13 item 3): one JSON object per line {time, level, scope, msg}, from
// the built binary (the single-device command and `serve`), from device workers (the format is
// in the log cell they share with the main thread), with untrusted text kept on one line and
// exact, and long messages cut to one atomic write. A format that does not exist is refused.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, logLevelCell, MAX_LINE, setLogFormat, setLogSink } from '../host/log/logger.ts';
import { VhostUserFrontend } from '../host/frontend/driver.ts';
import { hostCommand, REPO, startHost } from './helpers/host-process.ts';
import { spawnDaemon } from './helpers/daemon-process.ts';

const rng = join(REPO, 'dist', 'plugins', 'rng.wasm');

interface JsonLine {
  time: string;
  level: string;
  scope: string;
  msg: string;
}

/** Every line of `text` as a log object; throws on a line that is not one. */
function lines(text: string): JsonLine[] {
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const o = JSON.parse(l) as JsonLine;
      if (Object.keys(o).join() !== 'time,level,scope,msg' || Number.isNaN(Date.parse(o.time))) throw new Error(`not a log object: ${l}`);
      return o;
    });
}

test.serial('in-process: control characters and separators stay escaped on one line and parse back exactly; a long message is cut to one write', (t) => {
  const got: string[] = [];
  setLogSink((l) => got.push(l));
  setLogFormat('json');
  t.teardown(() => {
    setLogFormat('text');
    setLogSink(null);
  });
  const log = createLogger('plugin "x"');
  const nasty = 'a\nb\r\x1b[31mred\u2028c\u202ed\0e\u0085';
  log.warn(nasty);
  log.info('é'.repeat(2100)); // 4200 bytes: past one line
  t.is(got.length, 2);
  for (const l of got) {
    t.true(Buffer.byteLength(l) <= MAX_LINE, `${Buffer.byteLength(l)} bytes`);
    t.is(l.indexOf('\n'), l.length - 1);
    // Nothing raw that a terminal or a line reader acts on (the final newline aside).
    t.notRegex(l.slice(0, -1), /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202e]/);
  }
  const [a, b] = lines(got.join(''));
  t.like(a, { level: 'warn', scope: 'plugin "x"', msg: nasty });
  t.is(b.level, 'info');
  t.regex(b.msg, /^é+…\(\d+ bytes cut\)$/);
});

test.serial('a device worker follows the format the main thread set', async (t) => {
  const tsx = import.meta.resolve('tsx/esm/api');
  const logger = new URL('../host/log/logger.ts', import.meta.url).href;
  const code = `
    const { parentPort, workerData } = await import('node:worker_threads');
    (await import(${JSON.stringify(tsx)})).register();
    const log = await import(${JSON.stringify(logger)});
    log.useLogLevelCell(workerData);
    log.setLogSink((l) => parentPort.postMessage(l));
    parentPort.on('message', () => log.createLogger('device blk0').info('from the worker'));
    parentPort.postMessage('ready');
  `;
  const w = new Worker(code, { eval: true, workerData: logLevelCell(), stderr: true });
  t.teardown(() => {
    setLogFormat('text');
    return w.terminate();
  });
  t.is((await once(w, 'message'))[0], 'ready');
  setLogFormat('json');
  w.postMessage('log');
  const [line] = (await once(w, 'message')) as [string];
  t.like(lines(line)[0], { level: 'info', scope: 'device blk0', msg: 'from the worker' });
  setLogFormat('text');
  w.postMessage('log');
  const [text] = (await once(w, 'message')) as [string];
  t.regex(text, /^\S+ INFO  device blk0: from the worker\n$/);
});

test('the built binary: --log-format json makes every line a JSON object, through start, a front-end and shutdown', async (t) => {
  const h = await startHost(['--socket-path', '{socket}', '--plugin', rng, '--entropy', '--log-format', 'json']);
  t.teardown(() => rmSync(h.dir, { recursive: true, force: true }));
  const fe = await VhostUserFrontend.connect(h.socketPath, { memoryBytes: 4 << 20, queues: [64] });
  t.is((await fe.queues[0].submit([], 32)).len, 32);
  await fe.close();
  t.is(await h.stop(), 0);
  const all = lines(h.log());
  t.true(all.some((l) => l.level === 'info' && /SIGTERM/.test(l.msg)), h.log());
  t.true(all.some((l) => l.scope.startsWith('session ')), 'the session logged its front-end');
});

test('serve: the config\'s "logFormat" applies; an unknown format is refused on both command lines', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'log-format-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'd.json'), JSON.stringify({ logFormat: 'json', devices: [{ id: 'r', socket: 'r.sock', plugin: rng, grants: { entropy: true } }] }));
  const d = spawnDaemon(['--config', join(dir, 'd.json')]);
  t.teardown(() => d.stop());
  await d.waitForLog(/"msg":"serving 1 of 1 device/);
  t.is(await d.stop(), 0);
  t.true(lines(d.log()).some((l) => l.scope === 'vhost-wasm' && /^serving 1 of 1 device/.test(l.msg)), d.log());

  for (const argv of [['serve', '--config', join(dir, 'd.json'), '--log-format', 'yaml'], ['--socket-path', join(dir, 'x.sock'), '--plugin', rng, '--log-format', 'yaml']]) {
    const [node, args] = hostCommand(argv);
    const r = spawnSync(node, args, { encoding: 'utf8', timeout: 60_000 });
    t.is(r.status, 2, r.stderr);
    t.regex(r.stderr, /--log-format: "yaml" is not one of text, json/);
  }
  writeFileSync(join(dir, 'bad.json'), JSON.stringify({ logFormat: 'xml', devices: [] }));
  const [node, args] = hostCommand(['serve', '--config', join(dir, 'bad.json')]);
  const r = spawnSync(node, args, { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 2);
  t.regex(r.stderr, /logFormat: "xml" is not one of text, json \[ERR_CONFIG\]/);
});
