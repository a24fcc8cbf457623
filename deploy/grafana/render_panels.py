#!/usr/bin/env python3
"""Renders the dashboard's panels as a PNG from a Prometheus server's recent data: an honest
picture of what the Grafana dashboard shows, without Grafana. Needs matplotlib.

    render_panels.py --prometheus http://127.0.0.1:19090 --dashboard rekindle.json \
        --out ../../docs/dashboard.png --minutes 2
"""
import argparse
import json
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RATE_INTERVAL = "30s"


def query_range(prometheus, expr, start, end, step):
    params = {"query": expr, "start": start, "end": end, "step": step}
    url = prometheus + "/api/v1/query_range?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=20) as response:
        return json.load(response)["data"]["result"]


def legend(template, labels):
    text = template or ""
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text or ", ".join(f"{k}={v}" for k, v in labels.items())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--dashboard", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=2)
    args = parser.parse_args()
    with open(args.dashboard) as f:
        panels = [p for p in json.load(f)["panels"] if p["type"] == "timeseries"]
    end = time.time()
    start = end - args.minutes * 60
    columns = 4
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 5, rows * 3.2))
    for ax, panel in zip(axes.flat, panels):
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for series in query_range(args.prometheus, expr, start, end, "2s"):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat"), series["metric"]), linewidth=1.2)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("seconds", fontsize=7)
        ax.tick_params(labelsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if unit:
            ax.set_ylabel(unit, fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("rekindle dashboard panels, from Prometheus data of a demo run", fontsize=12)
    # Leave the top strip to the title: tight_layout alone lets panel titles overlap it.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (rows * 3.2)))
    fig.savefig(args.out, dpi=80)


if __name__ == "__main__":
    main()
