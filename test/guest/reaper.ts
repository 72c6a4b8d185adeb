// Child processes (QEMU, back-ends) a test process must not leave behind if it
// exits before it could stop them itself.

import type { ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();
let hooked = false;

export function track(child: ChildProcess): void {
  if (!hooked) {
    hooked = true;
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  live.add(child);
  child.once('close', () => live.delete(child));
  child.once('error', () => live.delete(child));
}
