"""The Dockerfile, checked by parsing it: no container engine runs here, and
hadolint (in CI) checks style, not these promises."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage: what the image runs."""
    found = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(found) if keyword == "FROM")
    return found[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                values[name] = value
    return values


def test_the_image_is_built_from_the_projects_own_wheel() -> None:
    found = instructions()
    build = " ".join(rest for keyword, rest in found if keyword == "RUN" and "pip wheel" in rest)
    assert "--wheel-dir /wheels ." in build  # the wheel of pyproject.toml, as `pip install .` builds it
    copied = [rest for keyword, rest in found if keyword == "COPY" and "--from" not in rest]
    assert any("pyproject.toml" in c for c in copied) and any(c.startswith("src ") for c in copied)
    runtime = " ".join(rest for keyword, rest in runtime_stage() if keyword == "RUN")
    assert "pip install" in runtime and "--no-index" in runtime and "metering-*.whl" in runtime


def test_the_service_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in runtime_stage() if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    assert users[-1] not in ("root", "0") and not users[-1].startswith("0:")


def test_the_grpc_http_and_metrics_ports_are_exposed() -> None:
    stage = runtime_stage()
    env = env_of(stage)
    exposed = {int(p.split("/")[0]) for keyword, rest in stage if keyword == "EXPOSE" for p in rest.split()}
    assert int(env["METERING_GRPC_PORT"]) in exposed
    assert int(env["METERING_HTTP_PORT"]) in exposed
    assert int(env["METERING_METRICS_PORT"]) in exposed


def test_the_healthcheck_asks_the_grpc_health_service() -> None:
    [healthcheck] = [rest for keyword, rest in runtime_stage() if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck.split("CMD", 1)[1].strip())  # exec form: no shell needed in the image
    assert command == ["metering", "healthcheck"]
    [entrypoint] = [json.loads(rest) for keyword, rest in runtime_stage() if keyword == "ENTRYPOINT"]
    assert entrypoint == ["metering"]
