// The device watchdog and a notification write (and a device call) that overruns its deadline (the load
// generator's "stalled" runs): on a loaded machine a worker can wait for a CPU longer than the
// deadline inside the notification bracket, and the watchdog then killed a healthy device.
// Only a worker asleep in the write is stuck. Real worker threads, real /proc: one spins in a
// notify bracket that started long ago (runnable, like a preempted thread), one sleeps in it
// (like a write the front-end blocks).
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { WATCHDOG_SLOT_INTS, WATCHDOG_TID, WatchdogPhase, watchdogWord } from '../host/device/rpc.ts';
import { Watchdog } from '../host/device/worker-thread.ts';
import { ownThreadId, threadRunnable } from '../host/device/thread-state.ts';

const DEADLINE_MS = 100;

/**
 * A worker that writes its thread id into the watchdog slot, enters a notify bracket dated 10 s
 * ago (far past the deadline), then spins or sleeps until `stop` is set.
 */
function bracketWorker(slot: SharedArrayBuffer, stop: SharedArrayBuffer, epoch: number, mode: 'spin' | 'sleep', phase: WatchdogPhase): Worker {
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const mod = new URL('../host/device/thread-state.ts', import.meta.url).href;
  const body = `
    const { workerData, parentPort } = await import('node:worker_threads');
    const { ownThreadId } = await import(${JSON.stringify(mod)});
    const { slot, stop, epoch, mode, word } = workerData;
    const s = new Int32Array(slot), halt = new Int32Array(stop);
    Atomics.store(s, ${WATCHDOG_TID}, ownThreadId());
    Atomics.store(s, 0, word);
    parentPort.postMessage('in');
    if (mode === 'spin') while (Atomics.load(halt, 0) === 0);
    else Atomics.wait(halt, 0, 0);
    Atomics.store(s, 0, 0);`;
  const boot = `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return (async () => {${body}})(); })`;
  const word = watchdogWord(phase, Date.now() - epoch - 10_000);
  return new Worker(boot, { eval: true, workerData: { slot, stop, epoch, mode, word } });
}

async function run(mode: 'spin' | 'sleep', check: (dog: Watchdog, tid: number) => Promise<void>, phase: WatchdogPhase = WatchdogPhase.notify): Promise<void> {
  const slot = new SharedArrayBuffer(WATCHDOG_SLOT_INTS * 4);
  const stop = new SharedArrayBuffer(4);
  const epoch = Date.now();
  const w = bracketWorker(slot, stop, epoch, mode, phase);
  try {
    await new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    });
    const dog = new Watchdog(new Int32Array(slot), epoch, { label: 'test', callDeadlineMs: DEADLINE_MS });
    await check(dog, Atomics.load(new Int32Array(slot), WATCHDOG_TID));
  } finally {
    Atomics.store(new Int32Array(stop), 0, 1);
    Atomics.notify(new Int32Array(stop), 0);
    await w.terminate();
  }
}

/** Whether thread `tid` is seen runnable within 10 s: a worker that just posted may still be on its way into its loop (in a futex, say). */
async function spinning(tid: number): Promise<boolean> {
  for (const end = Date.now() + 10_000; Date.now() < end; await new Promise((r) => setTimeout(r, 5))) {
    if (threadRunnable(tid)) return true;
  }
  return false;
}

test('a worker thread knows its own Linux thread id, which is not the main thread one', async (t) => {
  await run('sleep', async (_dog, tid) => {
    t.true(tid > 0);
    t.not(tid, ownThreadId());
  });
});

test('a notification bracket past its deadline while the thread is runnable (waiting for a CPU) does not kill the device', async (t) => {
  await run('spin', async (dog, tid) => {
    t.true(await spinning(tid), 'the spinning worker is runnable');
    t.is(dog.overdue('dev'), null);
  });
});

test('a notification bracket past its deadline while the thread sleeps (a write the front-end blocks) kills the device', async (t) => {
  await run('sleep', async (dog, tid) => {
    // It posted before it went to sleep: wait until Linux shows it asleep.
    while (threadRunnable(tid)) await new Promise((r) => setTimeout(r, 5));
    const reason = dog.overdue('dev');
    t.truthy(reason);
    t.regex(reason!, /^dev: a notification write to the front-end's call or err eventfd ran \d+ ms, past its 100 ms deadline; worker terminated$/);
  });
});

// Device calls: the deadline is CPU time, measured from the watchdog's first look at the call
// (the thread's CPU clock); wall clock is the backstop for a thread asleep in the call. So a call
// that spins or sleeps past its deadline still ends the worker, whatever the machine's load,
// and one that has run long by the clock but not on a CPU does not.
test('a device call that has run past its deadline by the clock, but not on a CPU since the watchdog saw it, is not killed', async (t) => {
  await run('spin', async (dog, tid) => {
    t.true(await spinning(tid), 'the spinning worker is runnable');
    // The bracket began 10 s ago; the first look is where its CPU time starts to count.
    t.is(dog.overdue('dev'), null);
  }, WatchdogPhase.call);
});

test('a device call past its deadline ends the worker whether it spins (CPU time) or sleeps (wall clock)', async (t) => {
  const shape = {
    spin: /^dev: a device call ran \d+ ms, past its 100 ms deadline; worker terminated \(CPU time; \d+ ms of wall clock since it began\)$/,
    sleep: /^dev: a device call ran \d+ ms, past its 100 ms deadline; worker terminated \(asleep or blocked in a system call: wall clock(, less \d+ ms waiting for a CPU)?, at least 1000 ms asleep; \d+ ms since it began, \d+ ms of CPU time\)$/,
  };
  for (const mode of ['spin', 'sleep'] as const) {
    await run(mode, async (dog, tid) => {
      if (mode === 'sleep') while (threadRunnable(tid)) await new Promise((r) => setTimeout(r, 5));
      // Both measures start at the watchdog's first look: a spinning thread is killed once it
      // has used 100 ms of CPU after it, a sleeping one once it has slept 1 s after it (the
      // floor of the asleep backstop, above the 100 ms deadline). Look
      // every period until then (bounded, so a watchdog that never fires fails the test).
      let reason = dog.overdue('dev');
      for (const end = Date.now() + 60_000; reason === null && Date.now() < end; reason = dog.overdue('dev')) {
        await new Promise((r) => setTimeout(r, dog.period));
      }
      t.truthy(reason, mode);
      t.regex(reason!, shape[mode]);
    }, WatchdogPhase.call);
  }
});
