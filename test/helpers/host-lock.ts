// A host process (python's fcntl) holding a lock on a file of a share, for tests that check the
// guest's locks and the host's exclude each other.
import { execFileSync, spawn } from 'node:child_process';

/** Holds `lockf` (an F_SETLK write lock on `range`, bytes 0..3 unless told) or `flock` (LOCK_EX) on `path` until the returned function is called. */
export async function hostLock(path: string, how: 'lockf' | 'flock', range: { start: bigint; len: bigint } = { start: 0n, len: 4n }): Promise<() => Promise<void>> {
  const code = how === 'lockf'
    ? `import fcntl,sys\nf=open(${JSON.stringify(path)},'r+')\nfcntl.lockf(f,fcntl.LOCK_EX,${range.len},${range.start})\nprint('locked',flush=True)\nsys.stdin.read()`
    : `import fcntl,sys\nf=open(${JSON.stringify(path)},'r')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()`;
  const p = spawn('python3', ['-c', code], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    p.stdout.once('data', () => resolve());
    p.once('exit', (c) => reject(new Error(`python exited ${c}`)));
  });
  return async () => {
    const done = new Promise((r) => p.once('exit', r));
    p.stdin.end();
    await done;
  };
}

/** What a host process gets trying, without waiting, `lockf` of bytes 0..3 or `flock` of the whole file: 'locked' or 'busy'. */
export function hostTryLock(path: string, how: 'lockf' | 'flock'): 'locked' | 'busy' {
  const code = how === 'lockf'
    ? `import fcntl\nf=open(${JSON.stringify(path)},'r+')\ntry:\n  fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB,4,0); print('locked')\nexcept OSError: print('busy')`
    : `import fcntl\nf=open(${JSON.stringify(path)},'r')\ntry:\n  fcntl.flock(f,fcntl.LOCK_EX|fcntl.LOCK_NB); print('locked')\nexcept OSError: print('busy')`;
  return execFileSync('python3', ['-c', code], { encoding: 'utf8' }).trim() as 'locked' | 'busy';
}
