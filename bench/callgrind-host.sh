#!/bin/sh
# Instructions (valgrind callgrind's Ir) per request of our host's whole process, 4K random reads
# at QD64 from the C front-end in event mode: a count that does not move with the machine's load,
# unlike CPU time. valgrind slows the host ~50x, so batches are fuller and objects live longer than
# natively (more promotion, some major GC): compare before/after of the same script, not with /proc.
#
#   node build.mjs && sh bench/callgrind-host.sh [mem|null] [SECONDS (default 20)] [WARMUP (default 20)]
#
# mem: dist/vhost-wasm.mjs with dist/plugins/blk.wasm on --storage memory:256M;
# null: the host core from source with bench/null-blk-device.ts (as bench/blk-c.ts's host-null).
# Counters are zeroed after the warm-up (JIT tiers settle); instrumentation runs throughout (switching
# it on late makes valgrind retranslate everything, which inflated the first window by ~30%).
set -eu
target=${1:-mem}
secs=${2:-20}
warm=${3:-20}
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d /tmp/callgrind-host.XXXXXX)
sock=$dir/h.sock
case $target in
  mem) set -- node "$repo/dist/vhost-wasm.mjs" --socket-path "$sock" --plugin "$repo/dist/plugins/blk.wasm" --storage memory:256M --log-level warn ;;
  null) set -- node --import tsx "$repo/host/cli/main.ts" --socket-path "$sock" --device-module "$repo/bench/null-blk-device.ts" --log-level warn ;;
  *) echo "target: mem or null" >&2; exit 2 ;;
esac
cd "$repo"
valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$dir/cg.out" "$@" >"$dir/host.log" 2>&1 &
vg=$!
trap 'kill $vg 2>/dev/null || true; rm -rf "$dir"' EXIT
i=0
while [ ! -S "$sock" ]; do sleep 1; i=$((i + 1)); [ $i -lt 120 ] || { cat "$dir/host.log" >&2; exit 1; }; done
sleep 1
"$repo/dist/vhost-blk-load" -s "$sock" -t "$warm" --warmup 0 -m event >/dev/null 2>&1
callgrind_control -z $vg >/dev/null
out=$("$repo/dist/vhost-blk-load" -s "$sock" -t "$secs" --warmup 0 -m event 2>/dev/null | tail -1)
callgrind_control -d $vg >/dev/null
ios=$(echo "$out" | sed 's/.*"ios":\([0-9]*\).*/\1/')
f=$(ls "$dir"/cg.out* | grep -v 'cg.out$' | tail -1)
ir=$(callgrind_annotate "$f" 2>/dev/null | grep 'PROGRAM TOTALS' | tr -d ', ' | sed 's/(.*//')
echo "callgrind-host $target: $ios requests measured, $ir Ir, $((ir / ios)) Ir per request (load average $(cut -d' ' -f1 /proc/loadavg))"
if [ -n "${KEEP:-}" ]; then cp "$f" "$KEEP"; echo "profile kept in $KEEP"; fi
