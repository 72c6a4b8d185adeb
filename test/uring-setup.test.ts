// Which kernels get a DEFER_TASKRUN storage ring (host/io/uring-setup.ts): by release string, as
// os.release() gives it. The rule's reason (the eventfd signalling for deferred task work came
// with the flag in 6.1) is in that file.
import test from 'ava';
import { release } from 'node:os';
import { deferTaskrunFits } from '../host/io/uring-setup.ts';
import { native } from '../host/native/index.ts';

test('6.1 and later releases, mainline, stable and distribution-built, get DEFER_TASKRUN', (t) => {
  for (const r of ['6.1.0', '6.1', '6.1.0-18-amd64', '6.1.55-75.123.amzn2023.x86_64', '6.2.0-39-generic', '6.8.0-1012-azure', '6.18.0', '7.0.0-rc1', '10.4.2', '6.12.0+', '6.1-rc1'])
    t.true(deferTaskrunFits(r), r);
});

test('releases before 6.1 (a backport of the flag may lack its eventfd signalling) and unreadable ones get a plain ring', (t) => {
  for (const r of ['6.0.19', '6.0', '5.15.0-91-generic', '5.14.0-362.8.1.el9_3.x86_64', '4.19.0', '3.10.0-1160.el7.x86_64', '', 'linux', '6', '6.x.1', 'v6.1', '16.0a'])
    t.false(deferTaskrunFits(r), JSON.stringify(r));
});

test('this machine: the ring the executor would ask for is what the kernel gives', (t) => {
  const ring = native.uringCreate(4, deferTaskrunFits(release()));
  try {
    t.is(ring.deferTaskrun, deferTaskrunFits(release()), release());
  } finally {
    ring.close();
  }
});
