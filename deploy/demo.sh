#!/usr/bin/env bash
# The demo: a local broker, live synthetic activity (a "day" is one second), the worker,
# and the triggers printed as they arrive. Stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${REKINDLE_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/rekindle}
port=${DEMO_PORT:-19092}
seconds=${DEMO_SECONDS:-75}
work=$(mktemp -d)
config="$root/deploy/demo/rekindle.toml"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$root/deploy/broker/tansu.sh" stop "$work"
  echo "demo: stopped; logs in $work" >&2
}
trap cleanup EXIT

"$root/deploy/broker/tansu.sh" start "$port" "$work"
echo "demo: tansu broker on 127.0.0.1:$port" >&2
export REKINDLE__KAFKA__BROKERS="127.0.0.1:$port"
export REKINDLE__STATE__DIR="$work/state"

"$bin" --config "$config" run 2>"$work/worker.log" &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q "worker started" "$work/worker.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "worker started" "$work/worker.log" || { cat "$work/worker.log" >&2; exit 1; }
echo "demo: worker running (log: $work/worker.log)" >&2

"$bin" --config "$config" gen --live --users 400 --days 120 --day-length 1s --seed 7 --malformed-every 500 2>"$work/gen.log" &
pids+=($!)
echo "demo: generating live activity for 400 users (and a malformed record every 500 events, for the dead-letter topic); triggers follow (${seconds}s)" >&2
RUST_LOG=warn "$bin" --config "$config" tail --duration "${seconds}s"
