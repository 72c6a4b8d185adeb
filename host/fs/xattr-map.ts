// --xattrmap, in virtiofsd's syntax: how extended attribute names are translated between the
// guest ("client") and the host ("server"). A map is a list of rules, each written
//   <sep>type<sep>scope<sep>key<sep>prepend<sep>
// where <sep> is the rule's first character (any one but white space) and rules follow one
// another, with or without white space between them (virtiofsd's README writes one a line).
// Parsed as virtiofsd 1.13's xattrmap.rs parses it: the map trimmed, ASCII white space skipped
// between rules, each rule's type read first; an empty prepend accepted.
// type: prefix | ok | bad | unsupported; scope: client | server | all.
//
// The last rule may instead be virtiofsd's shorthand <sep>map<sep>key<sep>prepend<sep>, which
// stands for the rules virtiofsd 1.13 expands it to (src/passthrough/xattrmap.rs there):
//   key empty:  :prefix:all::prepend:  :bad:all:::
//     (every guest name goes under prepend; host names without it are hidden)
//   key given:  :prefix:all:key:prepend:  :bad:all:prepend:key:  :ok:all:::
//     (key names go under prepend; the guest may not use prepend names itself, host names
//     in key that are not under prepend are hidden; everything else passes)
// Only one map rule, and only last: virtiofsd refuses anything after it.
//
// A name from the guest (get, set, remove) is checked against the client-scope rules in order;
// the first whose `key` starts the name decides: prefix: `prepend` is put in front of it;
// ok: it passes as is; bad: EPERM; unsupported: EOPNOTSUPP. A name from the host (list) is
// checked against the server-scope rules, matched on `prepend`: prefix: `prepend` is taken off;
// ok: as is; bad and unsupported: hidden. A name no rule matches is refused (EPERM) or hidden.
//
// Without --xattrmap the share behaves as the map
//   :bad:all:trusted.:trusted.::bad:all:security.:security.::ok:all:::
// (host/fs/xattr.ts says why those two namespaces stay on the host).

import { mapNameList } from './xattr.ts';

export type XattrRuleType = 'prefix' | 'ok' | 'bad' | 'unsupported';

export interface XattrRule {
  type: XattrRuleType;
  client: boolean;
  server: boolean;
  key: string;
  prepend: string;
}

const ASCII_SPACE = new Set([' ', '\t', '\n', '\f', '\r']);
const TYPES: readonly XattrRuleType[] = ['prefix', 'ok', 'bad', 'unsupported'];
const EPERM = 1;
const EOPNOTSUPP = 95;

/** Parses a --xattrmap value; throws an Error naming the rule that is wrong. */
export function parseXattrMap(input: string): XattrRule[] {
  const rules: XattrRule[] = [];
  // As virtiofsd 1.13: the whole map trimmed first (str::trim: Unicode white space too), then
  // ASCII white space skipped between rules (a map written one rule a line); the separator is
  // each rule's first other character.
  const text = input.trim();
  let at = 0;
  const skipSpace = () => {
    while (at < text.length && ASCII_SPACE.has(text[at])) at++;
  };
  for (skipSpace(); at < text.length; skipSpace()) {
    const n = rules.length + 1;
    const sep = text[at++];
    // Field by field, the type first: only it says how many fields follow (a separator that is
    // a letter of "map" must not make a rule look like a map rule, or the reverse).
    const field = (form: string): string => {
      const e = text.indexOf(sep, at);
      if (e < 0) throw new Error(`--xattrmap: rule ${n} is incomplete (it should read ${form.replaceAll(':', () => sep)})`);
      const f = text.slice(at, e);
      at = e + 1;
      return f;
    };
    const type = field(':type:scope:key:prepend:');
    if (type === 'map') {
      const key = field(':map:key:prepend:');
      const prepend = field(':map:key:prepend:');
      if (at < text.length) throw new Error(`--xattrmap: rule ${n}: a "map" rule must be the last rule (virtiofsd refuses rules after it); move it to the end`);
      rules.push(...expandMap(key, prepend));
      break;
    }
    if (!TYPES.includes(type as XattrRuleType)) throw new Error(`--xattrmap: rule ${n}: "${type}" is not one of ${TYPES.join(', ')}, map`);
    const form = `:${type}:scope:key:prepend:`;
    const scope = field(form);
    if (scope !== 'client' && scope !== 'server' && scope !== 'all') throw new Error(`--xattrmap: rule ${n}: scope "${scope}" is not one of client, server, all`);
    const key = field(form);
    const prepend = field(form);
    // An empty prepend is accepted, as virtiofsd accepts it: a prefix rule then passes its
    // client names unchanged and, on the server side, matches (and shows) every host name.
    rules.push({ type: type as XattrRuleType, client: scope !== 'server', server: scope !== 'client', key, prepend });
  }
  if (rules.length === 0) throw new Error('--xattrmap: no rules');
  return rules;
}

