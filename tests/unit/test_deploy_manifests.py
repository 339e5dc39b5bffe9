"""The deployment files agree with the code: deploy/kubernetes and compose.yaml.

`make k8s-validate` and `make compose-validate` check the files against their schemas; these
tests check what no schema knows: the ports, variable names and values the service reads
(config/settings.py), the health service names of the probes (api/health.py), the shutdown
timings (runtime/serve.py, runtime/supervisor.py), the operator files mounted where the settings
say, the selectors, and that the Secrets hold placeholders only. No container engine or cluster
runs here, so nothing is applied or started.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from metering.api.health import LIVENESS_SERVICE, METERING_SERVICE
from metering.config.catalog import load_catalog, parse_catalog
from metering.config.files import access_policy
from metering.config.settings import Settings, is_loopback
from metering.config.stripe import parse_mapping
from metering.runtime.supervisor import STOP_MARGIN_SECONDS

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "compose.yaml"
SETTINGS_SOURCE = ROOT / "src" / "metering" / "config" / "settings.py"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "metering-dashboard.json"
PLACEHOLDER = "REPLACE_ME"
# The container's writable directory (an emptyDir): the root file system is read-only.
WRITABLE = "/tmp"  # noqa: S108 - a path inside the container, not this machine's
# A database URL for Settings.from_env: the manifests take it from a Secret.
SOME_DATABASE_URL = "postgresql://metering@db:5432/metering"
# The container ports that a setting of the service picks, by their name in the manifests. The
# `http` port (METERING_HTTP_PORT, the HTTP/Connect edge) is checked for consistency between the
# manifests below.
PORT_SETTINGS = {"grpc": "grpc_port", "metrics": "metrics_port", "http": "http_port"}

Resource = dict[str, Any]


def load_all(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[Resource]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += load_all(path)
    return found


def one(manifests: list[Resource], kind: str, name: str) -> Resource:
    matches = [r for r in manifests if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


@pytest.fixture(scope="module")
def pod(manifests: list[Resource]) -> Resource:
    spec: Resource = one(manifests, "Deployment", "metering")["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: Resource) -> Resource:
    (only,) = pod["containers"]
    assert isinstance(only, dict)
    return only


@pytest.fixture(scope="module")
def environment(manifests: list[Resource], container: Resource) -> dict[str, str]:
    """The environment the container gets from its ConfigMap (values) and Secrets (a stand-in)."""
    (source,) = container["envFrom"]
    config: dict[str, str] = one(manifests, "ConfigMap", source["configMapRef"]["name"])["data"]
    env = dict(config)
    for variable in container["env"]:
        assert "secretKeyRef" in variable["valueFrom"], variable["name"]
        env[variable["name"]] = SOME_DATABASE_URL if variable["name"] == "METERING_DATABASE_URL" else "x"
    return env


@pytest.fixture(scope="module")
def settings(manifests: list[Resource], container: Resource) -> Settings:
    """The settings the service would run with (the Stripe key only matters with a Stripe file)."""
    (source,) = container["envFrom"]
    config = one(manifests, "ConfigMap", source["configMapRef"]["name"])["data"]
    return Settings.from_env({**config, "METERING_DATABASE_URL": SOME_DATABASE_URL})


def variables_the_service_reads() -> set[str]:
    return set(re.findall(r'"((?:METERING|STRIPE|OTEL)_[A-Z0-9_]+)"', SETTINGS_SOURCE.read_text()))


def seconds(value: timedelta) -> float:
    return value.total_seconds()


# -- Kubernetes -------------------------------------------------------------------------


def test_every_variable_set_is_one_the_service_reads_and_its_value_is_accepted(
    environment: dict[str, str], settings: Settings
) -> None:
    unknown = set(environment) - variables_the_service_reads()
    assert unknown == set(), "variables config/settings.py never reads"
    assert settings.auth_file is not None, "authentication on: METERING_AUTH_FILE"
    assert settings.log_format == "json"


def test_container_ports_are_the_settings_ports(container: Resource, settings: Settings) -> None:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert set(PORT_SETTINGS) <= set(ports)
    for name, attribute in PORT_SETTINGS.items():
        assert ports[name] == getattr(settings, attribute), name
    assert len(set(ports.values())) == len(ports)


def test_probes_use_grpc_health_with_the_services_names(container: Resource, settings: Settings) -> None:
    probes = {kind: container[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {probe["port"] for probe in probes.values()} == {settings.grpc_port}
    # Readiness follows the database (api/health.py sets METERING_SERVICE from its probe); liveness
    # and start-up do not, so a database outage does not restart every pod.
    assert probes["readinessProbe"]["service"] == METERING_SERVICE
    assert probes["livenessProbe"]["service"] == LIVENESS_SERVICE
    assert probes["startupProbe"]["service"] == LIVENESS_SERVICE
    # The start-up probe gives the service longer than it waits for the database at start-up.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > 30


def test_shutdown_fits_in_the_grace_period(pod: Resource, container: Resource, settings: Settings) -> None:
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert settings.shutdown_delay > timedelta(0), "behind a balancer, serve on after NOT_SERVING"
    assert pre_stop >= seconds(settings.shutdown_delay)
    # After the preStop hook: SIGTERM, NOT_SERVING and serving on for the delay, the drain for the
    # grace; a supervisor (METERING_WORKERS > 1) waits its margin more before it kills its workers.
    margin = STOP_MARGIN_SECONDS if settings.workers > 1 else 0.0
    needed = pre_stop + seconds(settings.shutdown_delay) + seconds(settings.shutdown_grace) + margin
    assert pod["terminationGracePeriodSeconds"] > needed


def test_one_worker_per_requested_core(container: Resource, settings: Settings) -> None:
    requests = container["resources"]["requests"]
    assert settings.workers == int(requests["cpu"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_runs_as_the_images_user_with_a_read_only_root(pod: Resource, container: Resource) -> None:
    uid = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    assert pod["securityContext"]["runAsUser"] == int(uid[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # What it writes (a supervisor's metrics files, the pid file) goes to a writable /tmp.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == WRITABLE]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]


def mounted_file(manifests: list[Resource], pod: Resource, container: Resource, path: str) -> str:
    """The text of the ConfigMap or Secret key that `path` is in the container."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        directory = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path).parent != directory:
            continue
        volume = volumes[mount["name"]]
        key = PurePosixPath(path).name
        if "configMap" in volume:
            text: str = one(manifests, "ConfigMap", volume["configMap"]["name"])["data"][key]
            return text
        if "secret" in volume:
            text = one(manifests, "Secret", volume["secret"]["secretName"])["stringData"][key]
            return text
    raise AssertionError(f"{path} is on no ConfigMap or Secret volume")


