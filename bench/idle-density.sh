#!/bin/sh
# Resident memory of N idle devices of one plugin in one `vhost-wasm serve` (issue 13, density):
# writes a config for N devices, starts the built daemon, waits for "serving N of N", and prints
# VmRSS and threads 2 s later. Run it for N=1 and a larger N; the difference over N-1 is what an
# extra idle device costs.
#
#   sh bench/idle-density.sh [N] [PLUGIN]      # default 20 dist/plugins/rng.wasm
#
# START=on-connect measures devices whose workers start on their first connection; the default
# (eager) starts every worker, which is what this script's figures in docs/BENCHMARKS.md are.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-20}
PLUGIN=$(realpath "${2:-$REPO/dist/plugins/rng.wasm}")
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
node -e '
  const [n, plugin, dir] = [Number(process.argv[1]), process.argv[2], process.argv[3]];
  const devices = Array.from({ length: n }, (_, i) => ({ id: `d${i}`, socket: `${dir}/d${i}.sock`, plugin, grants: { entropy: true } }));
  require("node:fs").writeFileSync(`${dir}/c.json`, JSON.stringify({ start: process.argv[4], devices }));
' "$N" "$PLUGIN" "$DIR" "${START:-eager}"
node "$REPO/dist/vhost-wasm.mjs" serve --config "$DIR/c.json" 2>"$DIR/log" &
PID=$!
i=0
until grep -qE "serving [0-9]+ of [0-9]+ device" "$DIR/log"; do
  i=$((i + 1))
  if [ $i -gt 1800 ] || ! kill -0 $PID 2>/dev/null; then cat "$DIR/log" >&2; exit 1; fi
  sleep 0.1
done
sleep 2
echo "$(grep -oE 'serving [0-9]+ of [0-9]+' "$DIR/log") of $(basename "$PLUGIN"): $(grep -E 'VmRSS|Threads' /proc/$PID/status | tr -s ' \t\n' ' ')"
kill $PID
wait $PID 2>/dev/null || true
