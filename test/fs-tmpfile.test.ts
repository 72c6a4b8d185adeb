// O_TMPFILE on the share, through a real host process and our virtio-fs front-end. The guest
// kernel asks for an unnamed file with FUSE_TMPFILE (opcode 51, a fuse_create_in and a name);
// Rust virtiofsd 1.13 answers it ENOSYS (its FileSystem::tmpfile is not implemented), which the
// kernel remembers (fc->no_tmpfile) and turns into EOPNOTSUPP for open(O_TMPFILE). We refuse it
// the same way, so a guest sees the same on both. A CREATE that carries O_TMPFILE's bits (the
// kernel never sends one; a hostile guest may) makes the named regular file CREATE asks for:
// the host opens with only the access and O_APPEND/O_TRUNC/O_SYNC bits, never O_TMPFILE or
// O_DIRECTORY.
import test from 'ava';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { nodeOf, u32s, O } from './helpers/fuse.ts';
import { fsTestHost } from './helpers/fs-test-host.ts';

const TMPFILE = 51;
const ENOSYS = 38;
/** Linux's O_TMPFILE: __O_TMPFILE | O_DIRECTORY. */
const O_TMPFILE = 0o20000000 | 0o200000;

test('FUSE_TMPFILE answers ENOSYS as virtiofsd 1.13 does (the guest then says EOPNOTSUPP); a CREATE with O_TMPFILE bits makes a plain named file', async (t) => {
  const { dir, c } = await fsTestHost(t, 'fs-tmpfile-', {});
  const tmpfileIn = Buffer.concat([u32s(O_TMPFILE | O.RDWR, 0o600, 0o022, 0), Buffer.from('/\0')]);
  t.is((await c.req(TMPFILE, 1n, tmpfileIn)).error, ENOSYS, 'refused as virtiofsd refuses it');
  t.is((await c.req(TMPFILE, 1n, tmpfileIn)).error, ENOSYS, 'and again (the kernel asks once; a guest may ask more)');
  t.deepEqual(readdirSync(dir), [], 'nothing was made in the share');
  const made = await c.create(1n, 'named', O_TMPFILE | O.RDWR, 0o600);
  t.is(made.error, 0, 'CREATE with O_TMPFILE bits');
  t.true(statSync(join(dir, 'named')).isFile(), 'a named regular file, as CREATE asks');
  t.is((await c.getattr(nodeOf(made))).error, 0, 'the device serves on');
});
