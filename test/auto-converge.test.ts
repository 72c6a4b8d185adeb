// Pre-copy's auto-converge policy (host/migration/auto-converge.ts) on a real token bucket: when
// it engages, how it tightens, its floor, and that every way a pre-copy ends lifts it. The clock
// is the policy's input (round sizes over time), so it is given; nothing here waits on time.
import test from 'ava';
import { NO_THROTTLE, TokenBucket } from '../host/limits/token-bucket.ts';
import { AutoConverge, ENGAGE_FLOOR_BYTES, MIN_RATE } from '../host/migration/auto-converge.ts';

const MIB = 1 << 20;

function setup() {
  let now = 0;
  const bucket = TokenBucket.create(NO_THROTTLE);
  const lines: string[] = [];
  const ac = new AutoConverge(bucket, { info: (m) => lines.push(m) }, () => now);
  return { bucket, lines, ac, advance: (ms: number) => (now += ms) };
}

test('rounds that halve never throttle; one that does not engages a quarter of the write rate, then each round over the floor halves it', (t) => {
  const { bucket, lines, ac, advance } = setup();
  ac.start();
  advance(1000);
  t.is(ac.roundTaken(64 * MIB), 0, 'nothing to compare the first round with');
  advance(500);
  t.is(ac.roundTaken(30 * MIB), 0, 'shrank by more than half');
  advance(250);
  // 20 MiB written in 250 ms: 80 MiB/s; a quarter of it.
  t.is(ac.roundTaken(20 * MIB), 20 * MIB);
  t.deepEqual(bucket.limits(), { iops: 0, iopsBurst: 0, bytesPerSecond: 20 * MIB, bytesBurst: 2 * MIB });
  t.regex(lines.join('\n'), /round 3 carries 20971520 bytes after 31457280 .* throttled to 20971520 bytes\/s/);
  advance(250);
  t.is(ac.roundTaken(12 * MIB), 10 * MIB, 'still 1 MiB or more: half the rate');
  advance(250);
  t.is(ac.roundTaken(2 * MIB), 5 * MIB, 'halving now, but still over the floor: half again');
  t.regex(lines.at(-1)!, /round 5 carries 2097152 bytes after 12582912 bytes \(still 1 MiB or more while throttled\): guest writes throttled to 5242880 bytes\/s/);
  advance(250);
  t.is(ac.roundTaken(ENGAGE_FLOOR_BYTES - 4096), 5 * MIB, 'under the floor: the rate stays');
  t.is(bucket.limits().bytesPerSecond, 5 * MIB);
  ac.release('the pre-copy ended');
  t.deepEqual(bucket.limits(), NO_THROTTLE);
  t.deepEqual(ac.state, { rate: 0, rounds: 0 });
  t.regex(lines.at(-1)!, /throttle lifted \(the pre-copy ended\)/);
});

test('small rounds never engage it; the rate never goes below the floor; a new pre-copy starts unthrottled', (t) => {
  const { bucket, ac, advance } = setup();
  ac.start();
  advance(100);
  ac.roundTaken(ENGAGE_FLOOR_BYTES - 4096);
  advance(100);
  t.is(ac.roundTaken(ENGAGE_FLOOR_BYTES - 4096), 0, 'below the floor: a few ms with the rings stopped');
  advance(10_000);
  // 2 MiB in 10 s is 0.2 MiB/s: a quarter of it is under the floor.
  t.is(ac.roundTaken(2 * MIB), MIN_RATE);
  advance(100);
  t.is(ac.roundTaken(2 * MIB), MIN_RATE, 'halving stops at the floor');
  ac.start();
  t.deepEqual(bucket.limits(), NO_THROTTLE, 'a new pre-copy lifts what the last one left');
});
