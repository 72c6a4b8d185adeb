// --translate-uid / --translate-gid, in virtiofsd 1.13's syntax: how user and group ids are
// translated between the guest and the host, done by the share itself (no user namespace).
//
//   guest:G:H:N          guest ids [G, G+N) are host ids [H, H+N)        (guest -> host)
//   host:H:G:N           host ids [H, H+N) are guest ids [G, G+N)        (host -> guest)
//   squash-guest:G:H:N   guest ids [G, G+N) all become host id H         (guest -> host)
//   squash-host:H:G:N    host ids [H, H+N) all become guest id G         (host -> guest)
//   forbid-guest:G:N     a guest id in [G, G+N) may not own anything: EPERM (guest -> host)
//   map:G:H:N            both directions, 1:1
//
// Guest -> host applies to what the guest sets (the owner of what it creates, chown); host ->
// guest to what it is shown (stat). Ranges of one direction may not overlap (a usage error,
// as in virtiofsd); an id no rule covers passes unchanged.

export type IdMapKind = 'guest' | 'host' | 'squash-guest' | 'squash-host' | 'forbid-guest' | 'map';
const KINDS: readonly IdMapKind[] = ['guest', 'host', 'squash-guest', 'squash-host', 'forbid-guest', 'map'];
const U32 = 2 ** 32;

/** One rule as the CLI gives it (structured-clone friendly). */
export interface IdMapRule {
  kind: IdMapKind;
  /** First id of the source range (guest ids for guest, squash-guest, forbid-guest, map). */
  from: number;
  /** First id of the target range, or the single target of a squash (unused by forbid-guest). */
  to: number;
  count: number;
}

/** Parses one --translate-uid/--translate-gid value; throws an Error saying what is wrong. */
export function parseIdMapRule(text: string): IdMapRule {
  const parts = text.split(':');
  const kind = parts[0] as IdMapKind;
  if (!KINDS.includes(kind)) throw new Error(`"${text}": the type must be one of ${KINDS.join(', ')}`);
  const want = kind === 'forbid-guest' ? 3 : 4;
  if (parts.length !== want) {
    throw new Error(`"${text}": ${kind} takes ${kind === 'forbid-guest' ? 'forbid-guest:<guest base>:<count>' : `${kind}:<source base>:<target base>:<count>`}`);
  }
  const nums = parts.slice(1).map((p) => {
    if (!/^\d+$/.test(p) || Number(p) >= U32) throw new Error(`"${text}": "${p}" is not an id (0-${U32 - 1})`);
    return Number(p);
  });
  const [from, to, count] = kind === 'forbid-guest' ? [nums[0], 0, nums[1]] : nums;
  if (count === 0) throw new Error(`"${text}": the count must be at least 1`);
  if (from + count > U32 || (kind !== 'forbid-guest' && !kind.startsWith('squash') && to + count > U32)) {
    throw new Error(`"${text}": the range runs past ${U32 - 1}`);
  }
  return { kind, from, to, count };
}

interface Span {
  start: number;
  end: number; // exclusive
  /** The target id for `start` (1:1) or the single target (squash); -1: forbidden. */
  to: number;
  squash: boolean;
}

/** The rules of one id kind (uids or gids), ready to translate both ways. */
export class IdMap {
  private readonly toHostSpans: Span[] = [];
  private readonly toGuestSpans: Span[] = [];

  constructor(rules: readonly IdMapRule[], what: string) {
    for (const r of rules) {
      const g = r.kind === 'guest' || r.kind === 'squash-guest' || r.kind === 'forbid-guest' || r.kind === 'map';
      const h = r.kind === 'host' || r.kind === 'squash-host' || r.kind === 'map';
      if (g) this.add(this.toHostSpans, { start: r.from, end: r.from + r.count, to: r.kind === 'forbid-guest' ? -1 : r.to, squash: r.kind === 'squash-guest' }, what, r);
      if (h) {
        const [src, dst] = r.kind === 'map' ? [r.to, r.from] : [r.from, r.to];
        this.add(this.toGuestSpans, { start: src, end: src + r.count, to: dst, squash: r.kind === 'squash-host' }, what, r);
      }
    }
  }

  /** True when no rule was given (every id passes unchanged). */
  get identity(): boolean {
    return this.toHostSpans.length === 0 && this.toGuestSpans.length === 0;
  }

  /** The host id for a guest id, or -1 when the guest may not use it (forbid-guest). */
  toHost(id: number): number {
    return translate(this.toHostSpans, id);
  }

  /** The guest id a host id is shown as. */
  toGuest(id: number): number {
    return translate(this.toGuestSpans, id);
  }

  private add(list: Span[], s: Span, what: string, r: IdMapRule): void {
    const clash = list.find((o) => s.start < o.end && o.start < s.end);
    if (clash) throw new Error(`${what}: ${r.kind}:${r.from}:${r.kind === 'forbid-guest' ? '' : `${r.to}:`}${r.count} overlaps an earlier rule's range [${clash.start}, ${clash.end})`);
    list.push(s);
  }
}

function translate(spans: readonly Span[], id: number): number {
  for (const s of spans) {
    if (id < s.start || id >= s.end) continue;
    if (s.to < 0) return -1;
    return s.squash ? s.to : s.to + (id - s.start);
  }
  return id;
}
