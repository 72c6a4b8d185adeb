// --cache (virtiofsd's option and spelling): how much the guest may cache. The plugin asks
// (filesystem.cache) and sets the entry/attribute timeouts and open flags from it.
export type CachePolicy = 'never' | 'metadata' | 'auto' | 'always';
export const CACHE_POLICIES: readonly CachePolicy[] = ['never', 'metadata', 'auto', 'always'];
