// Writes docs/config.schema.json: the daemon config's JSON Schema, generated from the schema in
// host/daemon/config.ts (test/daemon-config.test.ts fails when the file is not what this writes).
// Run: node --import tsx scripts/config-schema.ts
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configJsonSchema } from '../host/daemon/config.ts';

export const CONFIG_SCHEMA_FILE = join(fileURLToPath(new URL('..', import.meta.url)), 'docs', 'config.schema.json');

/** The file's text: the schema, two-space indented, with a final newline. */
export function configSchemaText(): string {
  return `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(CONFIG_SCHEMA_FILE, configSchemaText());
  process.stdout.write(`wrote ${CONFIG_SCHEMA_FILE}\n`);
}
