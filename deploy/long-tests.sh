#!/usr/bin/env bash
# Runs the long broker tests in three lanes side by side: the 12-partition rebalance tests
# (three, with one and two pipelines per worker) in one; crash_restart (200k events, ten
# SIGKILLs) and the exactly-once test on the mock cluster in another; the 30 s broker outage
# and the crash test without RocksDB's write-ahead log in the third. They spend most of their
# time waiting on brokers, restarts and rebalances, so the lanes together take about as long
# as the longest one (rebalance, about 6 minutes). The rebalance tests are not spread over
# the lanes: beside crash_restart they slowed each other down twofold, and the lanes took
# longer (docs/performance.md, "Building it").
set -euo pipefail
cd "$(dirname "$0")/.."
lanes=("rebalance" "crash_restart exactly_once" "outage crash_restart_unlogged")
args=()
for lane in "${lanes[@]}"; do for t in $lane; do args+=(--test "$t"); done; done
executables=$(cargo test --release --locked --workspace --no-run "${args[@]}" --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message.get("target", {}).get("kind") == ["test"]:
        print(message["target"]["name"], message["executable"])')
logs=$(mktemp -d)
executable_of() { echo "$executables" | awk -v n="$1" '$1 == n { print $2 }'; }
run_lane() {
  local status=0
  for t in $1; do
    local exe
    exe=$(executable_of "$t")
    [ -n "$exe" ] || { echo "long-tests: no test binary for $t" >&2; return 1; }
    local started=$SECONDS
    # Workers' directories are kept so that a failure shows what the workers logged. A run
    # that passes must have run a test: a binary whose tests were renamed or lost would
    # otherwise pass with none.
    if REKINDLE_TEST_KEEP=1 "$exe" --nocapture --test-threads=1 >"$logs/$t.log" 2>&1 \
      && grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$logs/$t.log"; then
      echo "long-tests: $t passed in $((SECONDS - started)) s"
    else
      status=1
      echo "long-tests: $t FAILED (or ran no test); its output:" >&2
      grep -v '^trigger reader:' "$logs/$t.log" | tail -n 40 >&2
      for dir in $(sed -n 's/^worker directory: //p' "$logs/$t.log"); do
        echo "long-tests: $t: warnings and errors in $dir/worker.log:" >&2
        grep -h '"level":"\(WARN\|ERROR\)"' "$dir"/*.log 2>/dev/null | tail -n 30 >&2 || true
        # How the last run ended (restores, assignments, commits), at every level.
        echo "long-tests: $t: the last lines of the logs in $dir:" >&2
        tail -n 40 "$dir"/*.log >&2 2>/dev/null || true
      done
    fi
    sed -n 's/^worker directory: //p' "$logs/$t.log" | xargs -r rm -rf
  done
  return $status
}
pids=()
for lane in "${lanes[@]}"; do
  run_lane "$lane" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
rm -rf "$logs"
exit $status
