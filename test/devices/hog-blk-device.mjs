// A device that burns its whole call deadline on every call (issue 13's CPU share: "a plugin
// that burns its whole deadline on every call must not push the other devices' latency up").
// Shaped like virtio-blk (device id 2, one queue) so the C load generator can drive it: every
// request is answered with zeros, so its status byte reads OK, after handle() has spun for
// VHOST_WASM_TEST_HOG_SPIN_MS (default 80) of wall clock; give it a call deadline above that.
// Plain JavaScript, so the built binary's workers load it as a device "module" without tsx.

const spinMs = Number(process.env.VHOST_WASM_TEST_HOG_SPIN_MS ?? 80);

export default function hogBlkDevice() {
  const config = new Uint8Array(16);
  return {
    info: { deviceId: 2, name: 'hog-test', numQueues: 1, maxQueueSize: 1024, features: 0n, configSize: config.length, prefixLen: 0, queuesIndependent: true },
    readConfig: (offset, size) => config.slice(offset, offset + size),
    writeConfig: () => {},
    activate: () => {},
    reset: () => {},
    handle(events) {
      const until = performance.now() + spinMs;
      while (performance.now() < until) {
        // a plugin looping until just before its deadline
      }
      const out = [];
      for (const e of events) {
        if (e.kind !== 'request') continue;
        const len = e.request.writableLen;
        out.push({ kind: 'answer', answer: { id: e.request.id, transfers: [], ops: [], reply: len > 0 ? [{ kind: 'zeroes', len }] : [], lengthAt: null, barrier: false } });
      }
      return out;
    },
    getState: () => ({ bytes: new Uint8Array(0), remaining: 0 }),
    setState: () => {},
    finishLoad: () => null,
  };
}
