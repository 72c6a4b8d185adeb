// A worker-held section copied straight to and from a state memfd (host/migration/section-fd.ts):
// the bytes and the CRC-32 match what the streamed container path produces, and a file that
// does not cover the range (a front-end that shrank it) fails the copy instead of passing on
// the zeros the fault guard filled in.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { crc32c } from '../host/migration/checksum.ts';
import { native } from '../host/native/index.ts';
import { copyFileToSection, copySectionToFile } from '../host/migration/section-fd.ts';
import type { WorkerStateSection } from '../host/migration/section.ts';

const direct = <T>(fn: () => T): T => fn();

/** A section over `bytes` (reads are views, as a memory disk's are); loads go into `into`. */
function section(bytes: Uint8Array, into = new Uint8Array(bytes.length)): WorkerStateSection & { into: Uint8Array } {
  return {
    id: 0x100,
    name: 'storage',
    into,
    size: () => bytes.length,
    read: (o, l) => bytes.subarray(o, o + l),
    beginLoad: () => {},
    write: (o, c) => into.set(c, o),
    finish: () => null,
    abort: () => {},
  };
}

test('a section copied into a memfd at an odd offset and back: same bytes, the CRC continued as the stream would', (t) => {
  const data = randomBytes(3 * 4096 + 123);
  const head = Buffer.from('header bytes before the section');
  const fd = native.memfdCreate('test-section-fd', false);
  try {
    native.ftruncate(fd, head.length + data.length);
    native.pwrite(fd, head, 0);
    const seed = crc32c(head);
    const saved = copySectionToFile(section(data), fd, head.length, data.length, seed, direct);
    t.is(saved, crc32c(data, seed), 'the CRC of header + section, as saveContainer chains it');
    const back = new Uint8Array(data.length);
    native.pread(fd, back, head.length);
    t.deepEqual(Buffer.from(back), data);

    const target = section(new Uint8Array(data.length));
    const loaded = copyFileToSection(target, fd, head.length, data.length, seed, direct);
    t.is(loaded, saved);
    t.deepEqual(Buffer.from(target.into), data);
  } finally {
    native.close(fd);
  }
});

test('a file that does not cover the range is refused; one shrunk during the copy fails it (the fault guard\'s zeros are not taken for state)', (t) => {
  const data = randomBytes(4 * 4096);
  const fd = native.memfdCreate('test-section-fd-short', false);
  try {
    native.ftruncate(fd, 4096); // one page of the four
    t.throws(() => copyFileToSection(section(data), fd, 0, data.length, 0, direct), { message: /ends past the end of the 4096-byte file/ });
    t.throws(() => copySectionToFile(section(data), fd, 0, data.length, 0, direct), { message: /ends past the end of the 4096-byte file/ });

    // The front-end cuts the file while the worker copies into it.
    native.ftruncate(fd, data.length);
    const s = section(data);
    const read = s.read;
    s.read = (o, l) => {
      native.ftruncate(fd, 4096);
      return read(o, l);
    };
    t.throws(() => copySectionToFile(s, fd, 0, data.length, 0, direct), { message: /state file was shrunk while the section was copied/ });
  } finally {
    native.close(fd);
  }
});
