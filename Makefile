# Everything builds in one release profile, in a target directory outside the clone, so the
# C++ of RocksDB and librdkafka is built once per machine and tests, demo and benches share it.
CARGO_TARGET_DIR ?= $(HOME)/.cache/rekindle/target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release/rekindle

.PHONY: setup system build build-all test demo fmt bench

## Everything the tests and the demo need: system packages, Python packages, the tansu broker.
setup:
	deploy/setup.sh

## What building needs (system packages), so that a build does not wait for the broker's.
system:
	deploy/setup.sh system

build: system
	cargo build --release --locked -p rekindle

## Everything (binary, tests, benches) in one cargo invocation over the whole workspace, for
## the tests and the benchmarks, whose cargo commands select the whole workspace too: cargo
## resolves dependency features per invocation (dev-dependencies such as criterion and toml
## add features to regex, clap, futures-util...), so separate builds of the binary, the
## benches and the tests compiled those crates, and every crate above them, once per
## feature set.
build-all: system
	cargo build --release --locked --workspace --all-targets

## The test command: formatting, alert-rule unit tests, unit, property and black-box tests
## against a real tansu broker, then a real Prometheus scraping a demo run evaluates every
## dashboard and alert expression.
test: setup build-all
	cargo fmt --all -- --check
	cd deploy/prometheus && promtool check rules alerts.yaml && promtool test rules alerts_test.yaml
	cargo test --release --locked --workspace -- --skip killed_and_restarted_worker_loses_no_trigger --skip killed_and_restarted_worker_without_rocksdbs_log_loses_no_trigger --skip a_30_second_broker_outage_loses_nothing --skip a_killed_worker_and_an_empty_joiner --skip a_static_member_restarted_with_two_pipelines --skip transactions_deliver_every_trigger --skip without_transactions_the_same_crashes
	deploy/long-tests.sh
	python3 deploy/helm/check_chart.py --chart helm/rekindle --binary $(BIN) --invalid tests/fixtures/helm --dockerfile Dockerfile
	REKINDLE_BIN=$(BIN) deploy/prometheus/e2e-check.sh

## Benchmarks: criterion micro-benchmarks of the hot path (decode, rules, state, timers, the
## engine per record), then the engine at 100k, 1M and 10M users (events/s, peak RSS, state
## bytes per user), then end to end on a tansu broker (the worker against a raw consumer of
## the same topic, and trigger latency), same release build. Figures: docs/performance.md.
bench: setup build-all
	cargo bench --locked --workspace --bench micro
	cargo bench --locked --workspace --bench engine_scale
	cargo bench --locked --workspace --bench end_to_end

## The demo: local broker, live synthetic activity, the worker, triggers printed.
demo: setup build
	REKINDLE_BIN=$(BIN) deploy/demo.sh

fmt:
	cargo fmt --all
