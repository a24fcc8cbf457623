#!/usr/bin/env bash
# Runs the long broker tests (crash_restart: 200k events and ten SIGKILLs; outage: a 30 s
# broker outage) side by side: they spend most of their time waiting on brokers and
# restarts, so together they take about as long as the longer one.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=(crash_restart outage)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
executables=$(cargo test --release --locked --no-run "${args[@]}" --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("executable") and message.get("target", {}).get("kind") == ["test"]:
        print(message["executable"])')
logs=$(mktemp -d)
pids=()
names=()
for exe in $executables; do
  name=$(basename "$exe")
  "$exe" --nocapture >"$logs/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
done
[ ${#pids[@]} -eq ${#tests[@]} ] || { echo "long-tests: expected ${#tests[@]} test binaries, found ${#pids[@]}" >&2; exit 1; }
status=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "long-tests: ${names[$i]} passed"
  else
    status=1
    echo "long-tests: ${names[$i]} FAILED; its output:" >&2
  fi
  grep -v '^trigger reader:' "$logs/${names[$i]}.log" | tail -n 40
done
rm -rf "$logs"
exit $status
