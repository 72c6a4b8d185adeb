// readPipeCrc, the state and pre-copy streams' reader, over a real non-blocking pipe: it reads
// exactly what it is asked for (across waits and pieces), the CRC is the stream's, an early end
// is the caller's error naming how much came, and an empty destination is a no-op: nothing is
// read (the next bytes stay in the pipe) and an ended stream is not reported by it.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { native } from '../host/native/index.ts';
import { loopTurn, readPipeCrc, READ_PIECE, STATE_PIPE_SIZE, StateReader } from '../host/migration/channel.ts';
import { crc32c } from '../host/migration/checksum.ts';

/** A pipe whose writer is driven by the reader's waits: each wait writes the next part, or closes the writer when none is left. */
function feeder(parts: Uint8Array[]): { r: number; waits: () => number; wait: () => Promise<void>; close: () => void } {
  const [r, w] = native.pipe2();
  let wfd: number | null = w;
  let waits = 0;
  return {
    r,
    waits: () => waits,
    wait: async () => {
      waits++;
      const next = parts.shift();
      if (next === undefined) {
        if (wfd !== null) native.close(wfd);
        wfd = null;
        return;
      }
      let at = 0;
      while (at < next.length) {
        const k = native.write(wfd!, next.subarray(at));
        if (k < 0) throw new Error('test pipe full: parts must fit the pipe');
        at += k;
      }
    },
    close: () => {
      native.close(r);
      if (wfd !== null) native.close(wfd);
    },
  };
}

const ended = (got: number) => new Error(`ended after ${got}`);

test('reads exactly the bytes asked for across waits and pieces; the CRC continues the stream\'s', async (t) => {
  // More than a piece (READ_PIECE), written in parts that fit a pipe.
  const data = randomBytes(READ_PIECE + 5000);
  const parts: Uint8Array[] = [];
  for (let at = 0; at < data.length; at += 50_000) parts.push(data.subarray(at, at + 50_000));
  const f = feeder([...parts, Buffer.from('next')]);
  try {
    const head = new Uint8Array(100);
    const rest = new Uint8Array(data.length - 100);
    let crc = await readPipeCrc(f.r, head, 0, f.wait, ended, loopTurn);
    crc = await readPipeCrc(f.r, rest, crc, f.wait, ended, loopTurn);
    t.true(Buffer.from(head).equals(data.subarray(0, 100)));
    t.true(Buffer.from(rest).equals(data.subarray(100)));
    t.is(crc, crc32c(data));
  } finally {
    f.close();
  }
});

test('an end of stream before the destination is full is the caller\'s error, with the bytes that came', async (t) => {
  const f = feeder([randomBytes(1000)]);
  try {
    await t.throwsAsync(readPipeCrc(f.r, new Uint8Array(4096), 0, f.wait, ended, loopTurn), { message: 'ended after 1000' });
  } finally {
    f.close();
  }
});

test('an empty destination is a no-op: the CRC unchanged, nothing read or waited for, and an ended stream is not reported by it', async (t) => {
  const f = feeder([Buffer.from('after'), Buffer.alloc(0)]);
  try {
    // Bytes in the pipe: they stay for the next reader.
    await f.wait();
    t.is(await readPipeCrc(f.r, new Uint8Array(0), 0x1234, f.wait, ended, loopTurn), 0x1234);
    t.is(f.waits(), 1, 'no wait for readiness');
    const next = new Uint8Array(5);
    await readPipeCrc(f.r, next, 0, f.wait, ended, loopTurn);
    t.is(Buffer.from(next).toString(), 'after', 'the empty read took nothing from the pipe');
    // The writer gone: an empty read still succeeds; the next read that wants bytes sees the end.
    await f.wait(); // the empty part
    await f.wait(); // no parts left: the writer closes
    t.is(await readPipeCrc(f.r, new Uint8Array(0), 7, f.wait, ended, loopTurn), 7);
    await t.throwsAsync(readPipeCrc(f.r, new Uint8Array(1), 0, f.wait, ended, loopTurn), { message: 'ended after 0' });
  } finally {
    f.close();
  }
});

test('a reader closed while its event loop turns reads no more: the fd number it had may be another pipe\'s by then', async (t) => {
  // The abort of a LOAD (a disconnect, a replacing SET_DEVICE_STATE_FD) closes the channel at
  // once, and the lowest free fd number goes to the next fd made: here a new pipe holding another
  // connection's bytes. A reader that turns the event loop (every TURN_BYTES read without a
  // wait) must resume with the abort's reason and leave those bytes where they are.
  const [r, w] = native.pipe2();
  const spare: number[] = [];
  let other = null as [number, number] | null;
  // A turn every 64 KiB (TURN_BYTES in the hosts), all of them in the pipe before the read
  // starts: the reader reads them without a wait and turns right after.
  const turnBytes = 64 << 10;
  try {
    const fill = Buffer.alloc(turnBytes, 0xab);
    for (let at = 0; at < fill.length; ) at += native.write(w, fill.subarray(at));
    const reader = new StateReader(r, 1 << 20, STATE_PIPE_SIZE, turnBytes);
    const dst = new Uint8Array(turnBytes + READ_PIECE);
    // Queued before the reader's turn: runs during it.
    setImmediate(() => {
      reader.close(new Error('aborted: the front-end disconnected'));
      // Lower numbers freed by the process's other work are taken first: make pipes until one
      // lands on the reader's old number with its read end.
      for (let i = 0; i < 256 && other === null; i++) {
        const p = native.pipe2();
        if (p[0] === r) other = p;
        else if (p[1] === r) {
          // One number below r was free: keep that read end, give r back for the next pipe's.
          spare.push(p[0]);
          native.close(p[1]);
        } else spare.push(...p);
      }
      if (other !== null) native.write(other[1], Buffer.from('OTHER TENANT'));
    });
    await t.throwsAsync(reader.readCrc(dst, 0), { message: 'aborted: the front-end disconnected' });
    t.is(dst[turnBytes - 1], 0xab, 'the reader had read turnBytes before its turn');
    t.is(dst[turnBytes], 0, 'nothing read past the turn');
    t.not(other, null, 'a new pipe took the closed reader\'s fd number with its read end (the case this guards)');
    const left = new Uint8Array(12);
    t.is(native.read(other![0], left), 12);
    t.is(Buffer.from(left).toString(), 'OTHER TENANT', 'the other pipe\'s bytes stayed');
  } finally {
    for (const fd of [w, ...(other ?? []), ...spare]) native.close(fd);
  }
});
