#!/usr/bin/env bash
# Installs what building and testing rekindle needs on a fresh Debian machine:
# libclang-dev, libssl-dev, prometheus (for promtool), the Python packages of the Helm chart check, and
# a tansu broker binary (once, in ~/.cargo/bin).
#   setup.sh           everything
#   setup.sh system    the system packages alone: all that building needs
#   setup.sh python    the Python packages alone (the Helm chart check, the outage test's S3)
#   setup.sh broker    tansu alone
# Each part is idempotent: what is present is left alone. The parts are separate so that CI
# can download the Python packages while the project builds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
part=${1:-all}
case "$part" in
  all | system | python | broker) ;;
  *) echo "usage: $0 [system | python | broker]" >&2; exit 2 ;;
esac

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# libclang-dev: bindgen for RocksDB. prometheus: promtool, for the alert rule tests.
install_system() {
  missing=()
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
  # libssl-dev, pkg-config: librdkafka's TLS and SCRAM support.
  dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  # pip, for the Python packages below.
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The Helm chart check needs the real Helm engine (helm-sdkpy bundles it; it declares a newer
# Python than Debian's 3.11 but runs on it) and the Kubernetes schemas.
# moto: a local S3 server, the durable storage of the broker in the outage test.
install_python() {
  if ! python3 -c "import helm_sdkpy, kubernetes_validate, yaml, moto.server" >/dev/null 2>&1 \
    || ! command -v moto_server >/dev/null 2>&1; then
    echo "setup: installing helm-sdkpy, kubernetes-validate, pyyaml, moto (pip)" >&2
    packages=(helm-sdkpy kubernetes-validate pyyaml "moto[server]")
    pip_install() {
      python3 -m pip install --quiet --disable-pip-version-check --ignore-requires-python "$@" "${packages[@]}"
    }
    # A Debian-managed Python refuses installs outside a virtual environment unless told.
    pip_install || pip_install --break-system-packages
  fi
}

case "$part" in
  system) install_system ;;
  python) install_python ;;
  broker) "$here/broker/tansu.sh" install ;;
  all)
    install_system
    install_python
    "$here/broker/tansu.sh" install
    ;;
esac
