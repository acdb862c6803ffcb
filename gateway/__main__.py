from gateway.app import create_app
from gateway.settings import GatewaySettings
from shared.cli import run_cli

run_cli("gateway", GatewaySettings, create_app)
