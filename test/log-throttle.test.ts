// LogThrottle: one line when a condition starts, then at most one per interval carrying the
// count of what it stood for; reset() starts a new episode. Driven by an explicit clock.
import test from 'ava';
import { LogThrottle } from '../host/log/throttle.ts';
import type { Logger } from '../host/log/logger.ts';

function capture(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (m: string) => lines.push(`${level} ${m}`);
  const log: Logger = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), enabled: () => true, child: () => log };
  return { log, lines };
}

test('first hit logs, later hits within the interval are counted into the next line', (t) => {
  const { log, lines } = capture();
  let now = 0;
  const th = new LogThrottle(log, 'warn', 1000, () => now);
  t.true(th.hit('spent'));
  for (let i = 0; i < 500; i++) {
    now += 1;
    t.false(th.hit('spent'));
  }
  now = 1000;
  t.true(th.hit('spent'));
  t.deepEqual(lines, ['warn spent', 'warn spent (500 more like it since the last line)']);
});

test('reset starts a new episode: the next hit logs at once, without an old count', (t) => {
  const { log, lines } = capture();
  let now = 0;
  const th = new LogThrottle(log, 'error', 10_000, () => now);
  th.hit('a');
  now = 5;
  th.hit('a');
  th.reset();
  now = 6;
  t.true(th.hit('b'));
  t.deepEqual(lines, ['error a', 'error b']);
});
