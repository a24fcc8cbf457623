#!/usr/bin/env bash
# A local tansu broker on loopback, for the demo and the tests.
#   tansu.sh install              build and install tansu once (about 10 minutes)
#   tansu.sh start PORT DIR       start a broker with in-memory storage; pid and log in DIR
#   tansu.sh stop DIR             stop the broker started in DIR
set -euo pipefail

TANSU_VERSION=0.6.0

tansu_bin() {
  if [ -n "${TANSU_BIN:-}" ]; then echo "$TANSU_BIN"; return; fi
  if [ -x "$HOME/.cargo/bin/tansu" ]; then echo "$HOME/.cargo/bin/tansu"; return; fi
  command -v tansu || true
}

case "${1:-}" in
  install)
    if [ -n "$(tansu_bin)" ]; then exit 0; fi
    echo "tansu: installing $TANSU_VERSION (once; about 10 minutes)" >&2
    cargo install --locked tansu --version "$TANSU_VERSION" --no-default-features --features dynostore
    ;;
  start)
    port=${2:?port}
    dir=${3:?directory}
    bin=$(tansu_bin)
    [ -n "$bin" ] || { echo "tansu is not installed: run $0 install" >&2; exit 1; }
    mkdir -p "$dir"
    # tansu reads a .env file from its working directory: start it from a clean one.
    (cd "$dir" && nohup "$bin" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
     echo $! >"$dir/tansu.pid")
    for _ in $(seq 1 200); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
      sleep 0.1
    done
    echo "tansu did not start; see $dir/tansu.log" >&2
    exit 1
    ;;
  stop)
    dir=${2:?directory}
    if [ -f "$dir/tansu.pid" ]; then kill "$(cat "$dir/tansu.pid")" 2>/dev/null || true; rm -f "$dir/tansu.pid"; fi
    ;;
  *)
    echo "usage: $0 install | start PORT DIR | stop DIR" >&2
    exit 2
    ;;
esac
