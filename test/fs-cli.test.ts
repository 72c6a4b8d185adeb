// The filesystem grant's command line: --shared-dir DIR [--read-only | --readonly] [--tag NAME].
import test from 'ava';
import { HELP, parseCli, UsageError } from '../host/cli/args.ts';

const base = ['--socket-path', '/tmp/s', '--plugin', 'fs.wasm'];

test('--shared-dir with --read-only and --tag', (t) => {
  t.deepEqual(parseCli([...base, '--shared-dir', '/srv/share']).filesystem, { dir: '/srv/share', readOnly: false });
  t.deepEqual(parseCli([...base, '--shared-dir', '/srv/share', '--read-only', '--tag', 'data']).filesystem, {
    dir: '/srv/share',
    readOnly: true,
    tag: 'data',
  });
  t.is(parseCli(base).filesystem, null);
});

test('a tag without a share, a bad tag, --read-only with nothing to apply to', (t) => {
  t.throws(() => parseCli([...base, '--tag', 'x']), { instanceOf: UsageError, message: /--tag names a --shared-dir/ });
  t.throws(() => parseCli([...base, '--shared-dir', '/s', '--tag', 'x'.repeat(37)]), { instanceOf: UsageError, message: /1-36 bytes/ });
  t.throws(() => parseCli([...base, '--shared-dir', '/s', '--tag', '']), { instanceOf: UsageError, message: /1-36 bytes/ });
  t.throws(() => parseCli([...base, '--shared-dir', '']), { instanceOf: UsageError, message: /empty/ });
  t.throws(() => parseCli([...base, '--read-only']), { instanceOf: UsageError, message: /--read-only applies to --storage or --shared-dir/ });
});

test('--migration-on-error abort|guest-error (default abort) needs --shared-dir', (t) => {
  t.deepEqual(parseCli([...base, '--shared-dir', '/s', '--migration-on-error', 'guest-error']).filesystem, {
    dir: '/s',
    readOnly: false,
    migrationOnError: 'guest-error',
  });
  t.like(parseCli([...base, '--shared-dir', '/s', '--migration-on-error', 'abort']).filesystem, { migrationOnError: 'abort' });
  t.is(parseCli([...base, '--shared-dir', '/s']).filesystem?.migrationOnError, undefined, 'unset: the share defaults to abort');
  t.throws(() => parseCli([...base, '--shared-dir', '/s', '--migration-on-error', 'guest_error']), {
    instanceOf: UsageError,
    message: /--migration-on-error: "guest_error" is not one of abort, guest-error/,
  });
  t.throws(() => parseCli([...base, '--migration-on-error', 'abort']), { instanceOf: UsageError, message: /applies to --shared-dir/ });
});

test('--xattr (virtiofsd\'s spelling) needs --shared-dir; off by default', (t) => {
  t.like(parseCli([...base, '--shared-dir', '/s', '--xattr']).filesystem, { dir: '/s', xattr: true });
  t.is(parseCli([...base, '--shared-dir', '/s']).filesystem?.xattr, undefined, 'unset: ENOSYS to the guest');
  t.throws(() => parseCli([...base, '--xattr']), { instanceOf: UsageError, message: /--xattr applies to --shared-dir/ });
  t.regex(HELP, /--xattr .*\n.*trusted\. and security\. are refused/s);
});

test('--posix-acl (virtiofsd\'s spelling) implies --xattr, needs --shared-dir and refuses --translate-uid/--translate-gid as virtiofsd does', (t) => {
  t.like(parseCli([...base, '--shared-dir', '/s', '--posix-acl']).filesystem, { dir: '/s', xattr: true, posixAcl: true });
  t.like(parseCli([...base, '--shared-dir', '/s', '--posix-acl', '--xattr']).filesystem, { xattr: true, posixAcl: true });
  t.is(parseCli([...base, '--shared-dir', '/s', '--xattr']).filesystem?.posixAcl, undefined, 'unset: the ACL names are EOPNOTSUPP');
  t.throws(() => parseCli([...base, '--posix-acl']), { instanceOf: UsageError, message: /--posix-acl applies to --shared-dir/ });
  for (const flag of ['--translate-uid', '--translate-gid']) {
    t.throws(() => parseCli([...base, '--shared-dir', '/s', '--posix-acl', flag, 'map:0:1000:1']), {
      instanceOf: UsageError,
      message: /--posix-acl: cannot go with --translate-uid or --translate-gid: ACL entries name host ids/,
    });
  }
  t.regex(HELP, /--posix-acl .*implies --xattr/s);
});

test('--inode-file-handles never|prefer|mandatory (virtiofsd\'s spelling, default prefer) needs --shared-dir', (t) => {
  t.like(parseCli([...base, '--shared-dir', '/s', '--inode-file-handles', 'mandatory']).filesystem, { dir: '/s', inodeFileHandles: 'mandatory' });
  t.like(parseCli([...base, '--shared-dir', '/s', '--inode-file-handles=never']).filesystem, { inodeFileHandles: 'never' });
  t.is(parseCli([...base, '--shared-dir', '/s']).filesystem?.inodeFileHandles, undefined, 'unset: the share prefers handles');
  t.throws(() => parseCli([...base, '--shared-dir', '/s', '--inode-file-handles', 'always']), {
    instanceOf: UsageError,
    message: /--inode-file-handles: "always" is not one of never, prefer, mandatory/,
  });
  t.throws(() => parseCli([...base, '--inode-file-handles', 'never']), { instanceOf: UsageError, message: /applies to --shared-dir/ });
  t.regex(HELP, /--inode-file-handles never\|prefer\|mandatory\n.*CAP_DAC_READ_SEARCH/s);
});

test('--readonly (virtiofsd\'s spelling, which libvirt 11 passes for <readonly/>) is --read-only for --shared-dir only', (t) => {
  t.deepEqual(parseCli([...base, '--shared-dir', '/s', '--readonly']).filesystem, { dir: '/s', readOnly: true });
  t.deepEqual(parseCli([...base, '--shared-dir', '/s', '--read-only', '--readonly']).filesystem, { dir: '/s', readOnly: true }, 'both spellings at once');
  t.deepEqual(parseCli([...base, '--shared-dir', '/s', '--read-only']).filesystem, { dir: '/s', readOnly: true }, 'ours still works');
  t.throws(() => parseCli([...base, '--readonly']), { instanceOf: UsageError, message: /--readonly is virtiofsd's spelling for --shared-dir: give --shared-dir DIR too$/ });
  t.throws(() => parseCli([...base, '--storage', '/tmp/disk.img', '--readonly']), {
    instanceOf: UsageError,
    message: /--readonly is virtiofsd's spelling for --shared-dir: .*\(for --storage, write --read-only\)/,
  });
  t.regex(HELP, /--readonly +virtiofsd's spelling of --read-only for --shared-dir/);
});
