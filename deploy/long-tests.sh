#!/usr/bin/env bash
# Runs the long broker tests in three lanes side by side. A lane item is a test binary, or
# `binary:test` for one test of it: the three rebalance tests (12 partitions on the mock
# cluster; alone on this machine about 42, 100 and 76 s) are spread over the lanes, beside
# crash_restart (200k events, ten SIGKILLs), the 30 s broker outage, the exactly-once test on
# the mock cluster and the crash test without RocksDB's write-ahead log. They spend most of
# their time waiting on brokers, restarts and rebalances, so the lanes together take about
# as long as the longest one.
set -euo pipefail
cd "$(dirname "$0")/.."
killed_one=rebalance:a_killed_worker_and_an_empty_joiner_give_the_same_triggers_and_state_as_replay
killed_two=rebalance:a_killed_worker_and_an_empty_joiner_with_two_pipelines_each_give_the_same_triggers_and_state_as_replay
static=rebalance:a_static_member_restarted_with_two_pipelines_resumes_every_partition_from_its_state
lanes=("$killed_two exactly_once $killed_one" "crash_restart $static" "outage crash_restart_unlogged")
binaries=()
for lane in "${lanes[@]}"; do for item in $lane; do binaries+=("${item%%:*}"); done; done
args=()
for binary in $(printf '%s\n' "${binaries[@]}" | sort -u); do args+=(--test "$binary"); done
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
  for item in $1; do
    local t=${item%%:*} exe filter=() log
    # One test of the binary, by its exact name; the binary's every test without one.
    [ "$item" = "$t" ] || filter=(--exact "${item#*:}")
    log="$logs/${item//:/.}.log"
    exe=$(executable_of "$t")
    [ -n "$exe" ] || { echo "long-tests: no test binary for $t" >&2; return 1; }
    local started=$SECONDS
    # Workers' directories are kept so that a failure shows what the workers logged. A run
    # that passes must have run a test: a misspelt name would otherwise select none.
    if REKINDLE_TEST_KEEP=1 "$exe" "${filter[@]}" --nocapture --test-threads=1 >"$log" 2>&1 \
      && grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$log"; then
      echo "long-tests: $item passed in $((SECONDS - started)) s"
    else
      status=1
      echo "long-tests: $item FAILED (or ran no test); its output:" >&2
      grep -v '^trigger reader:' "$log" | tail -n 40 >&2
      for dir in $(sed -n 's/^worker directory: //p' "$log"); do
        echo "long-tests: $item: warnings and errors in $dir/worker.log:" >&2
        grep -h '"level":"\(WARN\|ERROR\)"' "$dir"/*.log 2>/dev/null | tail -n 30 >&2 || true
        # How the last run ended (restores, assignments, commits), at every level.
        echo "long-tests: $item: the last lines of the logs in $dir:" >&2
        tail -n 40 "$dir"/*.log >&2 2>/dev/null || true
      done
    fi
    sed -n 's/^worker directory: //p' "$log" | xargs -r rm -rf
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
