// systemd socket activation (sd_listen_fds(3)): the service manager opens the listening sockets
// and passes them as fds 3, 4, ... with LISTEN_FDS (how many), LISTEN_PID (for whom: a child
// that inherits the environment must not take them) and LISTEN_FDNAMES (their
// FileDescriptorName=, colon-separated). A device or the control socket names the socket it
// wants ("systemd": "rng0"); the environment is cleared once read, as sd_listen_fds(1) does, so
// nothing spawned later believes the fds are its own.

import { ConfigError } from './config.ts';

/** First passed fd (SD_LISTEN_FDS_START). */
export const LISTEN_FDS_START = 3;

export interface ActivatedSockets {
  /** The fd passed under `name`, or a ConfigError naming `field` when there is none. */
  take(name: string, field: string): number;
  /** Names passed but not asked for by any device (the operator's unit lists a socket nobody uses). */
  unused(): string[];
}

export function activatedSockets(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ActivatedSockets {
  const byName = new Map<string, number>();
  const count = env.LISTEN_FDS;
  if (count !== undefined) {
    if (env.LISTEN_PID !== String(pid)) {
      // For another process (our parent's, inherited by accident): not ours to use.
      byName.clear();
    } else {
      if (!/^\d{1,4}$/.test(count)) throw new ConfigError('LISTEN_FDS', `"${count}" is not a count of fds`);
      const n = Number(count);
      const names = env.LISTEN_FDNAMES === undefined ? [] : env.LISTEN_FDNAMES.split(':');
      if (env.LISTEN_FDNAMES !== undefined && names.length !== n) {
        throw new ConfigError('LISTEN_FDNAMES', `names ${names.length} sockets, LISTEN_FDS passes ${n}`);
      }
      for (let i = 0; i < n; i++) {
        // Without FileDescriptorName=, systemd names every socket "unknown"; the nth one is then "fd<n>".
        const name = names[i] && names[i] !== 'unknown' ? names[i] : `fd${i}`;
        if (byName.has(name)) throw new ConfigError('LISTEN_FDNAMES', `"${name}" names two sockets; give each FileDescriptorName= its own`);
        byName.set(name, LISTEN_FDS_START + i);
      }
    }
    delete env.LISTEN_FDS;
    delete env.LISTEN_PID;
    delete env.LISTEN_FDNAMES;
  }
  const taken = new Set<string>();
  return {
    take(name, field) {
      const fd = byName.get(name);
      if (fd === undefined) {
        const have = [...byName.keys()];
        throw new ConfigError(
          field,
          have.length === 0
            ? `"${name}": the daemon was not started by systemd socket activation (no LISTEN_FDS for this process)`
            : `"${name}" is not one of the sockets systemd passed (${have.join(', ')})`,
        );
      }
      if (taken.has(name)) throw new ConfigError(field, `"${name}" is already taken by another device`);
      taken.add(name);
      return fd;
    },
    unused: () => [...byName.keys()].filter((n) => !taken.has(n)),
  };
}
