"""No Docker engine runs here, so the compose file is checked against the code it runs, the Prometheus
configuration against Prometheus' own loading rules (tests/prometheus_config.py: no Prometheus binary
can be installed from a package registry), and the Grafana provisioning (the dashboard's queries
against what the processes export: tests/unit/test_dashboard.py)."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gateway.settings import GatewaySettings
from scripts.devstack import DEFAULT_PORTS, PROCESSES
from services.inventory.settings import InventorySettings
from services.orders.settings import OrdersSettings
from services.users.settings import UsersSettings
from services.webhooks.settings import WebhooksSettings
from shared.networks import Networks
from tests.prometheus_config import problems

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


def test_prometheus_loads_the_config():
    assert problems(PROMETHEUS_CONFIG) == []


def with_rules(config: dict, directory: Path, expr: str) -> None:
    (directory / "portico.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "portico", "rules": [{"record": "job:requests:rate5m", "expr": expr}]}]})
    )
    config["rule_files"] = ["portico.rules.yml"]


def first_job(config: dict) -> dict:
    job: dict = config["scrape_configs"][0]
    return job


# Mistakes Prometheus refuses: `promtool check config` (2.42) refuses each but the scheme, which
# Prometheus loads and then drops every target of the job for ("invalid scheme").
MISTAKES: dict[str, Callable[[dict, Path], object]] = {
    "a misspelt section": lambda c, _: c.update({"scrape_config": c.pop("scrape_configs")}),
    "a misspelt scrape setting": lambda c, _: first_job(c).update(scrape_intervall="10s"),
    "a misspelt global setting": lambda c, _: c["global"].update(scrape_timout="5s"),
    "a duration without its unit": lambda c, _: c["global"].update(scrape_interval="10"),
    "a timeout longer than the interval": lambda c, _: c["global"].update(scrape_timeout="20s"),
    "a job's timeout longer than its interval": lambda c, _: first_job(c).update(
        scrape_interval="2s", scrape_timeout="3s"
    ),
    "two jobs of one name": lambda c, _: c["scrape_configs"].append(copy.deepcopy(first_job(c))),
    "a job without a name": lambda c, _: first_job(c).update(job_name=""),
    "A records without a port": lambda c, _: first_job(c)["dns_sd_configs"][0].pop("port"),
    "an unknown record type": lambda c, _: first_job(c)["dns_sd_configs"][0].update(type="B"),
    "DNS discovery without a name": lambda c, _: first_job(c)["dns_sd_configs"][0].update(names=[]),
    "a URL as a static target": lambda c, _: first_job(c).update(
        static_configs=[{"targets": ["http://gateway:8000/metrics"]}]
    ),
    "an unknown scheme": lambda c, _: first_job(c).update(scheme="tcp"),
    "a relabelling without its target label": lambda c, _: first_job(c).update(
        relabel_configs=[{"source_labels": ["__address__"], "action": "replace"}]
    ),
    "an unknown relabel action": lambda c, _: first_job(c).update(relabel_configs=[{"action": "rename"}]),
    "a rule file that does not exist": lambda c, _: c.update(rule_files=["missing.rules.yml"]),
    "a rule that does not parse": lambda c, d: with_rules(c, d, "sum(rate(http_requests_total[5m])"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_prometheus_rules_refuse_mistakes(mistake, tmp_path):
    config = prometheus_config()
    MISTAKES[mistake](config, tmp_path)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    assert problems(path), f"{mistake} was not refused"


def test_the_prometheus_rules_load_rule_files(tmp_path):
    config = prometheus_config()
    with_rules(config, tmp_path, 'sum by (job) (rate(http_requests_total{job="gateway"}[5m]))')
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    assert problems(path) == []


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
