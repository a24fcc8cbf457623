#!/usr/bin/env python3
"""Lints helm/rekindle with the real Helm engine (helm-sdkpy) for every ci/*-values.yaml,
installs each variant into a stand-in API server to obtain the manifests Helm renders,
validates them against the Kubernetes schemas (kubernetes-validate), checks what the chart
promises (security context, probes, static membership, config checksum, no secrets in
values), that the Dockerfile runs the image the way the chart expects, and has the rekindle
binary load the rendered configuration. Every file in
--invalid must be refused. Exits non-zero on any failure.
"""
import argparse
import asyncio
import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml
import kubernetes_validate
from helm_sdkpy.actions import Configuration, Install
from helm_sdkpy.chart import Lint

sys.path.insert(0, str(Path(__file__).parent))
import fake_kube_api  # noqa: E402

KUBERNETES_VERSION = "1.30.0"
WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


def deep_merge(base, override):
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


async def lint(chart, values):
    """helm lint of a copy of the chart whose values.yaml is the variant's."""
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = Path(tmp) / "rekindle"
        shutil.copytree(chart, copy_dir)
        base = yaml.safe_load((chart / "values.yaml").read_text())
        (copy_dir / "values.yaml").write_text(yaml.safe_dump(deep_merge(base, values)))
        result = await Lint(Configuration()).run(str(copy_dir))
    problems = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= WARNING]
    errors = result.get("Errors") or []
    return [f"{m.get('Path')}: {m.get('Err')}" for m in problems] + [str(e) for e in errors]


async def install(chart, values, kubeconfig):
    fake_kube_api.captured.clear()
    release = await Install(Configuration(namespace="default", kubeconfig=str(kubeconfig))).run(
        "rekindle", str(chart), values=values, wait=False
    )
    return [d for d in yaml.safe_load_all(release["manifest"]) if d]


def check_promises(docs, values, chart_values):
    v = deep_merge(chart_values, values)
    failures = []
    kinds = {d["kind"] for d in docs}
    expected = {"StatefulSet", "ConfigMap", "Service"}
    if v["podDisruptionBudget"]["enabled"]:
        expected.add("PodDisruptionBudget")
    if v["serviceMonitor"]["enabled"]:
        expected.add("ServiceMonitor")
    if v["prometheusRule"]["enabled"]:
        expected.add("PrometheusRule")
    if not expected <= kinds:
        failures.append(f"missing kinds: {sorted(expected - kinds)}")
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    sc = container["securityContext"]
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and sc.get("capabilities", {}).get("drop") == ["ALL"]):
        failures.append("container securityContext is not restrictive")
    if not pod["securityContext"].get("runAsNonRoot"):
        failures.append("pod does not run as non-root")
    for probe, path in [("startupProbe", "/health/livez"), ("livenessProbe", "/health/livez"),
                        ("readinessProbe", "/health/readyz")]:
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            failures.append(f"{probe} does not check {path}")
    env = {e["name"]: e for e in container["env"]}
    instance = env.get("REKINDLE__KAFKA__GROUP_INSTANCE_ID", {})
    if instance.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        failures.append("group.instance.id does not come from the pod name")
    if v["kafka"]["security"]["protocol"].startswith("sasl"):
        ref = env.get("REKINDLE__KAFKA__SECURITY__SASL_PASSWORD", {}).get("valueFrom", {})
        if "secretKeyRef" not in ref:
            failures.append("the SASL password does not come from a Secret")
    if pod["terminationGracePeriodSeconds"] < v["shutdownGraceSeconds"] + 10:
        failures.append("terminationGracePeriodSeconds leaves no room for the graceful shutdown")
    claims = sts["spec"]["volumeClaimTemplates"]
    if claims[0]["spec"]["resources"]["requests"]["storage"] != v["persistence"]["size"]:
        failures.append("the state volume does not have the configured size")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    checksum = sts["spec"]["template"]["metadata"]["annotations"].get("checksum/config", "")
    if len(checksum) != 64:
        failures.append("no config checksum annotation on the pods")
    if "password" in yaml.safe_dump(configmap).lower().replace("sasl_password", ""):
        failures.append("the ConfigMap holds a password")
    return failures, configmap["data"]["rekindle.toml"], checksum


