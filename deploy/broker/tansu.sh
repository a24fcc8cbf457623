#!/usr/bin/env bash
# A local tansu broker on loopback, for the demo and the tests.
#   tansu.sh install              build and install tansu once (about 10 minutes on 2 cores)
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
    echo "tansu: installing $TANSU_VERSION (once; about 10 minutes on 2 cores)" >&2
    # In cargo's temporary target directory, not the project's: the project's cache then
    # holds only the project's own crates.
    # At opt-level 1: about half the CPU time of the default opt-level 3 (on 2 cores 14
    # against about 27 CPU minutes), and the tests and the raw consumer of the end-to-end
    # benchmark run as fast against it (docs/performance.md, "Building it").
    env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
      cargo install --locked tansu --version "$TANSU_VERSION" \
      --no-default-features --features dynostore
    ;;
  start)
    port=${2:?port}
    dir=${3:?directory}
    bin=$(tansu_bin)
    [ -n "$bin" ] || { echo "tansu is not installed: run $0 install" >&2; exit 1; }
    mkdir -p "$dir"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is already in use: stop what listens there or choose another port" >&2
      exit 1
    fi
    # tansu reads a .env file from its working directory: start it from a clean one.
    # The `&` applies to the tansu command alone, so $! is tansu's own pid.
    (cd "$dir" || exit 1
     nohup "$bin" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
     echo $! >"$dir/tansu.pid")
    pid=$(cat "$dir/tansu.pid")
    for _ in $(seq 1 200); do
      kill -0 "$pid" 2>/dev/null || break
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
      sleep 0.1
    done
    echo "tansu did not start; see $dir/tansu.log" >&2
    exit 1
    ;;
  stop)
    dir=${2:?directory}
    if [ -f "$dir/tansu.pid" ]; then
      pid=$(cat "$dir/tansu.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/tansu.pid"
    fi
    ;;
  *)
    echo "usage: $0 install | start PORT DIR | stop DIR" >&2
    exit 2
    ;;
esac
