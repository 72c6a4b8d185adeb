#!/bin/sh
# Instructions (valgrind callgrind's Ir) per request of our host's whole process, 4K random reads
# at QD64 from the C front-end in event mode: a count that does not move with the machine's load,
# unlike CPU time. valgrind slows the host ~50x, so batches are fuller and objects live longer than
# natively (more promotion, some major GC): compare before/after of the same script, not with /proc.
#
#   node build.mjs && [MODE=poll] [DEPTH=1] sh bench/callgrind-host.sh [mem|null] [SECONDS (default 20)] [WARMUP (default 20)]
#
# MODE=poll: the front-end busy-polls the used ring (suppressing notifications) instead of blocking
# on the call fd (event, the default): the same counts for blk-c's poll mode. The warm-up and the
# settling run stay in event mode either way: a spinning front-end starves the host under valgrind
# (one core left for all its threads, ~150 requests/s here), so its JIT never leaves baseline code.
# DEPTH: requests in flight (default 64; the warm-up and settling run use the same depth).
# mem: dist/vhost-wasm.mjs with dist/plugins/blk.wasm on --storage memory:256M;
# null: dist/vhost-wasm.mjs with bench/null-blk-device.ts bundled by esbuild into a --device-module
#   (the host core alone, as bench/blk-c.ts's host-null). From source under tsx it was still
#   compiling through a 30 s warm-up under valgrind: its counts were mostly TurboFan.
# GLIBC_TUNABLES keeps memset/memcpy of up to 1 MiB off `rep stosb`/`rep movsb`: valgrind counts
# every iteration of a rep-prefixed instruction (a 4 KiB memset counted ~4,100 Ir, a few dozen
# cycles natively), so a fill would look 10x a copy. Vector loops are counted about as they run.
# Instrumentation is off for start-up and the warm-up (JIT tiers settle at near-native speed), then
# on for a settling run that is thrown away (the first seconds after switching it on counted several
# times the steady figure), then the counters are zeroed and the measured run counted.
set -eu
target=${1:-mem}
secs=${2:-20}
warm=${3:-20}
mode=${MODE:-event}
depth=${DEPTH:-64}
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d /tmp/callgrind-host.XXXXXX)
sock=$dir/h.sock
case $target in
  mem) set -- node --perf-basic-prof "$repo/dist/vhost-wasm.mjs" --socket-path "$sock" --plugin "$repo/dist/plugins/blk.wasm" --storage memory:256M --log-level warn ;;
  null)
    "$repo/node_modules/.bin/esbuild" "$repo/bench/null-blk-device.ts" --bundle --platform=node --format=esm --log-level=warning --outfile="$dir/null-blk-device.mjs"
    set -- node --perf-basic-prof "$repo/dist/vhost-wasm.mjs" --socket-path "$sock" --device-module "$dir/null-blk-device.mjs" --log-level warn ;;
  *) echo "target: mem or null" >&2; exit 2 ;;
esac
cd "$repo"
GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=0x100000:glibc.cpu.x86_rep_movsb_threshold=0x100000 valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes --smc-check=all-non-file --callgrind-out-file="$dir/cg.out" "$@" >"$dir/host.log" 2>&1 &
vg=$!
trap 'st=$?; [ $st -eq 0 ] || { echo "callgrind-host: failed (exit $st); the host said:" >&2; tail -20 "$dir/host.log" >&2; }; kill $vg 2>/dev/null || true; rm -rf "$dir"' EXIT
i=0
while [ ! -S "$sock" ]; do sleep 1; i=$((i + 1)); [ $i -lt 120 ] || { cat "$dir/host.log" >&2; exit 1; }; done
sleep 1
"$repo/dist/vhost-blk-load" -s "$sock" -d "$depth" -t "$warm" --warmup 0 -m event >/dev/null 2>&1
callgrind_control -i on $vg >/dev/null
"$repo/dist/vhost-blk-load" -s "$sock" -d "$depth" -t 10 --warmup 0 -m event >/dev/null 2>&1
callgrind_control -z $vg >/dev/null
out=$("$repo/dist/vhost-blk-load" -s "$sock" -d "$depth" -t "$secs" --warmup 0 -m "$mode" 2>/dev/null | tail -1)
callgrind_control -d $vg >/dev/null
ios=$(echo "$out" | sed 's/.*"ios":\([0-9]*\).*/\1/')
total=0
threads=""
for f in "$dir"/cg.out*-*; do
  ir=$(sed -n 's/^\(totals\|summary\): *\([0-9]*\).*/\2/p' "$f" | head -1)
  [ -n "$ir" ] && [ "$ir" -gt 0 ] || continue
  total=$((total + ir))
  threads="$threads $((ir / ios))"
done
# Per thread: the device worker is the largest; the rest are the main thread and V8's helpers (GC, compiler).
echo "callgrind-host $target ($mode, QD$depth): $ios requests measured, $((total / ios)) Ir per request, by thread:$threads (load average $(cut -d' ' -f1 /proc/loadavg))"
# The device worker's top functions, JIT code named through node's --perf-basic-prof map.
worker=$(for f in "$dir"/cg.out*-*; do echo "$(sed -n 's/^\(totals\|summary\): *\([0-9]*\).*/\2/p' "$f" | head -1) $f"; done | sort -n | tail -1 | cut -d' ' -f2)
callgrind_annotate "$worker" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -${TOP:-30} | node -e '
  const fs = require("fs");
  const map = fs.readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => { const [a, n, ...name] = l.split(" "); return [parseInt(a, 16), parseInt(n, 16), name.join(" ")]; });
  const ios = Number(process.argv[2]);
  for (const line of fs.readFileSync(0, "utf8").trim().split("\n")) {
    const m = /^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$/.exec(line);
    if (!m) continue;
    let name = m[3];
    const hex = /0x([0-9a-f]+)/.exec(name);
    if (hex) { const a = parseInt(hex[1], 16); const e = map.find(([s, n]) => a >= s && a < s + n); if (e) name = e[2]; }
    console.log(`  ${String(Math.round(Number(m[1].replace(/,/g, "")) / ios)).padStart(6)} Ir/req ${m[2].padStart(5)}%  ${name.slice(0, 110)}`);
  }' "/tmp/perf-$vg.map" "$ios" || true
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dir"/cg.out* "$KEEP"/; cp "/tmp/perf-$vg.map" "$KEEP/perf.map"; echo "profiles kept in $KEEP (perf.map: the JIT code's names)"; fi
rm -f "/tmp/perf-$vg.map"
