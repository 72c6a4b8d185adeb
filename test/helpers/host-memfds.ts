// What of a named memfd (a front-end's guest RAM) the host process still holds: its mappings
// and its fds, read from /proc, for tests that check guest memory is let go, and when.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** A host child process (HostProcess, MultiHost). */
interface HostChild {
  child: { pid?: number };
}

/** Lines of the host's /proc/PID/maps that map the named memfd. */
export function hostMaps(host: HostChild, name: string): number {
  return readFileSync(`/proc/${host.child.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name}`)).length;
}

/** The host's fds on the named memfd. */
export function hostFds(host: HostChild, name: string): number {
  const pid = host.child.pid!;
  return readdirSync(`/proc/${pid}/fd`).filter((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(`/memfd:${name}`);
    } catch {
      return false;
    }
  }).length;
}
