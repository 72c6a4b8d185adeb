// The host's version: printed by --version and part of every transpile-cache key (a new host
// never runs glue an older one wrote). One constant so the two cannot disagree.
export const HOST_VERSION = '0.1.0';
