# Sourced by scripts/qemu10.sh and scripts/virtiofsd.sh: fetch packages of another Debian
# suite (trixie) into a private folder and unpack them into a root of their own. Nothing is
# installed system-wide and the system's apt configuration is not touched: apt runs with a
# private APT_CONFIG (own sources, lists, cache and an empty dpkg status). Needs `log`.

# private_apt_update BASE SUITE: a private apt configuration under BASE/apt for SUITE (its
# -updates and -security too), exported as APT_CONFIG, and its package lists fetched.
private_apt_update() {
  local base=$1 suite=$2
  APTDIR=$base/apt
  mkdir -p "$APTDIR"/{sources.list.d,lists/partial,cache/archives/partial,preferences.d,trusted.gpg.d,apt.conf.d}
  : >"$APTDIR/status"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -r $keyring ]] || { log "missing $keyring (package debian-archive-keyring)"; exit 1; }
  cat >"$APTDIR/sources.list.d/$suite.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: $keyring

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: $keyring
SRC
  cat >"$APTDIR/apt.conf" <<CONF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$APTDIR/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$APTDIR/preferences.d";
Dir::Etc::TrustedParts "$APTDIR/trusted.gpg.d";
Dir::Etc::Parts "$APTDIR/apt.conf.d";
Dir::State::Lists "$APTDIR/lists";
Dir::State::status "$APTDIR/status";
Dir::State::extended_states "$APTDIR/extended_states";
Dir::Cache "$APTDIR/cache";
Dir::Cache::archives "$APTDIR/cache/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Get::AllowUnauthenticated "false";
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Debug::NoLocking "true";
APT::Sandbox::User "root";
CONF
  export APT_CONFIG=$APTDIR/apt.conf
  log "apt-get update ($suite, private lists under $APTDIR)"
  apt-get update -qq -o APT::Update::Error-Mode=any >&2
}

# private_apt_unpack BASE NEWROOT PKG...: download the packages into BASE/debs and unpack
# exactly them (not what else the folder holds) into NEWROOT, a fresh folder; checks that the
# root has its merged-/usr loader.
private_apt_unpack() {
  local base=$1 newroot=$2
  shift 2
  DEBS=$base/debs
  mkdir -p "$DEBS"
  (cd "$DEBS" && apt-get download -q "$@" >&2)
  rm -rf "$newroot"
  mkdir -p "$newroot"
  local want deb name
  want=$(printf '%s\n' "$@" | sort -u)
  for deb in "$DEBS"/*.deb; do
    name=$(dpkg-deb -f "$deb" Package)
    grep -qxF "$name" <<<"$want" || continue
    dpkg-deb -x "$deb" "$newroot"
  done
  [[ -e $newroot/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ]] || { log "no loader in the extracted root"; exit 1; }
}
