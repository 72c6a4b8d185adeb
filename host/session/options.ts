// What a session is told by whoever starts it. Every switch arrives here as a value (the CLI
// builds it from its flags, Host and Listener pass it on); nothing in session/ reads the
// environment, so a test or an embedder sets a switch the way a user does, and two devices in
// one process can differ.

import type { StateSection } from '../migration/section.ts';
import { STATE_PIPE_SIZE } from '../migration/channel.ts';

/** Per-device settings: the CLI's flags, or a Host embedder's DeviceConfig.session. */
export interface SessionSettings {
  /**
   * --state-return-memfd: SAVE into a memfd of our own and return it (reply bit 8 clear)
   * instead of writing into the front-end's fd. The reply then waits until the state is
   * complete (a front-end reads a returned fd to EOF at once).
   */
  stateReturnMemfd: boolean;
  /**
   * --experimental-rfc-state-shm: offer the 2023 RFC's shared-memory state protocol (protocol
   * feature bit 63, requests 1000-1002; docs/migration.md). Off unless asked for.
   */
  experimentalRfcStateShm: boolean;
  /**
   * --state-pipe-size: capacity asked for each state pipe the front-end hands us
   * (F_SETPIPE_SZ; 0 leaves the pipe as it came).
   */
  statePipeBytes: number;
  /** Host-held resources (storage backings) saved and loaded next to the device's own bytes. */
  stateSections?: () => StateSection[];
}

/** What a session does when nothing was asked for. */
export const DEFAULT_SESSION_SETTINGS: SessionSettings = {
  stateReturnMemfd: false,
  experimentalRfcStateShm: false,
  statePipeBytes: STATE_PIPE_SIZE,
};

export interface SessionOptions extends SessionSettings {
  label: string;
  /** The connection comes from a host handover: nothing is read until BackendSession.restore() ran. */
  restoring?: boolean;
  /** Called once the connection is gone and everything it held is released. */
  onClosed?: (reason: string | null) => void;
}
