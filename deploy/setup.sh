#!/usr/bin/env bash
# Installs what building and testing rekindle needs on a fresh Debian machine:
# libclang-dev, prometheus (for promtool) and a tansu broker binary (once, in ~/.cargo/bin).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# libclang-dev: bindgen for RocksDB. prometheus: promtool, for the alert rule tests.
missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$here/broker/tansu.sh" install
