#!/usr/bin/env bash
# Release tarball, install and uninstall.
#
#   dist.sh dist                      dist/redis-lock-<version>-linux-<arch>.tar.gz and
#                                     dist/SHA256SUMS (OUT=dir to write elsewhere)
#   dist.sh install   [PREFIX=/usr/local] [DESTDIR=]
#   dist.sh uninstall [PREFIX=/usr/local] [DESTDIR=]
#
# The built files come from the release build unless MODULE and BIN point
# elsewhere (the tests use the debug build). Install puts each file where a
# Debian admin looks for it:
#   $PREFIX/lib/redis/modules/libredis_lock.so   (beside Debian's other Redis modules)
#   $PREFIX/bin/redis-lock
#   $PREFIX/share/man/man1/redis-lock.1
#   $PREFIX/share/bash-completion/completions/redis-lock
#   $PREFIX/share/zsh/vendor-completions/_redis-lock
#   $PREFIX/share/fish/vendor_completions.d/redis-lock.fish
#   $PREFIX/share/doc/redis-lock/  (README, docs, redis.conf.example, licences)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

MODULE="${MODULE:-target/release/libredis_lock.so}"
BIN="${BIN:-target/release/redis-lock}"
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
OUT="${OUT:-dist}"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
name="redis-lock-$version-linux-$(uname -m)"

need() {
  for f in "$@"; do
    [ -f "$f" ] || { echo "dist: $f is missing: run make release first" >&2; exit 1; }
  done
}

# The files of a release, laid out under $1 as they are installed under PREFIX.
stage() {
  local d="$1"
  need "$MODULE" "$BIN"
  install -Dm755 "$MODULE" "$d/lib/redis/modules/libredis_lock.so"
  install -Dm755 "$BIN" "$d/bin/redis-lock"
  mkdir -p "$d/share/man/man1" "$d/share/bash-completion/completions" \
    "$d/share/zsh/vendor-completions" "$d/share/fish/vendor_completions.d"
  "$BIN" man >"$d/share/man/man1/redis-lock.1"
  "$BIN" completions bash >"$d/share/bash-completion/completions/redis-lock"
  "$BIN" completions zsh >"$d/share/zsh/vendor-completions/_redis-lock"
  "$BIN" completions fish >"$d/share/fish/vendor_completions.d/redis-lock.fish"
  local doc="$d/share/doc/redis-lock"
  mkdir -p "$doc/docs"
  cp README.md redis.conf.example LICENSE-MIT LICENSE-APACHE "$doc/"
  cp docs/*.md "$doc/docs/"
}

# Every file stage() writes, relative to the prefix (for uninstall).
files() {
  echo lib/redis/modules/libredis_lock.so
  echo bin/redis-lock
  echo share/man/man1/redis-lock.1
  echo share/bash-completion/completions/redis-lock
  echo share/zsh/vendor-completions/_redis-lock
  echo share/fish/vendor_completions.d/redis-lock.fish
}

case "${1:-}" in
  dist)
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    stage "$tmp/$name"
    (cd "$tmp/$name" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum >SHA256SUMS)
    mkdir -p "$OUT"
    tar -C "$tmp" --owner=0 --group=0 --sort=name -czf "$OUT/$name.tar.gz" "$name"
    (cd "$OUT" && sha256sum "$name.tar.gz" >SHA256SUMS)
    echo "dist: $OUT/$name.tar.gz"
    (cd "$OUT" && sha256sum -c SHA256SUMS)
    ;;
  install)
    stage "$DESTDIR$PREFIX"
    echo "install: redis-lock $version under $DESTDIR$PREFIX"
    echo "  module: $DESTDIR$PREFIX/lib/redis/modules/libredis_lock.so (loadmodule line in redis.conf)"
    echo "  tool:   $DESTDIR$PREFIX/bin/redis-lock (man redis-lock)"
    ;;
  uninstall)
    for f in $(files); do rm -f "$DESTDIR$PREFIX/$f"; done
    rm -rf "$DESTDIR$PREFIX/share/doc/redis-lock"
    echo "uninstall: removed redis-lock from $DESTDIR$PREFIX"
    ;;
  *)
    echo "usage: dist.sh dist|install|uninstall" >&2
    exit 64
    ;;
esac
