// The refusal text for a handed memfd that is not on tmpfs/shmem (host/migration/disk-handover.ts):
// memoryFdInfo's fsType is -1 when fstatfs failed, which must not read as a type ("0x-1").
import test from 'ava';
import { notShmemText } from '../host/migration/disk-handover.ts';

test('a handed memfd of unknown filesystem type says the type could not be read, not "type 0x-1"', (t) => {
  const unknown = notShmemText(-1);
  t.notRegex(unknown, /0x-1/);
  t.regex(unknown, /filesystem type could not be read \(fstatfs failed\)/);
  t.regex(notShmemText(0x958458f6), /another filesystem \(type 0x958458f6, not tmpfs\/shmem/, 'a hugetlbfs memfd: its type in hex');
});