/** The rules virtiofsd 1.13 puts in place of `:map:key:prepend:` (see the top of this file). */
function expandMap(key: string, prepend: string): XattrRule[] {
  const all = { client: true, server: true };
  const prefix: XattrRule = { type: 'prefix', ...all, key, prepend };
  if (key === '') return [prefix, { type: 'bad', ...all, key: '', prepend: '' }];
  return [prefix, { type: 'bad', ...all, key: prepend, prepend: key }, { type: 'ok', ...all, key: '', prepend: '' }];
}

export const DEFAULT_XATTR_RULES: readonly XattrRule[] = [
  { type: 'bad', client: true, server: true, key: 'trusted.', prepend: 'trusted.' },
  { type: 'bad', client: true, server: true, key: 'security.', prepend: 'security.' },
  { type: 'ok', client: true, server: true, key: '', prepend: '' },
];

const bytes = (s: string) => Buffer.from(s, 'utf8');

function startsWith(name: Uint8Array, prefix: Uint8Array): boolean {
  if (name.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (name[i] !== prefix[i]) return false;
  return true;
}

interface Compiled {
  type: XattrRuleType;
  client: boolean;
  server: boolean;
  key: Uint8Array;
  prepend: Uint8Array;
}

export class XattrMap {
  private readonly rules: Compiled[];

  constructor(rules: readonly XattrRule[] = DEFAULT_XATTR_RULES) {
    this.rules = rules.map((r) => ({ ...r, key: bytes(r.key), prepend: bytes(r.prepend) }));
  }

  /** The host name for a guest's name, or the errno that refuses it (EPERM, EOPNOTSUPP). */
  toHost(name: Uint8Array): Uint8Array | number {
    for (const r of this.rules) {
      if (!r.client || !startsWith(name, r.key)) continue;
      switch (r.type) {
        case 'prefix':
          return Buffer.concat([r.prepend, name]);
        case 'ok':
          return name;
        case 'bad':
          return EPERM;
        case 'unsupported':
          return EOPNOTSUPP;
      }
    }
    return EPERM;
  }

  /** The name the guest sees for a host name, or null when it is hidden. */
  toGuest(name: Uint8Array): Uint8Array | null {
    for (const r of this.rules) {
      if (!r.server || !startsWith(name, r.prepend)) continue;
      switch (r.type) {
        case 'prefix':
          return name.subarray(r.prepend.length);
        case 'ok':
          return name;
        default:
          return null;
      }
    }
    return null;
  }

  /**
   * The host name `security.capability` is stored under when the map renames it, else null.
   * The host kernel drops a file's real security.capability when the file is written,
   * truncated or given to another owner; it knows nothing of a renamed one, which the share
   * must then drop itself on the same events (FsShare.dropCapability), as virtiofsd 1.13 does
   * (its xattr_security_capability). A refused name (bad, unsupported) cannot be set by the
   * guest: nothing to drop.
   */
  capabilityHostName(): Uint8Array | null {
    const name = bytes('security.capability');
    const n = this.toHost(name);
    return typeof n === 'number' || Buffer.compare(n, name) === 0 ? null : n;
  }

  /** A listxattr result (names, each NUL-terminated) as the guest sees it. */
  listToGuest(list: Uint8Array): Uint8Array {
    return mapNameList(list, (name) => this.toGuest(name));
  }
}
