"""Validate the Kubernetes manifests (deploy/kubernetes) against schemas; `make k8s-validate`.

- Every resource of a built-in kind against the Kubernetes OpenAPI schemas that the pinned
  `kubernetes-validate` package ships, strict (an unknown field is an error, as kubectl's
  default server-side field validation makes it), for each Kubernetes version given.
- Every ServiceMonitor (a Prometheus Operator CRD, which no Kubernetes schema knows) against the
  prometheus-operator schema of `@kubernetes-models/prometheus-operator` (pinned by
  scripts/servicemonitor/package-lock.json), through Node: `validate.mjs`.
- kustomization.yaml is not a resource: it must list every manifest file, and only those.

A resource of any other kind, or a file that does not parse, fails the run: a kind without a
schema is never passed over silently.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kubernetes_validate import utils as kv  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
SERVICE_MONITOR_VALIDATOR = ROOT / "scripts" / "servicemonitor" / "validate.mjs"
CRD_API_VERSIONS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def resources(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def name_of(resource: dict[str, Any]) -> str:
    return f"{resource.get('kind', '?')}/{resource.get('metadata', {}).get('name', '?')}"


def check_kustomization(directory: Path) -> list[str]:
    kustomization = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    listed = set(kustomization.get("resources", []))
    present = {path.name for path in directory.glob("*.yaml")} - {KUSTOMIZATION}
    problems = [f"{KUSTOMIZATION}: lists {name}, which does not exist" for name in sorted(listed - present)]
    problems += [f"{KUSTOMIZATION}: does not list {name}" for name in sorted(present - listed)]
    return problems


def validate_builtin(path: Path, resource: dict[str, Any], versions: list[str]) -> list[str]:
    problems = []
    for version in versions:
        try:
            kv.validate(resource, version, strict=True)
        except kv.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            problems.append(f"{path.name}: {name_of(resource)} (Kubernetes {version}): {where}: {error.message}")
        except kv.SchemaNotFoundError as error:
            problems.append(f"{path.name}: {name_of(resource)}: {error.message}")
    return problems


def validate_service_monitors(monitors: list[dict[str, Any]]) -> list[str]:
    if not monitors:
        return []
    done = subprocess.run(
        ["node", str(SERVICE_MONITOR_VALIDATOR)],
        input=json.dumps(monitors),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    print(done.stdout, end="")
    if done.returncode != 0:
        return [f"ServiceMonitor validation failed (exit {done.returncode}): {done.stderr.strip()}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", "-k", action="append", required=True, help="e.g. 1.30.0; repeatable")
    parser.add_argument("directory", nargs="?", type=Path, default=MANIFESTS)
    args = parser.parse_args(argv)
    directory: Path = args.directory
    versions: list[str] = args.kubernetes_version

    problems = check_kustomization(directory)
    monitors: list[dict[str, Any]] = []
    checked = 0
    for path in sorted(directory.glob("*.yaml")):
        if path.name == KUSTOMIZATION:
            continue
        try:
            found = resources(path)
        except yaml.YAMLError as error:
            problems.append(f"{path.name}: not YAML: {error}")
            continue
        if not found:
            problems.append(f"{path.name}: no resource")
        for resource in found:
            if (resource.get("apiVersion"), resource.get("kind")) in CRD_API_VERSIONS:
                monitors.append(resource)
                continue
            checked += 1
            problems += validate_builtin(path, resource, versions)
    problems += validate_service_monitors(monitors)

    for problem in problems:
        print(f"ERROR {problem}")
    if problems:
        return 1
    print(
        f"k8s-validate: {checked} resources valid against the Kubernetes {', '.join(versions)} schemas (strict), "
        f"{len(monitors)} ServiceMonitor valid against the prometheus-operator schema; {KUSTOMIZATION} lists every file"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
