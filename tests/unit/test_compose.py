"""No Docker engine runs here, so the compose file is checked against the code it runs, the Prometheus
configuration by promtool, and the Grafana dashboard against the metrics the processes export."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path

import promql_parser
import yaml

from gateway.settings import GatewaySettings
from scripts.devstack import DEFAULT_PORTS, PROCESSES
from services.inventory.settings import InventorySettings
from services.orders.settings import OrdersSettings
from services.users.settings import UsersSettings
from services.webhooks.settings import WebhooksSettings
from shared.networks import Networks

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "gateway": GatewaySettings,
    "users": UsersSettings,
    "orders": OrdersSettings,
    "inventory": InventorySettings,
    "webhooks": WebhooksSettings,
    "webhooks-worker": WebhooksSettings,
}
# The delivery worker: the webhooks module's `worker` command, with health and metrics on its own port.
WORKER = "webhooks-worker"
WORKER_PORT = 8005
SCRAPED = {**DEFAULT_PORTS, WORKER: WORKER_PORT}

# Every metric the processes export (name: labels); histograms add _bucket (with `le`), _sum, _count.
COUNTERS_AND_GAUGES = {
    "http_requests_total": {"method", "route", "status"},
    "gateway_rate_limit_decisions_total": {"policy", "decision"},
    "portico_upstream_requests_total": {"service", "method", "status"},
    "portico_circuit_state": {"service"},
    "portico_webhook_deliveries_total": {"outcome"},
    "portico_webhook_queue_depth": set(),
    "portico_webhook_oldest_pending_age_seconds": set(),
}
HISTOGRAMS = {
    "http_request_duration_seconds": {"method", "route"},
    "portico_upstream_request_duration_seconds": {"service", "method"},
    "portico_webhook_attempt_duration_seconds": set(),
}
METRICS = {
    **COUNTERS_AND_GAUGES,
    **{f"{name}_bucket": labels | {"le"} for name, labels in HISTOGRAMS.items()},
    **{f"{name}_{suffix}": labels for name, labels in HISTOGRAMS.items() for suffix in ("sum", "count")},
}
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_process_and_dependency_is_named_with_a_healthcheck():
    services = compose()["services"]
    assert set(PROCESSES) | {WORKER, "postgres", "redis", "jaeger", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services
            assert condition == {"condition": "service_healthy"}, (name, dependency)


def test_each_process_runs_its_own_module_on_its_port():
    services = compose()["services"]
    for name, module in PROCESSES.items():
        command = " ".join(services[name]["command"])
        assert f"-m {module} " in command + " ", command
        env = services[name]["environment"]
        prefix = "GATEWAY_" if name == "gateway" else f"{name.upper()}_"
        assert env[f"{prefix}PORT"] == str(DEFAULT_PORTS[name])
        assert env["OTEL_SERVICE_NAME"] == name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert str(DEFAULT_PORTS[name]) in " ".join(services[name]["healthcheck"]["test"])


def test_environment_variables_match_the_settings_classes():
    services = compose()["services"]
    for name, settings_cls in SETTINGS.items():
        prefix = settings_cls.model_config["env_prefix"]
        fields = set(settings_cls.model_fields)
        for variable in services[name]["environment"]:
            if variable.startswith("OTEL_"):
                continue
            assert variable.startswith(prefix), f"{name}: {variable} lacks the prefix {prefix}"
            assert variable[len(prefix) :].lower() in fields, f"{name}: {variable} is no setting of {settings_cls}"


# Services that run as two replicas, and the callers' settings that find every replica through DNS.
REPLICATED = {
    "orders": {"gateway": "GATEWAY_ORDERS_URL", "webhooks": "WEBHOOKS_ORDERS_URL"},
    "inventory": {"gateway": "GATEWAY_INVENTORY_URL", "orders": "ORDERS_INVENTORY_URL"},
}


def test_orders_and_inventory_run_two_replicas_their_callers_find_through_dns():
    services = compose()["services"]
    for name, callers in REPLICATED.items():
        assert services[name]["deploy"]["replicas"] == 2, name
        assert "ports" not in services[name], "two replicas cannot publish one port"
        for caller, variable in callers.items():
            value = services[caller]["environment"][variable]
            assert value == f"dns+http://{name}:{DEFAULT_PORTS[name]}", (caller, variable)
            prefix = SETTINGS[caller].model_config["env_prefix"]
            field = variable[len(prefix) :].lower()
            assert str(getattr(SETTINGS[caller](**{field: value}), field)) == value
            # Compose's DNS answers with a long TTL: the caller looks again within seconds anyway.
            assert float(services[caller]["environment"][f"{prefix}UPSTREAM_DNS_MAX_TTL_SECONDS"]) <= 5


def test_services_use_their_own_databases():
    services = compose()["services"]
    urls = {
        name: services[name]["environment"][f"{name.upper()}_DATABASE_URL"] for name in PROCESSES if name != "gateway"
    }
    assert len({url.rsplit("/", 1)[1] for url in urls.values()}) == len(urls)
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for url in urls.values():
        assert f"CREATE DATABASE {url.rsplit('/', 1)[1]};" in init


def test_the_webhook_worker_runs_the_worker_command_on_the_webhooks_database():
    services = compose()["services"]
    worker = services[WORKER]
    assert worker["command"] == ["python", "-m", "services.webhooks", "worker"]
    assert worker["environment"]["OTEL_SERVICE_NAME"] == WORKER
    assert worker["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert (
        worker["environment"]["WEBHOOKS_DATABASE_URL"] == services["webhooks"]["environment"]["WEBHOOKS_DATABASE_URL"]
    )
    assert f"127.0.0.1:{WORKER_PORT}/health/ready" in " ".join(worker["healthcheck"]["test"])
    # Started once the webhooks service has migrated its database.
    assert worker["depends_on"]["webhooks"] == {"condition": "service_healthy"}


def test_processes_wait_for_their_dependencies_and_share_one_image():
    services = compose()["services"]
    for name in [*PROCESSES, WORKER]:
        assert services[name]["image"] == "portico:local"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert services[name]["healthcheck"]["test"][:2] == ["CMD", "portico-healthcheck"]
    for name in PROCESSES:
        needs = set(services[name]["depends_on"])
        assert "jaeger" in needs, name
        if name != "gateway":
            assert "postgres" in needs, name
    assert {"redis", *(n for n in PROCESSES if n != "gateway")} <= set(services["gateway"]["depends_on"])


def test_postgres_reports_healthy_only_once_it_listens_on_tcp():
    test = " ".join(compose()["services"]["postgres"]["healthcheck"]["test"])
    assert re.search(r"pg_isready -h 127\.0\.0\.1\b", test), test


def test_jaeger_is_on_the_v2_line_and_receives_otlp():
    jaeger = compose()["services"]["jaeger"]
    image, _, tag = jaeger["image"].rpartition(":")
    assert image.endswith("jaegertracing/jaeger"), "the v1 all-in-one image is no longer released"
    assert tag.split(".")[0] == "2", tag
    assert "13133/status" in " ".join(jaeger["healthcheck"]["test"])
    assert "COLLECTOR_OTLP_ENABLED" not in jaeger.get("environment", {}), "a v1 variable; v2 receives OTLP as is"


def test_only_the_gateway_is_published_beyond_loopback():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            if name != "gateway":
                assert str(port).startswith("127.0.0.1:"), (name, port)


def test_mounted_files_exist():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def prometheus_config() -> dict:
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


def test_prometheus_scrapes_every_process_and_the_worker_on_the_compose_network():
    services = compose()["services"]
    mounted = [v for v in services["prometheus"]["volumes"] if v.startswith("./deploy/prometheus/prometheus.yml:")]
    assert mounted, "the checked configuration is the one compose mounts"
    scraped = {}
    for job in prometheus_config()["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("scheme", "http") == "http"
        targets = [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]] + [
            target for static in job.get("static_configs", []) for target in static["targets"]
        ]
        assert len(targets) == 1, job
        scraped[job["job_name"]] = targets[0]
    assert scraped == {name: f"{name}:{port}" for name, port in SCRAPED.items()}
    for name, port in SCRAPED.items():
        assert name in services
        assert f"127.0.0.1:{port}/" in " ".join(services[name]["healthcheck"]["test"]), "scraped where it listens"


def test_promtool_accepts_the_prometheus_config():
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(promtool).exists(), "promtool is missing: apt-get install prometheus"
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard():
    services = compose()["services"]
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "portico.yml").read_text())["providers"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "portico.json").read_text())


def dashboard_panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_queries() -> list[str]:
    queries = [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
    variables = [variable["definition"] for variable in dashboard()["templating"]["list"]]
    return queries + [re.sub(r"^label_values\((\w+),.*\)$", r"\1", v) for v in variables]


def selectors_and_labels(query: str) -> tuple[set[str], set[str]]:
    """The metric names a query selects and every label name it matches or groups by."""
    expr = promql_parser.parse(query.replace("$__rate_interval", "1m").replace("$process", "gateway"))
    names: set[str] = set()
    labels: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {query!r}"
            names.add(node.name)
            labels.update(matcher.name for matcher in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)

    promql_parser.walk(expr, visit)
    return names, labels


def test_the_dashboard_queries_only_metrics_the_processes_export():
    for query in dashboard_queries():
        names, labels = selectors_and_labels(query)
        unknown = names - set(METRICS)
        assert not unknown, f"{query!r} reads {unknown}, which no process exports"
        known = TARGET_LABELS.union(*(METRICS[name] for name in names))
        assert labels <= known, f"{query!r} uses labels {labels - known} that {names} do not have"


def test_the_dashboard_shows_what_operators_look_for():
    selected = set().union(*(selectors_and_labels(query)[0] for query in dashboard_queries()))
    for metric in (
        "http_requests_total",  # request and error rate by route
        "http_request_duration_seconds_bucket",  # latency by route
        "gateway_rate_limit_decisions_total",
        "portico_circuit_state",
        "portico_upstream_request_duration_seconds_bucket",
        "portico_webhook_queue_depth",
    ):
        assert metric in selected, metric
    titles = {panel["title"] for panel in dashboard_panels()}
    assert len(titles) == len(dashboard_panels()), "panel titles are unique"


# Where Docker puts compose networks unless a subnet is declared: its default address pools.
DOCKER_NETWORK_ADDRESSES = ("172.17.0.2", "172.18.0.5", "172.31.0.9", "192.168.0.3", "192.168.240.7")


def test_prometheus_reaches_metrics_over_the_compose_network():
    """/metrics answers only peers in each process's METRICS_ALLOWED_NETWORKS; Prometheus scrapes
    from the compose network, which must be inside them."""
    document = compose()
    addresses = list(DOCKER_NETWORK_ADDRESSES)
    for network in (document.get("networks") or {}).values():
        for pool in ((network or {}).get("ipam") or {}).get("config", []):
            if "subnet" in pool:
                subnet = ipaddress.ip_network(pool["subnet"])
                addresses += [str(subnet.network_address), str(subnet.broadcast_address)]
    for name, settings_cls in SETTINGS.items():
        prefix = settings_cls.model_config["env_prefix"]
        configured = document["services"][name]["environment"].get(f"{prefix}METRICS_ALLOWED_NETWORKS")
        default = settings_cls.model_fields["metrics_allowed_networks"].get_default(call_default_factory=True)
        allowed = Networks(configured.split(",") if configured else default)
        for address in addresses:
            assert address in allowed, (name, address)
