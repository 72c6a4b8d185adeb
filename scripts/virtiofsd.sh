#!/usr/bin/env bash
# Fetches Debian trixie's Rust virtiofsd (1.13) into a private folder, <repo>/.cache/virtiofsd/,
# and runs it from there through trixie's own loader, as scripts/qemu10.sh does for QEMU 10.
# Nothing is installed system-wide and the system's apt configuration is not touched: apt runs
# with a private APT_CONFIG (own sources, lists, cache and an empty dpkg status).
#
# virtiofsd is the peer the fs plugin is compared with (test/qemu-fs-vs-virtiofsd.test.ts). Run
# it with `--sandbox none`: its namespace sandbox needs user namespaces / pivot_root into the
# share, which this machine's containers refuse; `none` serves the same requests.
#
# Idempotent: a second run only checks the cached copy. Safe to run concurrently (flock).
# Needs network access to deb.debian.org the first time (~4 MB).
#
# Output (stdout): the path of a wrapper, .cache/virtiofsd/bin/virtiofsd, that runs it (use it
# like the virtiofsd binary). `--quiet` prints nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# Physical path: a worktree whose .cache is a link to another checkout's must find (and keep)
# the wrappers that copy wrote, not rewrite them, or fetch it all again, under its own name.
BASE=$(realpath -m "${VHOST_WASM_VIRTIOFSD_DIR:-$REPO/.cache/virtiofsd}")
ROOT=$BASE/root
BIN=$BASE/bin
LIBDIR=$ROOT/usr/lib/x86_64-linux-gnu
LOADER=$LIBDIR/ld-linux-x86-64.so.2
STAMP=$BASE/.complete
SUITE=${VHOST_WASM_VIRTIOFSD_SUITE:-trixie}
MODE=path
case "${1:-}" in
  --quiet) MODE=quiet ;;
  "") ;;
  *) echo "usage: $0 [--quiet]" >&2; exit 2 ;;
esac

# shellcheck source=lib/private-apt.sh
source scripts/lib/private-apt.sh

log() { echo "virtiofsd: $*" >&2; }
print_result() { [[ $MODE == quiet ]] || echo "$BIN/virtiofsd"; }

works() {
  [[ -f $STAMP && -x $BIN/virtiofsd ]] && grep -qF "$ROOT/usr/libexec/virtiofsd" "$BIN/virtiofsd" &&
    "$BIN/virtiofsd" --version >/dev/null 2>&1
}

if works; then print_result; exit 0; fi

mkdir -p "$BASE"
exec 9>"$BASE/.lock"
flock 9
if works; then print_result; exit 0; fi

started=$(date +%s)
private_apt_update "$BASE" "$SUITE"

# virtiofsd and the libraries it links (libc6, libgcc-s1, libcap-ng0, libseccomp2), recursively.
mapfile -t PKGS < <(
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances virtiofsd libc6 |
    grep -v '^ ' | grep -v '^<' | sort -u |
    grep -Ev '^(adduser|debconf|debconf-2.0|base-files|dpkg|init-system-helpers|perl-base|usr-is-merged|cdebconf|dash|tzdata|libc-bin|systemd|udev)$'
)
log "${#PKGS[@]} packages: ${PKGS[*]}"

NEWROOT=$BASE/root.new.$$
private_apt_unpack "$BASE" "$NEWROOT" "${PKGS[@]}"
[[ -x $NEWROOT/usr/libexec/virtiofsd ]] || { log "no usr/libexec/virtiofsd in the package"; exit 1; }
rm -rf "$ROOT"
mv "$NEWROOT" "$ROOT"

mkdir -p "$BIN"
{
  echo '#!/bin/sh'
  echo "# virtiofsd from Debian $SUITE, run from $ROOT by scripts/virtiofsd.sh"
  printf 'exec %q --library-path %q --argv0 virtiofsd %q "$@"\n' "$LOADER" "$LIBDIR" "$ROOT/usr/libexec/virtiofsd"
} >"$BIN/virtiofsd.tmp"
chmod +x "$BIN/virtiofsd.tmp"
mv "$BIN/virtiofsd.tmp" "$BIN/virtiofsd"

version=$("$BIN/virtiofsd" --version | head -1)
echo "$version" >"$STAMP"
rm -rf "$DEBS" "$APTDIR/cache/archives"/*.deb "$APTDIR/lists"
log "$version ready in $(($(date +%s) - started)) s under $ROOT"
print_result