def dockerfile_agrees(dockerfile, docs):
    """The image the Dockerfile builds runs what the chart expects: the same arguments,
    the same non-root user, the same metrics port."""
    import json
    text = dockerfile.read_text()
    cmd = next(json.loads(line[len("CMD "):]) for line in text.splitlines() if line.startswith("CMD "))
    user = next(line.split()[1] for line in text.splitlines() if line.startswith("USER "))
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    failures = []
    if container["args"] != cmd:
        failures.append(f"chart args {container['args']} differ from the Dockerfile's CMD {cmd}")
    if user != f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}":
        failures.append(f"Dockerfile USER {user} differs from the chart's runAsUser/runAsGroup")
    if f"EXPOSE {container['ports'][0]['containerPort']}" not in text:
        failures.append("the Dockerfile does not expose the chart's metrics port")
    return failures


def binary_accepts(binary, toml_text):
    """The rendered configuration passes the binary's own validation (a replay of nothing),
    with the environment the pod gets: its name and, for SASL, a password from the Secret."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "rekindle.toml"
        config.write_text(toml_text)
        empty = Path(tmp) / "empty.jsonl"
        empty.write_text("")
        env = dict(os.environ, REKINDLE__KAFKA__GROUP_INSTANCE_ID="rekindle-0",
                   REKINDLE__KAFKA__SECURITY__SASL_PASSWORD="from-the-secret")
        run = subprocess.run([binary, "--config", str(config), "replay", "--input", str(empty)],
                             capture_output=True, text=True, env=env)
        return None if run.returncode == 0 else run.stderr.strip()[-400:]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chart", required=True, type=Path)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--invalid", required=True, type=Path)
    parser.add_argument("--dockerfile", required=True, type=Path)
    args = parser.parse_args()
    server = fake_kube_api.start()
    tmp = tempfile.mkdtemp()
    kubeconfig = Path(tmp) / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
        "users": [{"name": "fake", "user": {"token": "unused"}}],
    }))
    chart_values = yaml.safe_load((args.chart / "values.yaml").read_text())
    failures = []
    checksums = {}
    variants = sorted((args.chart / "ci").glob("*-values.yaml"))
    if not variants:
        failures.append("no ci/*-values.yaml")
    for path in variants:
        values = yaml.safe_load(path.read_text()) or {}
        name = path.name
        for problem in asyncio.run(lint(args.chart, values)):
            failures.append(f"{name}: lint: {problem}")
        try:
            docs = asyncio.run(install(args.chart, values, kubeconfig))
        except Exception as e:  # the engine's refusal is the message
            failures.append(f"{name}: install: {e}")
            continue
        for doc in docs:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                # Prometheus Operator kinds have no schema in kubernetes-validate.
                if not doc.get("spec"):
                    failures.append(f"{name}: {doc['kind']} has no spec")
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
        promised, toml_text, checksum = check_promises(docs, values, chart_values)
        failures += [f"{name}: {p}" for p in promised]
        failures += [f"{name}: {p}" for p in dockerfile_agrees(args.dockerfile, docs)]
        refused = binary_accepts(args.binary, toml_text)
        if refused:
            failures.append(f"{name}: rekindle refuses the rendered configuration: {refused}")
        checksums[name] = (checksum, hashlib.sha256(toml_text.encode()).hexdigest())
        print(f"{name}: lint clean, {len(docs)} manifests valid for Kubernetes {KUBERNETES_VERSION}, configuration accepted")
    # A configuration change must change the checksum that rolls the pods.
    distinct_configs = {c for _, c in checksums.values()}
    distinct_annotations = {a for a, _ in checksums.values()}
    if len(distinct_annotations) < len(distinct_configs):
        failures.append("different configurations share a config checksum")
    for path in sorted(args.invalid.glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        refused = bool(asyncio.run(lint(args.chart, values)))
        try:
            asyncio.run(install(args.chart, values, kubeconfig))
        except Exception as e:
            refused = True
            print(f"{path.name}: refused as it should be: {str(e).splitlines()[0][:160]}")
        if not refused:
            failures.append(f"{path.name}: accepted, but it is invalid")
    server.shutdown()
    shutil.rmtree(tmp)
    for f in failures:
        print("FAIL", f)
    print(f"{len(variants)} variants checked, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
