#!/usr/bin/env bash
# Installs what building and testing rekindle needs on a fresh Debian machine:
# libclang-dev (bindgen for RocksDB) and a tansu broker binary (once, cached in ~/.cargo/bin).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "setup: installing libclang-dev" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq libclang-dev >/dev/null
fi

"$here/broker/tansu.sh" install
