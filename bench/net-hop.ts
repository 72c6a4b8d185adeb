// What a frame batch's trip between two device workers costs as a message, with nothing else:
// worker A posts {SharedArrayBuffer, descriptors} to worker B, B posts it back, N times; once
// over a MessageChannel joining the two workers directly, once relayed by the main thread as
// the switch (host/net/switch.ts) relays it. Measures the hop the host's design pays per batch.
//   npx tsx bench/net-hop.ts [--round-trips 20000]
import { Worker, MessageChannel, isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { parseArgs } from 'node:util';

interface Data {
  port: MessagePort;
  role: 'ping' | 'echo';
  n: number;
}

if (!isMainThread) {
  const { port, role, n } = workerData as Data;
  if (role === 'echo') port.on('message', (m) => port.postMessage(m));
  else {
    parentPort!.once('message', () => {
      const buf = new SharedArrayBuffer(1514);
      let done = 0;
      const t0 = performance.now();
      port.on('message', () => {
        if (++done === n) parentPort!.postMessage(((performance.now() - t0) / n) * 1000);
        else port.postMessage({ buf, desc: [0, 2, 0, 1514] });
      });
      port.postMessage({ buf, desc: [0, 2, 0, 1514] });
    });
  }
} else {
  const { values } = parseArgs({ options: { 'round-trips': { type: 'string', default: '20000' } } });
  const n = Number(values['round-trips']);
  const run = async (relay: boolean): Promise<number> => {
    let pa: MessagePort;
    let pb: MessagePort;
    if (relay) {
      const a = new MessageChannel();
      const b = new MessageChannel();
      a.port2.on('message', (m) => b.port2.postMessage(m));
      b.port2.on('message', (m) => a.port2.postMessage(m));
      [pa, pb] = [a.port1, b.port1];
    } else {
      const c = new MessageChannel();
      [pa, pb] = [c.port1, c.port2];
    }
    const boot = (port: MessagePort, role: Data['role']) =>
      new Worker(`import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`, {
        eval: true,
        workerData: { port, role, n },
        transferList: [port],
      });
    const wa = boot(pa, 'ping');
    const wb = boot(pb, 'echo');
    await new Promise((r) => setTimeout(r, 500));
    const us = await new Promise<number>((resolve) => {
      wa.once('message', resolve);
      wa.postMessage('go');
    });
    await Promise.all([wa.terminate(), wb.terminate()]);
    return us;
  };
  for (let i = 0; i < 3; i++) console.log(`round trip A -> B -> A: direct ${(await run(false)).toFixed(1)} us, through the main thread ${(await run(true)).toFixed(1)} us`);
}
