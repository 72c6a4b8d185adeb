#!/bin/sh
# Instructions (valgrind callgrind's Ir) per request of the host core alone, in one thread:
# bench/host-core.ts (a DeviceRunner with the null device on a memfd split ring, driven
# synchronously, QD64 4 KiB reads in event mode's shape) bundled by esbuild into TREE/dist,
# counted on the main thread only, warm-up excluded. Unlike bench/callgrind-host.sh nothing runs
# beside it (no front-end process, no event loop between rounds), so every round is the same
# and the count repeats to a few instructions per request: the figure for before/after pairs of
# changes to the ring path, the runner and the answer checks. It leaves out the kick's way in
# (epoll, libuv, N-API) and the worker's sleeps, which callgrind-host.sh and blk-c see.
#
#   node build.mjs && sh bench/callgrind-core.sh [TREE (default: this checkout)] [ROUNDS (default 3000)]
#
# TREE: another checkout with its own dist/ (node build.mjs there), for the "before" of a pair;
# this checkout's bench/host-core.ts and bench/null-blk-device.ts are bundled against TREE's
# host/. DEPTH (default 64) and WARM (warm-up rounds, default 20000) go to host-core.ts.
# KEEP=DIR keeps the profiles, the perf map and the bench's stdout; VG_FLAGS and NODE_FLAGS add
# valgrind's and node's flags (e.g. VG_FLAGS=--dump-instr=yes with NODE_FLAGS="--print-opt-code
# --print-opt-code-filter=walk": instruction counts beside the optimized code's listing).
# GLIBC_TUNABLES as in callgrind-host.sh (memset/memcpy counted as they run, not per rep-byte).
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
tree=$(cd "${1:-$repo}" && pwd)
rounds=${2:-3000}
dir=$(mktemp -d /tmp/callgrind-core.XXXXXX)
vg=""
trap '[ -z "$vg" ] || kill $vg 2>/dev/null || true; [ -n "${KEEPDIR:-}" ] || rm -rf "$dir"' EXIT
mkdir -p "$dir/bench"
cp "$repo/bench/host-core.ts" "$repo/bench/null-blk-device.ts" "$dir/bench/"
# Bundled from TREE (its host/, test/devices/), into TREE/dist beside its addon.
out="$tree/dist/bench-host-core.mjs"
(cd "$tree" && mkdir -p .bench-core && cp "$dir/bench/host-core.ts" "$dir/bench/null-blk-device.ts" .bench-core/ &&
  "$repo/node_modules/.bin/esbuild" .bench-core/host-core.ts --bundle --platform=node --format=esm --target=node20 --log-level=warning \
    --banner:js="import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" --outfile="$out"; rm -rf .bench-core)
mkfifo "$dir/fifo"
GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=0x100000:glibc.cpu.x86_rep_movsb_threshold=0x100000 CALLGRIND_FIFO="$dir/fifo" \
  valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes --smc-check=all-non-file --callgrind-out-file="$dir/cg.out" ${VG_FLAGS:-} \
  node --perf-basic-prof ${NODE_FLAGS:-} "$out" "$rounds" >"$dir/out.log" 2>"$dir/vg.log" &
vg=$!
i=0
until grep -q '^warm' "$dir/out.log" 2>/dev/null; do sleep 1; i=$((i + 1)); [ $i -lt 1800 ] || { cat "$dir/out.log" "$dir/vg.log" >&2; exit 1; }; kill -0 $vg 2>/dev/null || { cat "$dir/out.log" "$dir/vg.log" >&2; exit 1; }; done
callgrind_control -i on $vg >/dev/null
echo go >"$dir/fifo"
until grep -q '^done' "$dir/out.log" 2>/dev/null; do sleep 1; kill -0 $vg 2>/dev/null || { cat "$dir/out.log" "$dir/vg.log" >&2; exit 1; }; done
callgrind_control -i off $vg >/dev/null
callgrind_control -d $vg >/dev/null
reqs=$(sed -n 's/^done \([0-9]*\)/\1/p' "$dir/out.log")
echo go >"$dir/fifo"
wait $vg || true
# The main thread's file is the one with the most instructions (V8's helper threads: GC, compiler).
best=0
main=""
for f in "$dir"/cg.out*-*; do
  ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f" | head -1)
  [ -n "$ir" ] || continue
  [ "$ir" -gt "$best" ] && { best=$ir; main=$f; }
done
echo "callgrind-core $(basename "$tree") (QD${DEPTH:-64}, event shape): $reqs requests, $((best / reqs)) Ir per request on the main thread (load average $(cut -d' ' -f1 /proc/loadavg))"
callgrind_annotate "$main" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -${TOP:-25} | node -e '
  const fs = require("fs");
  const map = fs.readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => { const [a, n, ...name] = l.split(" "); return [parseInt(a, 16), parseInt(n, 16), name.join(" ")]; });
  const n = Number(process.argv[2]);
  for (const line of fs.readFileSync(0, "utf8").trim().split("\n")) {
    const m = /^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$/.exec(line);
    if (!m) continue;
    let name = m[3];
    const hex = /0x([0-9a-f]+)/.exec(name);
    if (hex) { const a = parseInt(hex[1], 16); const e = map.find(([s, len]) => a >= s && a < s + len); if (e) name = e[2]; }
    console.log(`  ${String(Math.round(Number(m[1].replace(/,/g, "")) / n)).padStart(6)} Ir/req ${m[2].padStart(5)}%  ${name.replace(/file:\/\/\S*\//, "").slice(0, 100)}`);
  }' "/tmp/perf-$vg.map" "$reqs" || true
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dir"/cg.out* "$dir/out.log" "$out" "$KEEP"/; cp "/tmp/perf-$vg.map" "$KEEP/perf.map"; echo "profiles kept in $KEEP"; fi
rm -f "/tmp/perf-$vg.map" "$out"
