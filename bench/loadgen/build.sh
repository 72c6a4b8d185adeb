#!/bin/sh
# Builds the C load generator with the system's cc: dist/vhost-blk-load, or the path given as $1
# (also `node build.mjs --only loadgen`).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/dist/vhost-blk-load}
mkdir -p "$(dirname "$out")"
${CC:-cc} -O2 -g -std=gnu11 -Wall -Wextra -pthread -o "$out" "$root/bench/loadgen/vhost-blk-load.c"
