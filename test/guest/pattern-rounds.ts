// The guest side of the blk tests that move or kill the back-end under I/O (reconnect, plugin
// upgrade, host take-over): rounds of parallel direct-I/O writes of known patterns, each round
// read back and checked, so that a lost, repeated or misplaced write shows up in the console.

const KiB = 1024;
const MiB = 1024 * KiB;

export const SLOTS = 8;
export const SLOT_BYTES = 64 * KiB;
export const SLOT_BASE = 1 * MiB;

export interface PatternScriptOptions {
  rounds: number;
  /** The guest file of pattern p is /guest/p<p>. */
  patterns: readonly unknown[];
  /** Print a line before the first round (e.g. "IO-START"). */
  startMarker?: string;
  /** Beside the rounds, single direct 4 KiB writes to this block, one after another, "T n" after each. */
  tickBlock?: number;
  /**
   * Beside the rounds, direct 4 KiB reads of this block, one after another: reads on the ring
   * while the round's writes are in flight (a backing with slow writes answers them first).
   */
  readBlock?: number;
}

/**
 * A busybox sh script: each round prints "ROUND r", writes its SLOTS slots from eight dd
 * processes at once (O_DIRECT), waits, reads them back (again eight at once) and prints
 * "BAD r j" for a slot that does not hold its pattern and "ERR r ..." for a failed dd, then
 * "ACK r"; "DONE r" at the end. With a ticker, the gaps between its "T n" lines are the
 * guest-visible pauses.
 */
export function patternRoundsScript(o: PatternScriptOptions): string {
  const n = o.patterns.length;
  const first = SLOT_BASE / (16 * KiB);
  const ticker = o.tickBlock !== undefined;
  const reader = o.readBlock !== undefined;
  return [
    ...o.patterns.map((_, p) => `m${p}=$(md5sum < /guest/p${p} | cut -d' ' -f1)`),
    ...(o.startMarker ? [`echo ${o.startMarker}`] : []),
    ...(ticker
      ? [`( i=0; while [ ! -e /tmp/stop ]; do dd if=/dev/zero of=/dev/vda bs=4k seek=${o.tickBlock} count=1 oflag=direct 2>/dev/null || echo "ERR tick $i"; echo "T $i"; i=$((i+1)); done ) &`, 'ticker=$!']
      : []),
    ...(reader
      ? [`( i=0; while [ ! -e /tmp/stop ]; do dd if=/dev/vda of=/dev/null bs=4k skip=${o.readBlock} count=1 iflag=direct 2>/dev/null || echo "ERR read $i"; i=$((i+1)); done ) &`, 'reader=$!']
      : []),
    'r=0',
    `while [ $r -lt ${o.rounds} ]; do`,
    '  r=$((r+1))',
    '  echo "ROUND $r"',
    '  j=0',
    `  while [ $j -lt ${SLOTS} ]; do`,
    `    p=$(( (r + j) % ${n} ))`,
    `    ( dd if=/guest/p$p of=/dev/vda bs=16k seek=$(( ${first} + j * 4 )) count=4 oflag=direct 2>/tmp/werr$j || echo "ERR $r write $j $(cat /tmp/werr$j)" ) &`,
    '    pids="$pids $!"',
    '    j=$((j+1))',
    '  done',
    '  wait $pids; pids=',
    '  j=0',
    `  while [ $j -lt ${SLOTS} ]; do`,
    `    p=$(( (r + j) % ${n} ))`,
    '    eval want=\\$m$p',
    `    ( got=$(dd if=/dev/vda bs=16k skip=$(( ${first} + j * 4 )) count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1); [ "$got" = "$want" ] || echo "BAD $r $j" ) &`,
    '    pids="$pids $!"',
    '    j=$((j+1))',
    '  done',
    '  wait $pids; pids=',
    '  echo "ACK $r"',
    'done',
    ...(ticker || reader ? ['touch /tmp/stop'] : []),
    ...(ticker ? ['wait $ticker'] : []),
    ...(reader ? ['wait $reader'] : []),
    'echo "DONE $r"',
  ].join('\n');
}
