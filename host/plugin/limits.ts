// One budget for everything a plugin allocates when its core instances are created, so
// --memory-limit caps the plugin, not each of its memories: a component may declare many
// core modules and instantiate each many times, and every instance gets its own memories
// and tables. The plan is made before anything is instantiated, from the core modules jco
// extracted and the instantiations its glue performs; the loader then holds the glue to it
// (an instance the plan did not count is refused).
import { moduleAllocations, WASM_PAGE, type Limits, type ModuleAllocations } from './wasm-binary.ts';

/** A C or Rust plugin has 2-3 core instances (its code, plus jco's shims for imports). */
export const MAX_CORE_INSTANCES = 16;
/**
 * Table elements over all tables of all instances. Tables are not linear memory, but V8
 * backs each element with host memory (tens of bytes), so an uncapped table is a memory
 * hole too. C plugins use one indirect-call table of tens to hundreds of entries.
 */
export const MAX_TABLE_ELEMENTS = 1 << 16;

export interface ModuleCaps {
  /** Maximum pages for each memory the module defines. */
  memoryPages: number[];
  /** Maximum elements for each table the module defines. */
  tableElements: number[];
  /** How many instances of this module the glue creates. */
  instances: number;
}

export interface AllocationPlan {
  modules: Map<string, ModuleCaps>;
  /** Sum over all instances of the memory maxima: never above the limit. */
  memoryBytes: number;
  tableElements: number;
  instances: number;
}

/** Module variable -> file name, and how often each variable is instantiated, read from the glue. */
export function glueInstantiations(glue: string): Map<string, number> {
  const names = new Map<string, string>();
  for (const m of glue.matchAll(/\bconst (module\d+) = getCoreModule\('([^'\\]+)'\);/g)) names.set(m[1], m[2]);
  const counts = new Map<string, number>();
  let sites = 0;
  for (const m of glue.matchAll(/\binstantiateCore\((?:yield |await )?(module\d+)\b/g)) {
    const file = names.get(m[1]);
    if (!file) throw new Error(`glue instantiates ${m[1]}, which it never loads`);
    counts.set(file, (counts.get(file) ?? 0) + 1);
    sites++;
  }
  // Fail closed: a call site this scan did not understand would be an instance outside the plan.
  const all = (glue.match(/\binstantiateCore\(/g) ?? []).length;
  if (all !== sites) throw new Error(`glue has ${all} core instantiations, ${sites} understood: unexpected jco output`);
  return counts;
}

interface Demand {
  /** Starting size (pages or elements) of one instance. */
  min: number;
  /** How far one instance may want to grow past min (Infinity without a declared max). */
  want: number;
  /** Instances that share these limits (one compiled module, instantiated n times). */
  weight: number;
  cap: number;
}

/**
 * Max-min fair share of `budget` beyond the minima: every allocation gets what it declares
 * up to an equal share, and what small ones leave is split among the rest. Sum of
 * weight * cap never exceeds the budget.
 */
function share(demands: Demand[], budget: number): void {
  let left = budget - demands.reduce((s, d) => s + d.weight * d.min, 0);
  let open = demands.filter((d) => d.want > 0);
  for (const d of demands) d.cap = d.min;
  while (open.length && left > 0) {
    const weight = open.reduce((s, d) => s + d.weight, 0);
    const each = Math.floor(left / weight);
    if (each === 0) break;
    const satisfied = open.filter((d) => d.want <= each);
    const take = satisfied.length ? satisfied : open;
    for (const d of take) {
      const grant = satisfied.length ? d.want : each;
      d.cap += grant;
      d.want -= grant;
      left -= grant * d.weight;
    }
    open = open.filter((d) => d.want > 0);
  }
}

/** wasm32 memories end at 4 GiB. */
const MAX_PAGES = 65536;

function demandsOf(list: Limits[], weight: number, ceiling: number): Demand[] {
  return list.map((l) => ({ min: l.min, want: Math.max(0, Math.min(l.max ?? Infinity, ceiling) - l.min), weight, cap: 0 }));
}

/**
 * The caps for every core module, or an Error saying which budget the component does not
 * fit in. `memoryLimitBytes` covers all linear memories of all instances.
 */
export function planAllocations(coreModules: Record<string, Uint8Array>, glue: string, memoryLimitBytes: number): AllocationPlan {
  const pageBudget = Math.floor(memoryLimitBytes / WASM_PAGE);
  if (pageBudget < 1) throw new Error(`memory limit ${memoryLimitBytes} is below one wasm page (${WASM_PAGE} bytes)`);
  const counts = glueInstantiations(glue);
  const instances = [...counts.values()].reduce((a, b) => a + b, 0);
  if (instances > MAX_CORE_INSTANCES) {
    throw new Error(`creates ${instances} core wasm instances; a plugin may have at most ${MAX_CORE_INSTANCES}`);
  }
  const parsed = new Map<string, { alloc: ModuleAllocations; mem: Demand[]; tab: Demand[] }>();
  for (const [name, bytes] of Object.entries(coreModules)) {
    let alloc: ModuleAllocations;
    try {
      alloc = moduleAllocations(bytes);
    } catch (e) {
      throw new Error(`core module ${name}: ${(e as Error).message}`);
    }
    const weight = counts.get(name) ?? 0;
    parsed.set(name, { alloc, mem: demandsOf(alloc.memories, weight, MAX_PAGES), tab: demandsOf(alloc.tables, weight, MAX_TABLE_ELEMENTS) });
  }
  for (const name of counts.keys()) if (!parsed.has(name)) throw new Error(`glue instantiates unknown core module ${name}`);
  const mem = [...parsed.values()].flatMap((p) => p.mem);
  const tab = [...parsed.values()].flatMap((p) => p.tab);
  const minPages = mem.reduce((s, d) => s + d.weight * d.min, 0);
  if (minPages > pageBudget) {
    throw new Error(
      `needs ${minPages * WASM_PAGE} bytes of linear memory at start (${mem.reduce((s, d) => s + d.weight, 0)} memories in ${instances} core instances), ` +
        `more than the memory limit of ${pageBudget * WASM_PAGE} bytes (raise --memory-limit if the plugin is trusted to)`,
    );
  }
  const minElements = tab.reduce((s, d) => s + d.weight * d.min, 0);
  if (minElements > MAX_TABLE_ELEMENTS) {
    throw new Error(`its tables need ${minElements} elements at start; a plugin may have at most ${MAX_TABLE_ELEMENTS} in all`);
  }
  share(mem, pageBudget);
  share(tab, MAX_TABLE_ELEMENTS);
  const modules = new Map<string, ModuleCaps>();
  for (const [name, p] of parsed) {
    modules.set(name, { memoryPages: p.mem.map((d) => d.cap), tableElements: p.tab.map((d) => d.cap), instances: counts.get(name) ?? 0 });
  }
  return {
    modules,
    memoryBytes: mem.reduce((s, d) => s + d.weight * d.cap, 0) * WASM_PAGE,
    tableElements: tab.reduce((s, d) => s + d.weight * d.cap, 0),
    instances,
  };
}
