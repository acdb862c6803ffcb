"""No Docker engine runs here, so the compose file is checked against the code it runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.settings import GatewaySettings
from scripts.devstack import DEFAULT_PORTS, PROCESSES
from services.inventory.settings import InventorySettings
from services.orders.settings import OrdersSettings
from services.users.settings import UsersSettings
from services.webhooks.settings import WebhooksSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "gateway": GatewaySettings,
    "users": UsersSettings,
    "orders": OrdersSettings,
    "inventory": InventorySettings,
    "webhooks": WebhooksSettings,
}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_process_and_dependency_is_named_with_a_healthcheck():
    services = compose()["services"]
    assert set(PROCESSES) | {"postgres", "redis", "jaeger"} <= set(services)
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


def test_services_use_their_own_databases():
    services = compose()["services"]
    urls = {
        name: services[name]["environment"][f"{name.upper()}_DATABASE_URL"] for name in PROCESSES if name != "gateway"
    }
    assert len({url.rsplit("/", 1)[1] for url in urls.values()}) == len(urls)
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for url in urls.values():
        assert f"CREATE DATABASE {url.rsplit('/', 1)[1]};" in init
