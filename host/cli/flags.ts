// The flags of a subcommand that takes no positionals (serve, upgrade): node's parseArgs, strict.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './args.ts';

/**
 * Parses `args` against `options`. A wrong command line throws UsageError with parseArgs'
 * message less its hint about positionals after `--` (these commands take none).
 */
export function parseFlags<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O) {
  try {
    return parseArgs({ args, strict: true, allowPositionals: false, options }).values;
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/\. To specify.*$/, ''));
  }
}
