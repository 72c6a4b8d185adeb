#!/usr/bin/env bash
# The main job from a fresh clone: dependencies, build, then serve the default plugin and boot a
# small Linux guest under QEMU against it, printing what the guest saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
node build.mjs
exec node --import tsx scripts/demo.ts "$@"