def test_the_operator_files_are_mounted_where_the_settings_say(
    manifests: list[Resource], pod: Resource, container: Resource, settings: Settings
) -> None:
    assert settings.catalog_path is not None and settings.auth_file is not None
    catalog = parse_catalog(mounted_file(manifests, pod, container, settings.catalog_path))
    assert catalog.plans
    assert PLACEHOLDER in mounted_file(manifests, pod, container, settings.auth_file)
    # Off until the operator turns them on (configmap.yaml), but mounted and ready.
    config = (KUBERNETES / "configmap.yaml").read_text()
    for variable in ("METERING_WEBHOOKS_FILE", "METERING_STRIPE_FILE"):
        assert variable in variables_the_service_reads()
        found = re.search(rf'^\s*# {variable}: "([^"]+)"$', config, re.MULTILINE)
        assert found is not None, variable
        text = mounted_file(manifests, pod, container, found[1])
        if variable == "METERING_STRIPE_FILE":
            assert parse_mapping(text, catalog.meters).meters
    assert settings.pid_file is not None and PurePosixPath(settings.pid_file).parent == PurePosixPath(WRITABLE)


def test_secrets_are_templates_with_placeholders_only(manifests: list[Resource], container: Resource) -> None:
    secrets = [r for r in manifests if r["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert "data" not in secret, "base64 data could hide a real value: stringData placeholders only"
        for key, value in secret["stringData"].items():
            assert PLACEHOLDER in value, f"{secret['metadata']['name']}.{key}"
            assert not re.search(r"whsec_|sk_live|sk_test|mtr_|[0-9a-f]{64}", value), key
    # Every Secret the container reads exists, with the key it reads.
    for variable in container["env"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        assert ref["key"] in one(manifests, "Secret", ref["name"])["stringData"], variable["name"]


def test_selectors_select_the_pods(manifests: list[Resource]) -> None:
    deployment = one(manifests, "Deployment", "metering")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"
    selectors = [r["spec"]["selector"] for r in manifests if r["kind"] == "Service"]
    selectors.append(one(manifests, "PodDisruptionBudget", "metering")["spec"]["selector"]["matchLabels"])
    selectors.append(one(manifests, "NetworkPolicy", "metering")["spec"]["podSelector"]["matchLabels"])
    for selector in selectors:
        assert selector.items() <= labels.items()
    target = one(manifests, "HorizontalPodAutoscaler", "metering")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "metering")


def test_services_and_network_policy_name_the_containers_ports(manifests: list[Resource], container: Resource) -> None:
    names = {port["name"]: port["containerPort"] for port in container["ports"]}
    services = [r for r in manifests if r["kind"] == "Service"]
    for service in services:
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port["name"])
            assert port["port"] == names[port["targetPort"]]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1, "a headless Service for client-side round_robin"
    assert any(port["name"] == "grpc" for port in headless[0]["spec"]["ports"])
    policy = one(manifests, "NetworkPolicy", "metering")["spec"]
    allowed = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert allowed == set(names), "every port the container serves is reachable, and no other"


def test_prometheus_scrapes_each_pod_once_under_the_alerts_job_name(manifests: list[Resource]) -> None:
    monitor = one(manifests, "ServiceMonitor", "metering")["spec"]
    (endpoint,) = monitor["endpoints"]
    selected = [
        service
        for service in manifests
        if service["kind"] == "Service"
        and monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        and any(port["name"] == endpoint["port"] for port in service["spec"]["ports"])
    ]
    assert [service["metadata"]["name"] for service in selected] == ["metering"]
    # The operator names the job after the Service; the alerts expect that job.
    assert 'job="metering"' in ALERTS.read_text()


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    (image,) = kustomization["images"]
    deployment = load_all(KUBERNETES / "deployment.yaml")[0]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image["name"]


# -- compose.yaml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Resource:
    loaded: Resource = yaml.safe_load(COMPOSE.read_text())
    return loaded


def published(service: Resource) -> dict[int, tuple[str, int]]:
    """{container port: (host address, host port)} of a compose service's `ports`."""
    found = {}
    for entry in service.get("ports", []):
        host, host_port, container_port = entry.split(":")
        found[int(container_port)] = (host, int(host_port))
    return found


def mounts(service: Resource) -> dict[str, Path]:
    """{container path: repository path} of a compose service's bind mounts."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def test_compose_runs_the_four_parts(compose: Resource) -> None:
    services = compose["services"]
    assert set(services) == {"metering", "postgres", "prometheus", "grafana"}
    assert services["metering"]["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / services["metering"]["build"]["context"] / "Dockerfile").is_file()
    assert services["metering"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        for path in mounts(service).values():
            assert path.exists(), f"{name} mounts {path}, which does not exist"
        # Authentication is off on a laptop: nothing is published beyond this machine.
        assert {host for host, _ in published(service).values()} <= {"127.0.0.1"}, name


def test_compose_service_settings_are_read_by_the_service(compose: Resource) -> None:
    metering = compose["services"]["metering"]
    env: dict[str, str] = metering["environment"]
    assert set(env) <= variables_the_service_reads()
    settings = Settings.from_env(env)
    assert settings.allow_unauthenticated
    # Open, the service binds loopback by default: in a container it must be told to listen on
    # every interface, or neither the published ports nor Prometheus could reach it.
    for host in (settings.grpc_host, settings.http_host, settings.metrics_host):
        assert not is_loopback(host), host
    assert access_policy(settings, load_catalog(None)) is None  # accepted (with its warning)
    database = env["METERING_DATABASE_URL"]
    postgres = compose["services"]["postgres"]["environment"]
    assert database == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    ports = published(metering)
    assert {settings.grpc_port, settings.metrics_port} <= set(ports)
    grace = re.fullmatch(r"(\d+)s", metering["stop_grace_period"])
    assert grace is not None
    assert int(grace[1]) > seconds(settings.shutdown_delay) + seconds(settings.shutdown_grace)


def test_compose_prometheus_scrapes_the_service_with_the_alerts(compose: Resource) -> None:
    prometheus = compose["services"]["prometheus"]
    flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_in_container = PurePosixPath(flag.removeprefix("--config.file="))
    directory = mounts(prometheus)[str(config_in_container.parent)]
    config = yaml.safe_load((directory / config_in_container.name).read_text())
    for rule_file in config["rule_files"]:
        assert (directory / rule_file).is_file()
    (job,) = config["scrape_configs"]
    metrics_port = Settings.from_env(compose["services"]["metering"]["environment"]).metrics_port
    assert job["job_name"] == "metering"
    assert job["static_configs"] == [{"targets": [f"metering:{metrics_port}"]}]


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose: Resource) -> None:
    grafana = compose["services"]["grafana"]
    bound = mounts(grafana)
    provisioning = bound["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == ("prometheus", "http://prometheus:9090", True)
    assert published(compose["services"]["prometheus"]) == {9090: ("127.0.0.1", 9090)}
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "metering.yml").read_text())["providers"]
    dashboards = [
        path
        for target, path in bound.items()
        if PurePosixPath(target).parent == PurePosixPath(provider["options"]["path"])
    ]
    assert dashboards == [DASHBOARD]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert bound[home] == DASHBOARD
    # A provisioned dashboard gets no import prompt for its __inputs: the panels' ${DS_PROMETHEUS}
    # is then the dashboard's data source variable, which picks the default Prometheus.
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert (variables["DS_PROMETHEUS"]["type"], variables["DS_PROMETHEUS"]["query"]) == ("datasource", "prometheus")


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    ignored = {line for line in ignored if line and not line.startswith("#")}
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    sources = {source for line in copied for source in line.split()}
    assert sources == {"pyproject.toml", "README.md", "src", "clients/python"}
    assert sources.isdisjoint(ignored)
    assert ".venv" in ignored and ".git" in ignored
