// Every Unix socket the host listens on (a device's --socket-path, the daemon's control
// socket, a metrics socket) may find its path taken. A socket nobody answers on is what a
// dead server leaves behind and may be replaced; anything else (a live server, a file) must
// be refused with a message, never unlinked.
import { lstatSync, unlinkSync } from 'node:fs';
import { native, errnoCode } from '../native/index.ts';
import { errorText } from '../log/logger.ts';

export interface SocketPathRole {
  /** How messages name the path: `--socket-path /run/x.sock`, `control socket /run/c.sock`. */
  readonly name: string;
  /** Who a live listener would be: "another back-end", "another daemon". */
  readonly rival: string;
  /** What "exists and is not a socket" tells the operator to do, if anything. */
  readonly notSocketHint?: string;
  readonly error: (message: string) => Error;
}

/** Unlinks a stale socket at `path`; throws role.error for anything else that is there. */
export function claimSocketPath(path: string, role: SocketPathRole): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) {
    throw role.error(`${role.name} exists and is not a socket; refusing to replace it${role.notSocketHint ? ` (${role.notSocketHint})` : ''}`);
  }
  let probe = -1;
  try {
    // Without waiting: a live listener that does not accept (its backlog full, its process
    // stopped) must not hang this host's start; a full backlog is as alive as an answer.
    probe = native.connectUnix(path, true);
  } catch (e) {
    const code = errnoCode(e);
    if (code === 'ECONNREFUSED') {
      unlinkSync(path); // stale: its server is gone
      return;
    }
    if (code !== 'EAGAIN' && code !== 'EWOULDBLOCK') throw role.error(`${role.name}: cannot check the existing socket: ${errorText(e)}`);
  }
  if (probe >= 0) native.close(probe);
  throw role.error(`${role.name}: ${role.rival} is already listening there; stop it or choose another path`);
}
