#!/bin/sh
# Builds the C load generator with the system's cc: dist/vhost-blk-load (also `node build.mjs --only loadgen`).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$root/dist"
${CC:-cc} -O2 -g -std=gnu11 -Wall -Wextra -pthread -o "$root/dist/vhost-blk-load" "$root/bench/loadgen/vhost-blk-load.c"
