// Dirty-page logging (LOG_SHMFD, SET_LOG_BASE, VHOST_F_LOG_ALL) against a real host process:
// every page the back-end writes after logging starts is marked, nothing else is, and clearing
// LOG_ALL stops it. Guest RAM is ours, so the test knows exactly which pages were written.
import test from 'ava';
import type { HostProcess } from './helpers/host-process.ts';
import { ProtocolFeature, featureBit } from '../host/protocol/constants.ts';
import { VirtioFeature } from '../host/device/features.ts';
import type { VhostUserFrontend } from '../host/frontend/driver.ts';
import { connect, startBigHost } from './devices/migration-helpers.ts';

let h: HostProcess;
test.before(async () => {
  h = await startBigHost({ stateBytes: 4096 });
});
test.after.always(async () => {
  await h?.stop();
});

const PAGE = 4096;
const pagesOf = (gpa: number, len: number) => {
  const out: number[] = [];
  for (let p = Math.floor(gpa / PAGE); p <= Math.floor((gpa + len - 1) / PAGE); p++) out.push(p);
  return out;
};

/** GPA where `needle` occurs the n-th time in guest RAM (the device's echo is the 2nd: after the readable copy). */
function locate(fe: VhostUserFrontend, needle: Buffer, nth: number): number {
  let seen = 0;
  for (const r of fe.memory.regions) {
    const b = Buffer.from(r.bytes.buffer, r.bytes.byteOffset, r.bytes.length);
    for (let i = b.indexOf(needle); i >= 0; i = b.indexOf(needle, i + 1)) {
      if (++seen === nth) return r.gpa + i;
    }
  }
  throw new Error(`${needle.length}-byte needle occurs ${seen} times, wanted #${nth}`);
}

test.serial('pages written after LOG_ALL are marked, nothing else; clearing LOG_ALL stops it', async (t) => {
  // Ring of 256: its descriptor table fills a page of its own, which the device never writes.
  const fe = await connect(h, { queues: [256] });
  try {
    t.not(fe.offeredFeatures & (1n << 26n), 0n, 'LOG_ALL (bit 26, as linux/vhost.h and QEMU number it) offered');
    t.is(VirtioFeature.LOG_ALL, 26);
    t.not(fe.offeredProtocolFeatures & featureBit(ProtocolFeature.LOG_SHMFD), 0n, 'LOG_SHMFD offered');
    const q = fe.queues[0];
    // Before logging: nothing to mark.
    await q.submit([Buffer.from('warm-up')], 64);
    const log = await fe.startDirtyLog();
    await h.waitForLog(/dirty logging on/);
    t.deepEqual(log.pages(), [], 'starting the log marks nothing by itself');

    const payload = Buffer.alloc(10_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) & 0xff;
    payload.write('UNIQUE-MARKER-1', 0);
    const r = await q.submit([payload], 8 + payload.length);
    t.is(r.len, 8 + payload.length);
    const writable = locate(fe, payload, 2) - 8;
    const usedRing = q.ring.usedGpa;
    const usedLen = 4 + 8 * 256 + 2;
    const expectedData = pagesOf(writable, 8 + payload.length);
    const usedPages = pagesOf(usedRing, usedLen);
    const dirty = log.pages(true);
    for (const p of expectedData) t.true(dirty.includes(p), `page ${p} of the response buffer is marked`);
    t.true(pagesOf(usedRing, 4).every((p) => dirty.includes(p)), 'the used ring header page is marked');
    const allowed = new Set([...expectedData, ...usedPages]);
    t.deepEqual(dirty.filter((p) => !allowed.has(p)), [], 'only written pages are marked');
    const descPage = Math.floor(q.ring.descGpa / PAGE);
    t.false(dirty.includes(descPage), 'the descriptor table (never written by the device) is not marked');
    const readable = locate(fe, payload, 1);
    const readOnly = pagesOf(readable, payload.length).filter((p) => !allowed.has(p));
    t.true(readOnly.length > 0, 'the request buffer has pages of its own');
    t.true(readOnly.every((p) => !dirty.includes(p)), 'pages the device only read are not marked');

    // Clear LOG_ALL with SET_FEATURES only (the ring keeps its log flag): marking stops.
    const kept = await fe.stopDirtyLog(false);
    await h.waitForLog(/dirty logging off/);
    // The previous request's tail (re-arming notifications writes avail_event in the used ring)
    // may have been marked after the clear above; it happened before LOG_ALL was cleared (the
    // worker runs in order and SET_FEATURES was acked), so clearing now leaves only what the
    // next request would mark.
    kept!.pages(true);
    await q.submit([Buffer.from('UNIQUE-MARKER-2 after stop')], 64);
    t.deepEqual(kept!.pages(), [], 'nothing marked once LOG_ALL is cleared');
    kept!.close();

    // And on again, through a new SET_LOG_BASE (QEMU re-sends it when it resizes the log).
    const log2 = await fe.startDirtyLog();
    await q.submit([Buffer.from('UNIQUE-MARKER-3')], 64);
    t.true(log2.pages().length > 0);
  } finally {
    await fe.close();
  }
});
