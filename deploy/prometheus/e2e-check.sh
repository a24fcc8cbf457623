#!/usr/bin/env bash
# A real Prometheus server scrapes the worker of a demo run (and loads the alert rules);
# then every expression of the Grafana dashboard and of the alert rules is evaluated.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
prom_port=${PROM_PORT:-19090}
# The demo's worker serves metrics here (deploy/demo/rekindle.toml).
worker_metrics=127.0.0.1:19898

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $here/alerts.yaml
scrape_configs:
  - job_name: rekindle
    static_configs:
      - targets: ['$worker_metrics']
YAML

prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!
demo_pid=
cleanup() {
  kill "$prom_pid" 2>/dev/null || true
  [ -n "$demo_pid" ] && wait "$demo_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

DEMO_SECONDS=${DEMO_SECONDS:-75} "$root/deploy/demo.sh" >"$work/demo.out" 2>"$work/demo.err" &
demo_pid=$!
# Let the demo start, lapses happen and Prometheus collect a minute of samples.
for _ in $(seq 1 60); do grep -q "worker running" "$work/demo.err" 2>/dev/null && break; sleep 1; done
grep -q "worker running" "$work/demo.err" || { cat "$work/demo.err" >&2; exit 1; }
sleep "${SCRAPE_SECONDS:-50}"
python3 "$here/check_queries.py" --prometheus "http://127.0.0.1:$prom_port" \
  --dashboard "$root/deploy/grafana/rekindle.json" --alerts "$here/alerts.yaml"
if [ -n "${RENDER_TO:-}" ]; then
  # Documentation only (needs matplotlib): the dashboard's panels from this run's data.
  python3 "$root/deploy/grafana/render_panels.py" --prometheus "http://127.0.0.1:$prom_port" \
    --dashboard "$root/deploy/grafana/rekindle.json" --out "$RENDER_TO" --minutes 1.2
fi
echo "prometheus check: $(grep -c trigger_id "$work/demo.out" || true) triggers printed by the demo; logs in $work" >&2
