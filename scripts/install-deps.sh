#!/usr/bin/env bash
# Installs what vhost-wasm needs on a fresh Debian 12 machine (as root), then the npm packages.
# Idempotent: packages already present are skipped quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages:
#   qemu-system-x86 qemu-system-common qemu-utils qemu-block-extra  QEMU 7.2, qemu-storage-daemon (peer back-end)
#   linux-image-amd64 kmod busybox-static xz-utils cpio        the test guest (kernel, modules, initramfs)
#   clang-16 lld-16 wasi-libc                                   building the C plugins to wasm32
#   e2fsprogs                                                   host-side checks of guest filesystems
#   liburing-dev                                                io_uring for the addon's asynchronous storage I/O
#                                                               (host/native/src/uring.c links -luring)
#   libisal-dev                                                 Intel ISA-L's CRC-32C for the state and pre-copy
#                                                               checksums (host/native/src/checksum.c links -lisal)
APT_PACKAGES=(qemu-system-x86 qemu-system-common qemu-utils qemu-block-extra linux-image-amd64 kmod
  busybox-static xz-utils cpio clang-16 lld-16 wasi-libc e2fsprogs liburing-dev libisal-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "vhost-wasm: missing Debian packages: ${missing[*]}" >&2
    echo "install them as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi

# QEMU 10 from Debian trixie in a private folder (.cache/qemu10), never installed system-wide:
# Debian 12's QEMU 7.2 cannot send SET_DEVICE_STATE_FD, and live-migration tests run on 10.
bash scripts/qemu10.sh --quiet

# Rust virtiofsd 1.13 from Debian trixie, the same way (.cache/virtiofsd): the peer the fs plugin
# is compared with (test/qemu-fs-vs-virtiofsd.test.ts).
bash scripts/virtiofsd.sh --quiet
