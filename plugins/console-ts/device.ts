// virtio-console (device id 3), one port, as an echo: what the guest writes to the console
// (transmitq, queue 1) comes back as console input (receiveq, queue 0). Written with the
// TypeScript SDK to show requests that answer later: receive buffers are held until there is
// output for them, and a transmit that finds the echo buffer full is held until the guest
// has taken enough of it (back-pressure instead of dropping bytes).
//
// No feature bits (no MULTIPORT, SIZE or EMERG_WRITE), so the config space is unused. The
// device sees at most PREFIX bytes of each transmit (prefix-len); a longer one is refused with
// a log line and echoed only in its first PREFIX bytes, never silently cut.
import { answer, bytes, defineDevice, hold, log, type Action, type Event, type Request } from '@vhost-wasm/sdk';

const RX = 0;
const TX = 1;
/** Readable bytes of a transmit the device sees (the WIT's maximum prefix). */
const PREFIX = 4096;
/** Echo bytes waiting for receive buffers; a transmit that would overflow it is held. */
const MAX_PENDING = 64 * 1024;

/** Receive buffers the guest gave us, oldest first. */
let rxHeld: Request[] = [];
/** Transmits held for lack of room in `pending`, oldest first. */
let txHeld: Request[] = [];
/** Echo output not yet delivered, as a queue of chunks. */
let pending: Uint8Array[] = [];
let pendingBytes = 0;

function take(max: number): Uint8Array {
  const out = new Uint8Array(Math.min(max, pendingBytes));
  let at = 0;
  while (at < out.length) {
    const head = pending[0];
    const n = Math.min(head.length, out.length - at);
    out.set(head.subarray(0, n), at);
    at += n;
    if (n === head.length) pending.shift();
    else pending[0] = head.subarray(n);
  }
  pendingBytes -= out.length;
  return out;
}

function visible(r: Request): Uint8Array {
  if (r.readableLen > PREFIX) log.warn(`console transmit of ${r.readableLen} bytes: only the first ${PREFIX} are echoed`);
  return r.prefix;
}

/** Accept transmit `r` if its bytes fit; the answer completes it (used length 0). */
function tryTransmit(r: Request): Action | null {
  const data = visible(r);
  if (pendingBytes + data.length > MAX_PENDING) return null;
  if (data.length) pending.push(data);
  pendingBytes += data.length;
  return answer(r.id, []);
}

/** Fill held receive buffers from the pending output, then admit held transmits; repeat. */
function deliver(out: Action[]): void {
  for (;;) {
    while (rxHeld.length && pendingBytes) {
      const r = rxHeld.shift()!;
      out.push(answer(r.id, [bytes(take(r.writableLen))]));
    }
    let admitted = false;
    while (txHeld.length) {
      const a = tryTransmit(txHeld[0]);
      if (!a) break;
      txHeld.shift();
      out.push(a);
      admitted = true;
    }
    if (!admitted || !rxHeld.length || !pendingBytes) return;
  }
}

export const device = defineDevice({
  name: 'console-ts',
  version: '0.1.0',
  info: { deviceId: 3, numQueues: 2, maxQueueSize: 256, prefixLen: PREFIX, queuesIndependent: false },
  reset() {
    // The host drops held requests with the rings.
    rxHeld = [];
    txHeld = [];
    pending = [];
    pendingBytes = 0;
  },
  // The whole batch at once: a request that arrives and is answered in the same call must get
  // only its answer, so holds are decided after delivering (one action per request).
  handle(events: Event[]): Action[] {
    const out: Action[] = [];
    const arrived = new Set<number>();
    for (const e of events) {
      if (e.tag !== 'request') throw new Error(`virtio-console got a ${e.tag} event: it does no I/O and asks for no timers`);
      const r = e.val;
      if (r.queue === RX) {
        if (r.writableLen === 0) out.push(answer(r.id, []));
        else rxHeld.push(r);
      } else if (r.queue === TX) {
        // Keep order: behind held transmits, a new one waits too.
        const a = txHeld.length ? null : tryTransmit(r);
        if (a) out.push(a);
        else txHeld.push(r);
      } else {
        throw new Error(`virtio-console has queues 0 and 1 only (request on queue ${r.queue})`);
      }
      arrived.add(r.id);
    }
    deliver(out);
    for (const r of [...rxHeld, ...txHeld]) if (arrived.has(r.id)) out.push(hold(r.id));
    return out;
  },
});
