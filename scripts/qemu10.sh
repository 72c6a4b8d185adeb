#!/usr/bin/env bash
# Fetches Debian trixie's QEMU 10 (qemu-system-x86_64, qemu-storage-daemon, qemu-img) into a
# private folder, <repo>/.cache/qemu10/, and runs it from there through trixie's own loader.
# Nothing is installed system-wide and the system's apt configuration is not touched: apt runs
# with a private APT_CONFIG (own sources, lists, cache and an empty dpkg status).
#
# Idempotent: a second run only checks the cached copy (~50 ms). Safe to run concurrently
# (flock). Needs network access to deb.debian.org the first time (~40 MB, ~30-60 s).
#
# Output (stdout): the command prefix that runs QEMU 10's qemu-system-x86_64, one shell-quoted
# line. Wrappers that do the same are written to .cache/qemu10/bin/{qemu-system-x86_64,
# qemu-storage-daemon,qemu-img}. `--quiet` prints nothing; `--wrapper-dir` prints the bin folder.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# Physical path: a worktree whose .cache is a link to another checkout's must find (and keep)
# the wrappers that copy wrote, not rewrite them, or fetch it all again, under its own name.
BASE=$(realpath -m "${VHOST_WASM_QEMU10_DIR:-$REPO/.cache/qemu10}")
ROOT=$BASE/root
BIN=$BASE/bin
LIBDIR=$ROOT/usr/lib/x86_64-linux-gnu
LOADER=$LIBDIR/ld-linux-x86-64.so.2
STAMP=$BASE/.complete
SUITE=${VHOST_WASM_QEMU10_SUITE:-trixie}
MODE=prefix
case "${1:-}" in
  --quiet) MODE=quiet ;;
  --wrapper-dir) MODE=bindir ;;
  "") ;;
  *) echo "usage: $0 [--quiet|--wrapper-dir]" >&2; exit 2 ;;
esac

# shellcheck source=lib/private-apt.sh
source scripts/lib/private-apt.sh

log() { echo "qemu10: $*" >&2; }

print_result() {
  case $MODE in
    quiet) ;;
    bindir) echo "$BIN" ;;
    prefix)
      printf '%q ' "$LOADER" --library-path "$LIBDIR" --argv0 qemu-system-x86_64 \
        "$ROOT/usr/bin/qemu-system-x86_64" -L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios"
      # QEMU_MODULE_DIR is set by the wrappers; print it as a hint for the raw prefix.
      echo
      echo "# env: QEMU_MODULE_DIR=$LIBDIR/qemu" >&2
      ;;
  esac
}

works() {
  [[ -f $STAMP && -x $BIN/qemu-system-x86_64 ]] && grep -qF "$ROOT/usr/bin/" "$BIN/qemu-system-x86_64" &&
    "$BIN/qemu-system-x86_64" --version >/dev/null 2>&1
}

if works; then print_result; exit 0; fi

mkdir -p "$BASE"
exec 9>"$BASE/.lock"
flock 9
if works; then print_result; exit 0; fi   # another process finished it while we waited

started=$(date +%s)
private_apt_update "$BASE" "$SUITE"

TOP=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils libc6)
# Every dependency, recursively (the empty status makes apt list all of them), minus virtual
# packages and the ones that are no libraries: maintainer-script helpers and the like.
mapfile -t PKGS < <(
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "${TOP[@]}" |
    grep -v '^ ' | grep -v '^<' | sort -u |
    grep -Ev '^(adduser|debconf|debconf-2.0|passwd|login|base-files|base-passwd|bash|coreutils|dpkg|init-system-helpers|perl-base|sed|tar|grep|gzip|diffutils|findutils|mawk|ncurses-base|ncurses-bin|sensible-utils|util-linux|libpam-modules|libpam-modules-bin|libpam-runtime|debianutils|install-info|systemd|systemd-sysv|udev|ipxe-qemu|seabios|qemu-block-extra|sysvinit-utils|procps|libc-bin|usr-is-merged|cdebconf|dash|tzdata|readline-common|mount)$'
)
# The firmware QEMU loads at run time: seabios' bios-256k.bin, iPXE ROMs are only for NICs (not used).
PKGS+=(seabios)
log "${#PKGS[@]} packages"

NEWROOT=$BASE/root.new.$$
private_apt_unpack "$BASE" "$NEWROOT" "${PKGS[@]}"
# Run through the loader, QEMU takes the loader's folder as its own executable's folder and
# would look for modules next to it (then load the system's 7.2 modules and abort): its
# "qemu-bundle" lookup finds this link first and stays inside our root.
ln -sfn "$ROOT" "$NEWROOT/usr/lib/x86_64-linux-gnu/qemu-bundle"
rm -rf "$ROOT"
mv "$NEWROOT" "$ROOT"

mkdir -p "$BIN"
wrapper() { # name, binary, extra args...
  local name=$1 binary=$2
  shift 2
  {
    echo '#!/bin/sh'
    echo "# QEMU 10 from Debian $SUITE, run from $ROOT by scripts/qemu10.sh"
    printf 'QEMU_MODULE_DIR=%q\nexport QEMU_MODULE_DIR\n' "$LIBDIR/qemu"
    printf 'exec %q --library-path %q --argv0 %q %q' "$LOADER" "$LIBDIR" "$name" "$ROOT/usr/bin/$binary"
    for a in "$@"; do printf ' %q' "$a"; done
    echo ' "$@"'
  } >"$BIN/$name.tmp"
  chmod +x "$BIN/$name.tmp"
  mv "$BIN/$name.tmp" "$BIN/$name"
}
wrapper qemu-system-x86_64 qemu-system-x86_64 -L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios"
wrapper qemu-storage-daemon qemu-storage-daemon
wrapper qemu-img qemu-img

version=$("$BIN/qemu-system-x86_64" --version | head -1)
"$BIN/qemu-storage-daemon" --version >/dev/null
"$BIN/qemu-img" --version >/dev/null
echo "$version" >"$STAMP"
rm -rf "$DEBS" "$APTDIR/cache/archives"/*.deb "$APTDIR/lists"   # ~60 MB, fetched again if ever needed
log "$version ready in $(($(date +%s) - started)) s ($(du -sh "$ROOT" | cut -f1) under $ROOT)"
print_result
