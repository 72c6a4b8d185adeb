// The contract between the guest's /init and the host: where the per-boot
// script lives, and the console markers that frame its output and exit status.

export const SCRIPT_PATH = 'guest/script.sh';
export const START_MARKER = 'GUEST-START';
export const EXIT_MARKER = 'GUEST-EXIT';

/**
 * /init for the busybox initramfs. It never exits (PID 1 exiting panics the
 * kernel) and ends with `poweroff -f`. The stty call is there for its
 * TCSADRAIN: it returns only once the UART has sent everything, so the exit
 * marker cannot be lost to the power-off.
 */
export function initScript(modules: string[]): string {
  return `#!/bin/sh
export PATH=/bin HOME=/ TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /mnt
modprobe -a ${modules.join(' ')} || echo "GUEST-WARN: modprobe failed" >&2
# The firmware leaves the console mid-line: start on a fresh one.
printf '\\n${START_MARKER}\\n'
cd /
sh /${SCRIPT_PATH}
rc=$?
sync
printf '\\n${EXIT_MARKER} %d\\n' "$rc"
stty -F /dev/console onlcr 2>/dev/null
poweroff -f
`;
}

export interface ParsedConsole {
  /** The guest script's exit status, or null when the guest never reported one. */
  exitCode: number | null;
  /** What was printed between the start and exit markers (kernel messages may interleave). */
  scriptOutput: string;
}

/** Reads the markers out of the console text (already normalised to \n line ends). */
export function parseConsole(output: string): ParsedConsole {
  const startRe = new RegExp(`\\n${START_MARKER}\\n`);
  const exitRe = new RegExp(`\\n${EXIT_MARKER} (\\d+)\\n`, 'g');
  const start = startRe.exec(output);
  let exit: RegExpExecArray | null = null;
  for (let m = exitRe.exec(output); m; m = exitRe.exec(output)) exit = m;
  const from = start ? start.index + start[0].length : 0;
  const to = exit && exit.index >= from ? exit.index : output.length;
  return {
    exitCode: exit && start && exit.index >= from ? Number(exit[1]) : null,
    scriptOutput: start ? output.slice(from, to) : '',
  };
}
