#!/usr/bin/env python3
"""Evaluates every PromQL expression of the Grafana dashboard and the alert rules against a
running Prometheus server, which scrapes a live rekindle worker.

Dashboard expressions must evaluate without error and return data. Alert expressions must
evaluate without error (an alert that does not fire returns nothing, as it should), and
Prometheus must report every loaded rule healthy. Exits non-zero on any failure.
"""
import argparse
import json
import sys
import urllib.parse
import urllib.request

import yaml

# Grafana's variables, as Prometheus cannot expand them.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}


def query(prometheus, expr):
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        return json.load(e)


def dashboard_expressions(path):
    with open(path) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            yield panel["title"], expr


def alert_expressions(path):
    with open(path) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--dashboard", required=True)
    parser.add_argument("--alerts", required=True)
    args = parser.parse_args()
    failures = []
    checked = 0
    for title, expr in dashboard_expressions(args.dashboard):
        checked += 1
        answer = query(args.prometheus, expr)
        if answer.get("status") != "success":
            failures.append(f"dashboard '{title}': {answer.get('error')} in {expr}")
        elif not answer["data"]["result"]:
            failures.append(f"dashboard '{title}': no data for {expr}")
    for alert, expr in alert_expressions(args.alerts):
        checked += 1
        answer = query(args.prometheus, expr)
        if answer.get("status") != "success":
            failures.append(f"alert {alert}: {answer.get('error')} in {expr}")
    with urllib.request.urlopen(args.prometheus + "/api/v1/rules", timeout=10) as response:
        groups = json.load(response)["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    if not loaded:
        failures.append("Prometheus loaded no alert rules")
    for rule in loaded:
        if rule.get("health") != "ok":
            failures.append(f"rule {rule.get('name')}: health {rule.get('health')}: {rule.get('lastError')}")
    for failure in failures:
        print("FAIL", failure)
    print(f"{checked - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
