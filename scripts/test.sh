#!/usr/bin/env bash
# The full test suite from a fresh clone: dependencies, build, type check, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
npm test 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One plain summary line ("N passed, N failed") that CI and humans can read without knowing ava.
# (|| true: no "failed" line when everything passed, and pipefail must not turn that into a failure)
passed=$(grep -Eo '^ *[0-9]+ tests? passed' "$log" | grep -Eo '[0-9]+' | tail -1 || true)
failed=$(grep -Eo '^ *[0-9]+ tests? failed' "$log" | grep -Eo '[0-9]+' | tail -1 || true)
echo "ava: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
