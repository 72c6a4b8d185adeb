// A host process (python's fcntl) holding a lock on a file of a share, for tests that check the
// guest's locks and the host's exclude each other.
import { spawn } from 'node:child_process';

/** Holds `lockf` (an F_SETLK write lock on bytes 0..3) or `flock` (LOCK_EX) on `path` until the returned function is called. */
export async function hostLock(path: string, how: 'lockf' | 'flock'): Promise<() => Promise<void>> {
  const code = how === 'lockf'
    ? `import fcntl,sys\nf=open(${JSON.stringify(path)},'r+')\nfcntl.lockf(f,fcntl.LOCK_EX,4,0)\nprint('locked',flush=True)\nsys.stdin.read()`
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
