"""The Kubernetes manifests, rendered by kustomize (the one inside kubectl, or a standalone one) and
validated offline against the Kubernetes OpenAPI schemas that `kubernetes-validate` ships."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gateway.settings import GatewaySettings
from scripts.devstack import DEFAULT_PORTS, PROCESSES
from services.inventory.settings import InventorySettings
from services.orders.settings import OrdersSettings
from services.users.settings import UsersSettings
from services.webhooks.settings import WebhooksSettings
from shared.networks import Networks

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
# The oldest Kubernetes release the manifests are for, and the newest the installed schemas know.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

WORKER = "webhooks-worker"
DEPLOYMENTS = {name: (module, "serve", DEFAULT_PORTS[name]) for name, module in PROCESSES.items()} | {
    WORKER: ("services.webhooks", "worker", 8005)
}
SETTINGS = {
    "GATEWAY_": GatewaySettings,
    "USERS_": UsersSettings,
    "ORDERS_": OrdersSettings,
    "INVENTORY_": InventorySettings,
    "WEBHOOKS_": WebhooksSettings,
}
SECRET = "portico-secrets"
# What only the Secret may carry.
SECRET_SETTINGS = ("INTERNAL_TOKEN_SECRET", "JWT_SECRET", "DATABASE_URL", "REDIS_URL")


@functools.cache
def render(path: Path) -> tuple[dict, ...]:
    kustomize = shutil.which("kustomize")
    kubectl = shutil.which("kubectl")
    assert kustomize or kubectl, "kustomize or kubectl (which includes it) is needed to render deploy/k8s"
    command = [kustomize, "build", str(path)] if kustomize else [str(kubectl), "kustomize", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[dict, ...], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def app(deployment: dict) -> dict:
    (container,) = (c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "app")
    return container


BOTH = pytest.mark.parametrize("path", [BASE, PRODUCTION], ids=["base", "production"])


@BOTH
@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_is_valid_for_kubernetes(path, version):
    docs = render(path)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc}") from exc


@BOTH
def test_one_deployment_and_service_per_process_and_the_worker(path):
    docs = render(path)
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    assert set(deployments) == set(DEPLOYMENTS)
    assert set(services) == set(DEPLOYMENTS)
    for name, (module, command, port) in DEPLOYMENTS.items():
        container = app(deployments[name])
        assert container["command"] == ["python", "-m", module, command]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert deployments[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        service = services[name]["spec"]
        assert service["selector"].items() <= labels.items(), name
        assert service["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
        # Only this process's pods: no other Deployment carries all of the Service's labels.
        others = [d for n, d in deployments.items() if n != name]
        assert not any(
            service["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in others
        )


@BOTH
def test_probes_use_the_health_routes(path):
    for name, deployment in of_kind(render(path), "Deployment").items():
        container = app(deployment)
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert all(probe["port"] == "http" for probe in probes.values())
        assert probes["livenessProbe"]["path"] == "/health/live", "a failing dependency never restarts a pod"
        if name == "gateway":
            # Every gateway replica sees the same dependencies: they must not all leave the Service when
            # one service fails; the circuit breakers answer 503 for what depends on it.
            assert probes["startupProbe"]["path"] == "/health/ready"
            assert probes["readinessProbe"]["path"] == "/health/live"
        else:
            assert probes["readinessProbe"]["path"] == "/health/ready", name


@BOTH
def test_resources_and_a_restricted_security_context(path):
    for name, deployment in of_kind(render(path), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in containers(deployment):
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(requests), (name, container["name"])
            assert "memory" in limits, (name, container["name"])
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}


@BOTH
def test_services_with_a_database_migrate_before_serving(path):
    for name, deployment in of_kind(render(path), "Deployment").items():
        init = deployment["spec"]["template"]["spec"].get("initContainers", [])
        module = DEPLOYMENTS[name][0]
        if name in ("gateway", WORKER):
            assert init == [], "the gateway has no database; the webhooks service migrates the worker's"
        else:
            assert [c["command"] for c in init] == [["python", "-m", module, "migrate"]]
            assert init[0]["env"] == app(deployment)["env"]


@BOTH
def test_autoscalers_and_disruption_budgets(path):
    docs = render(path)
    deployments = of_kind(docs, "Deployment")
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    assert set(autoscalers) == {"gateway", WORKER, *FLEETS}
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployments[name]["spec"], "the autoscaler owns the replica count"
        if name in FLEETS:
            assert hpa["spec"]["minReplicas"] >= 2, name
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == set(DEPLOYMENTS)
    for name, budget in budgets.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budget["spec"]["maxUnavailable"] == 1, "never blocks a drain of a single replica"


# The services that run as fleets of 2+ pods, autoscaled, and the callers' settings that find them.
FLEETS = ("users", "orders", "inventory")
CALLED = {
    "users": ("GATEWAY_USERS_URL", "ORDERS_USERS_URL"),
    "orders": ("GATEWAY_ORDERS_URL", "WEBHOOKS_ORDERS_URL"),
    "inventory": ("GATEWAY_INVENTORY_URL", "ORDERS_INVENTORY_URL"),
    "webhooks": ("GATEWAY_WEBHOOKS_URL",),
}


@BOTH
def test_callers_find_every_pod_of_a_service_through_a_headless_service(path):
    docs = render(path)
    services, deployments = of_kind(docs, "Service"), of_kind(docs, "Deployment")
    (config,) = of_kind(docs, "ConfigMap").values()
    for name, variables in CALLED.items():
        # Headless: the name resolves to the ready pods themselves, not to one virtual address.
        assert services[name]["spec"]["clusterIP"] == "None", name
        assert not services[name]["spec"].get("publishNotReadyAddresses"), "only ready pods take requests"
        for variable in variables:
            assert config["data"][variable] == f"dns+http://{name}:{DEFAULT_PORTS[name]}", variable
            prefix = variable.split("_", 1)[0] + "_"
            settings = SETTINGS[prefix](**{variable[len(prefix) :].lower(): config["data"][variable]})
            assert settings.model_dump()[variable[len(prefix) :].lower()] == config["data"][variable]
        # A terminating pod leaves DNS at once; it serves until every caller has looked again (the DNS
        # cache's TTL, 5 s for CoreDNS's cluster records, and the caller's longest wait), then drains
        # what it has in flight, all within the grace period.
        pod = deployments[name]["spec"]["template"]["spec"]
        pause = int(app(deployments[name])["lifecycle"]["preStop"]["exec"]["command"][1])
        callers = {variable.split("_", 1)[0] for variable in variables}
        for caller in callers:
            longest = float(config["data"].get(f"{caller}_UPSTREAM_DNS_MAX_TTL_SECONDS", "30"))
            assert pause >= 5 + longest + 5, (name, caller, pause)
        shutdown = SETTINGS[f"{name.upper()}_"].model_fields["shutdown_timeout_seconds"].default
        assert pause + shutdown < pod["terminationGracePeriodSeconds"], name
    assert services["gateway"]["spec"].get("clusterIP") != "None", "the Ingress reaches the gateway's ClusterIP"


def settings_variable(name: str) -> bool:
    if name.startswith("OTEL_"):
        return True
    prefix = next((p for p in SETTINGS if name.startswith(p)), None)
    return prefix is not None and name[len(prefix) :].lower() in SETTINGS[prefix].model_fields


@BOTH
def test_configuration_by_reference_to_the_configmap_and_the_secret(path):
    docs = render(path)
    configmaps = of_kind(docs, "ConfigMap")
    (config_name,) = configmaps
    for key in configmaps[config_name]["data"]:
        assert settings_variable(key), f"{key} is no setting of any process"
        assert not key.endswith(SECRET_SETTINGS), f"{key} belongs in the Secret"
    example = dict(
        line.split("=", 1)
        for line in (K8S / "secrets.example.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name, deployment in of_kind(docs, "Deployment").items():
        prefix = "GATEWAY_" if name == "gateway" else f"{name.split('-')[0].upper()}_"
        for container in containers(deployment):
            assert container["envFrom"] == [{"configMapRef": {"name": config_name}}]
            for variable in container["env"]:
                assert settings_variable(variable["name"]), variable["name"]
                assert variable["name"].startswith((prefix, "OTEL_")), f"{name} reads {variable['name']}"
                if variable["name"].endswith(SECRET_SETTINGS):
                    reference = variable["valueFrom"]["secretKeyRef"]
                    assert reference["name"] == SECRET
                    assert reference["key"] in example, f"{reference['key']} is missing from secrets.example.env"
        env = {v["name"] for v in app(deployment)["env"]}
        assert f"{prefix}INTERNAL_TOKEN_SECRET" in env
        if name != "gateway":
            assert f"{prefix}DATABASE_URL" in env
    assert not of_kind(docs, "Secret"), "no secret values are committed"
    for value in example.values():
        assert "REPLACE-ME" in value, "the example holds placeholders only"


@BOTH
def test_postgres_and_redis_are_external(path):
    docs = render(path)
    workloads = [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    assert {doc["metadata"]["name"] for doc in workloads} == set(DEPLOYMENTS)
    gateway = {v["name"]: v for v in app(of_kind(docs, "Deployment")["gateway"])["env"]}
    assert gateway["GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_URL"


def test_production_overlay():
    docs = render(PRODUCTION)
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"portico"}
    deployments = of_kind(docs, "Deployment")
    for name, deployment in deployments.items():
        for container in containers(deployment):
            assert container["image"] == "registry.example.com/portico:0.1.0", name
        replicas = deployment["spec"].get("replicas")
        assert replicas is None or replicas >= 2, name
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert of_kind(docs, "HorizontalPodAutoscaler")["gateway"]["spec"]["minReplicas"] >= 2
    (config,) = of_kind(docs, "ConfigMap").values()
    for process in ("GATEWAY", "USERS", "ORDERS", "INVENTORY", "WEBHOOKS"):
        assert config["data"][f"{process}_ENVIRONMENT"] == "production"
    assert config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")


def test_the_ingress_routes_the_public_api_only():
    ingress = of_kind(render(PRODUCTION), "Ingress")["gateway"]
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert {path["backend"]["service"]["name"] for path in paths} == {"gateway"}
    routed = {path["path"] for path in paths}
    assert routed == {"/v1", "/graphql"}
    for private in ("/metrics", "/health/ready", "/docs"):
        assert not any(private.startswith(prefix) for prefix in routed), private
    assert not of_kind(render(BASE), "Ingress"), "the base exposes nothing publicly"


# Pod networks of common clusters (kind and flannel, k3s, Calico, EKS custom networking): where
# Prometheus' pod discovery scrapes from.
POD_ADDRESSES = ("10.244.1.7", "10.42.0.9", "192.168.12.5", "100.64.3.4", "172.20.4.2")


@BOTH
def test_prometheus_reaches_metrics_over_the_pod_network(path):
    docs = render(path)
    (config,) = of_kind(docs, "ConfigMap").values()
    for name, deployment in of_kind(docs, "Deployment").items():
        container = app(deployment)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] == "/metrics", name
        env = {**config["data"], **{e["name"]: e.get("value") for e in container.get("env", [])}}
        for prefix, settings_cls in SETTINGS.items():
            configured = env.get(f"{prefix}METRICS_ALLOWED_NETWORKS")
            default = settings_cls.model_fields["metrics_allowed_networks"].get_default(call_default_factory=True)
            allowed = Networks(configured.split(",") if configured else default)
            for address in POD_ADDRESSES:
                assert address in allowed, (name, prefix, address)
