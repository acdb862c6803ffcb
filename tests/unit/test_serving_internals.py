"""`shared/serving/` subclasses uvicorn's httptools protocol and server, uvicorn-worker's worker and
gunicorn's logger and application base, hooks into gunicorn's master, imports a private uvicorn type,
and reads prometheus_client's sample files and chooses its value class again: internals those packages
may change in any release. Each is pinned to one minor release (pyproject.toml); these tests name every
internal used, with its signature (and, where our code re-implements a method, a digest of its
source), and every name imported from those packages by `shared/serving/` and `shared/metrics.py`, so
that an upgrade that changes any of it fails here, by name, rather than in production."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib
import inspect
from pathlib import Path

import pytest
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger
from gunicorn.workers.base import Worker as GunicornWorker
from prometheus_client import metrics, multiprocess, values
from prometheus_client.mmap_dict import MmapedDict
from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn_worker import UvicornWorker

from shared.serving import gunicorn_worker
from shared.settings import ProcessSettings
from tests.conftest import ROOT

SERVING = ROOT / "shared" / "serving"
# Where the names imported from uvicorn, uvicorn-worker, gunicorn and prometheus_client are looked for.
IMPORTERS = [*sorted(SERVING.glob("*.py")), ROOT / "shared" / "metrics.py"]
THIRD_PARTY = {"uvicorn", "uvicorn_worker", "gunicorn", "prometheus_client"}
# Every name those modules import from them (None: the module itself), each checked to be there. Private
# or not, none of these is left unnamed: `uvicorn._types` is a private module (the type of the app
# `_start_asgi_task` runs), and `httptools_impl`, `mmap_dict` and `values` are no public API either.
IMPORTS = {
    ("uvicorn", None),
    ("uvicorn._types", "ASGI3Application"),
    ("uvicorn.protocols.http.httptools_impl", "STATUS_LINE"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
    ("uvicorn.protocols.http.httptools_impl", "RequestResponseCycle"),
    ("uvicorn_worker", "UvicornWorker"),
    ("gunicorn.app.base", "BaseApplication"),
    ("gunicorn.arbiter", "Arbiter"),
    ("gunicorn.glogging", "Logger"),
    ("prometheus_client", "CONTENT_TYPE_LATEST"),
    ("prometheus_client", "CollectorRegistry"),
    ("prometheus_client", "Counter"),
    ("prometheus_client", "Histogram"),
    ("prometheus_client", "disable_created_metrics"),
    ("prometheus_client", "generate_latest"),
    ("prometheus_client", "values"),
    ("prometheus_client.core", "Metric"),
    ("prometheus_client.mmap_dict", "MmapedDict"),
    ("prometheus_client.multiprocess", "MultiProcessCollector"),
}

# HttpToolsProtocol's methods that BoundedHttpToolsProtocol overrides or calls.
PROTOCOL_METHODS = {
    "__init__": (
        "(self, config: 'Config', server_state: 'ServerState', app_state: 'dict[str, Any]', "
        "_loop: 'asyncio.AbstractEventLoop | None' = None) -> 'None'"
    ),
    "data_received": "(self, data: 'bytes') -> 'None'",
    "connection_made": "(self, transport: 'asyncio.Transport') -> 'None'",
    "connection_lost": "(self, exc: 'Exception | None') -> 'None'",
    "shutdown": "(self) -> 'None'",
    "on_message_begin": "(self) -> 'None'",
    "on_url": "(self, url: 'bytes') -> 'None'",
    "on_header": "(self, name: 'bytes', value: 'bytes') -> 'None'",
    "on_headers_complete": "(self) -> 'None'",
    "on_body": "(self, body: 'bytes') -> 'None'",
    "on_message_complete": "(self) -> 'None'",
    "_unset_keepalive_if_required": "(self) -> 'None'",
    "_should_upgrade": "(self) -> 'bool'",
    "_unsupported_upgrade_warning": "(self) -> 'None'",
    "handle_websocket_upgrade": "(self) -> 'None'",
    "timeout_keep_alive_handler": "(self) -> 'None'",
    "_start_asgi_task": "(self, cycle: 'RequestResponseCycle', app: 'ASGI3Application') -> 'None'",
}
# HttpToolsProtocol's instance attributes that BoundedHttpToolsProtocol reads (checked on uvicorn's own
# protocol, so that none of ours can stand in for one).
PROTOCOL_ATTRIBUTES = {
    "parser",
    "cycle",
    "url",
    "headers",
    "expect_100_continue",
    "transport",
    "flow",
    "server_state",
    "app_state",
    "loop",
    "client",
    "logger",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "limit_concurrency",
    "scope",
    "config",
    "tasks",
}
# What a refusal under overload reads of uvicorn's flow control and server state.
FLOW_ATTRIBUTES = {"write_paused"}
SERVER_STATE_ATTRIBUTES = {"default_headers"}
# RequestResponseCycle's attributes it reads or sets.
CYCLE_ATTRIBUTES = {"response_complete", "keep_alive"}
# The status lines of the answers it writes itself: 408 and 431 (a head refused) and 503 (shed).
STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}
# Methods our code re-implements rather than extends, with the digest of the source they copy: a change
# there is to be read and carried over.
COPIED = {
    (HttpToolsProtocol, "data_received"): "010a7ae59a5d3b1a5e7326ce246878568629d126a076d8af5ba10cab040fae43",
    (HttpToolsProtocol, "_start_asgi_task"): "9c08c2571ae9b0380320a24c20c3af18d165f168c21bc3aaf14754a5b0fc2b8a",
    (UvicornWorker, "_serve"): "eb799ef03d6393179135c6235dc0a9a00884ad34bc600a0b8cc514d22c25aafc",
}
# What the gunicorn worker class uses of uvicorn-worker's.
WORKER_METHODS = {"_install_sigquit_handler": "(self) -> 'None'", "_serve": "(self) -> 'None'"}
WORKER_ATTRIBUTES = {"config", "wsgi", "sockets", "CONFIG_KWARGS"}
# uvicorn.Server's methods DrainingServer overrides, and the attributes it and the worker's `_serve`
# read: `should_exit` (a signal arrived during startup), `started` (startup went through).
SERVER_METHODS = {
    "__init__": "(self, config: 'Config') -> 'None'",
    "startup": "(self, sockets: 'list[socket.socket] | None' = None) -> 'None'",
    "shutdown": "(self, sockets: 'list[socket.socket] | None' = None) -> 'None'",
}
SERVER_ATTRIBUTES = {"should_exit", "started"}
# What shared/serving/workers.py uses of gunicorn itself: the logger it extends (`setup`, which its
# constructor calls once it has the two loggers), the application base it fills in (`cfg`, which
# `load_config` sets), the exit code of a worker that could not boot, and the settings it passes
# (every key of `options`).
GUNICORN_METHODS = {
    (Logger, "setup"): "(self, cfg)",
    (BaseApplication, "__init__"): "(self, usage=None, prog=None)",
    (BaseApplication, "load_config"): "(self)",
    (BaseApplication, "load"): "(self)",
    (BaseApplication, "run"): "(self)",
}
LOGGER_ATTRIBUTES = {"error_log", "access_log"}
APPLICATION_ATTRIBUTES = {"cfg"}
# The settings' hooks it sets, with the arguments gunicorn calls them with, and what the hook reads of
# each argument: the arbiter (gunicorn's master) as `server`, and the worker that exited.
GUNICORN_HOOKS = {"child_exit": "(server, worker)"}
HOOK_ARGUMENTS = {"server": {"log"}, "worker": {"pid"}}
# prometheus_client's unannotated sample-file functions, which shared/serving/multiprocess.py and
# shared/metrics.py type.
PROMETHEUS_FUNCTIONS = {
    (MmapedDict, "__init__"): "(self, filename, read_mode=False)",
    (MmapedDict, "read_all_values_from_file"): "(filename)",
    (MmapedDict, "read_value"): "(self, key)",
    (MmapedDict, "write_value"): "(self, key, value, timestamp)",
    (MmapedDict, "close"): "(self)",
    (multiprocess.MultiProcessCollector, "merge"): "(files, accumulate=True)",
    (values, "get_value_class"): "()",
}
# prometheus_client's module attribute shared/serving/multiprocess.py assigns: the class every metric
# created afterwards stores its values in.
PROMETHEUS_VALUE_CLASS = "ValueClass"


def self_attributes(path: Path, class_name: str) -> tuple[set[str], set[str]]:
    """The names `class_name` in `path` reads as `self.<name>`, and the names it defines itself
    (methods, class attributes, and attributes it assigns as `self.<name> = ...`)."""
    tree = ast.parse(path.read_text())
    (cls,) = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == class_name]
    used: set[str] = set()
    defined: set[str] = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.Assign):
            defined.update(target.id for target in node.targets if isinstance(target, ast.Name))
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.attr)
    return used, defined


def imported_names() -> set[tuple[str, str | None]]:
    """What `IMPORTERS` import from `THIRD_PARTY`: (module, name), name None for `import module`."""
    found: set[tuple[str, str | None]] = set()
    for path in IMPORTERS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in THIRD_PARTY:
                found |= {(node.module, alias.name) for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {(alias.name, None) for alias in node.names if alias.name.split(".")[0] in THIRD_PARTY}
    return found


def test_every_name_imported_from_the_pinned_packages_is_named_here_and_still_there():
    found = imported_names()
    assert found - IMPORTS == set(), f"shared/serving or shared/metrics.py imports {found - IMPORTS}: name them here"
    assert IMPORTS - found == set(), f"{IMPORTS - found} is imported no more: remove it from IMPORTS"
    for module_name, name in sorted(IMPORTS, key=str):
        module = importlib.import_module(module_name)
        assert name is None or hasattr(module, name), f"{module_name} has no {name} any more"


def test_every_uvicorn_internal_the_protocol_uses_is_named_here():
    used, defined = self_attributes(SERVING / "protocol.py", "BoundedHttpToolsProtocol")
    # Its own attributes are set in its __init__ (assigned), or are class attributes.
    unnamed = used - (defined - set(PROTOCOL_METHODS)) - set(PROTOCOL_METHODS) - PROTOCOL_ATTRIBUTES
    assert not unnamed, f"BoundedHttpToolsProtocol uses {unnamed} of uvicorn's protocol: name them in this test"


def test_every_uvicorn_worker_internal_the_worker_uses_is_named_here():
    used, defined = self_attributes(SERVING / "workers.py", "Worker")
    unnamed = used - (defined - set(WORKER_METHODS)) - set(WORKER_METHODS) - WORKER_ATTRIBUTES
    assert not unnamed, f"the gunicorn worker uses {unnamed} of uvicorn-worker's: name them in this test"


@pytest.mark.parametrize("name", sorted(PROTOCOL_METHODS))
def test_the_protocol_methods_used_are_uvicorns_as_they_were(name):
    method = getattr(HttpToolsProtocol, name, None)
    assert method is not None, f"uvicorn's HttpToolsProtocol has no {name} any more: shared/serving/protocol.py"
    assert str(inspect.signature(method)) == PROTOCOL_METHODS[name], f"HttpToolsProtocol.{name} changed"


def test_every_uvicorn_server_internal_the_draining_server_uses_is_named_here():
    used, defined = self_attributes(SERVING / "server.py", "DrainingServer")
    unnamed = used - (defined - set(SERVER_METHODS)) - set(SERVER_METHODS) - SERVER_ATTRIBUTES
    assert not unnamed, f"DrainingServer uses {unnamed} of uvicorn's Server: name them in this test"


def test_the_protocol_attributes_used_are_uvicorns_as_they_were():
    async def app(scope, receive, send):
        raise NotImplementedError

    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(Config(app, log_config=None), ServerState(), {}, _loop=loop)
        protocol.on_message_begin()
        missing = {name for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)}
        protocol.connection_made(_Transport())
        missing |= {f"flow.{name}" for name in FLOW_ATTRIBUTES if not hasattr(protocol.flow, name)}
        state = protocol.server_state
        missing |= {f"server_state.{name}" for name in SERVER_STATE_ATTRIBUTES if not hasattr(state, name)}
        protocol.connection_lost(None)
    finally:
        loop.close()
    assert not missing, f"uvicorn's HttpToolsProtocol has no {missing} any more: shared/serving/protocol.py"
    cycle_init = inspect.getsource(RequestResponseCycle.__init__)
    for name in CYCLE_ATTRIBUTES:
        assert f"self.{name} = " in cycle_init, f"uvicorn's RequestResponseCycle has no {name} any more"
    for status, line in STATUS_LINES.items():
        assert STATUS_LINE.get(status) == line, f"uvicorn's STATUS_LINE[{status}] changed"


class _Transport(asyncio.Transport):
    """Enough of a transport for the protocol to be connected and disconnected."""

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 8000) if name in {"peername", "sockname"} else default

    def is_closing(self):
        return False

    def close(self):
        pass


@pytest.mark.parametrize(("owner", "name"), sorted(COPIED, key=lambda key: key[1]))
def test_the_methods_re_implemented_here_are_unchanged_upstream(owner, name):
    digest = hashlib.sha256(inspect.getsource(getattr(owner, name)).encode()).hexdigest()
    assert digest == COPIED[owner, name], (
        f"{owner.__module__}.{owner.__name__}.{name} changed: shared/serving re-implements it, carry the change over"
    )


def test_the_worker_internals_used_are_uvicorn_workers_as_they_were():
    for name, signature in WORKER_METHODS.items():
        method = getattr(UvicornWorker, name, None)
        assert method is not None, f"uvicorn-worker's UvicornWorker has no {name} any more"
        assert str(inspect.signature(method)) == signature, f"UvicornWorker.{name} changed"
    # `config` is uvicorn-worker's, built with CONFIG_KWARGS; `wsgi` and `sockets` are gunicorn's.
    worker_init = inspect.getsource(UvicornWorker.__init__)
    assert "config_kwargs.update(self.CONFIG_KWARGS)" in worker_init
    assert "self.config = Config(**config_kwargs)" in worker_init
    gunicorn_worker_source = inspect.getsource(GunicornWorker)
    assert "self.wsgi = " in gunicorn_worker_source
    assert "self.sockets = " in gunicorn_worker_source
    assert issubclass(gunicorn_worker(ProcessSettings()), UvicornWorker)
    for name, signature in SERVER_METHODS.items():
        assert str(inspect.signature(getattr(Server, name))) == signature, f"uvicorn.Server.{name} changed"
    server_init = inspect.getsource(Server.__init__)
    for name in SERVER_ATTRIBUTES:
        assert f"self.{name} = " in server_init, f"uvicorn's Server has no {name} any more: shared/serving/server.py"


def test_every_gunicorn_internal_the_master_uses_is_named_here():
    for class_name, base, attributes in (
        ("_ProcessLogger", Logger, LOGGER_ATTRIBUTES),
        ("_GunicornServer", BaseApplication, APPLICATION_ATTRIBUTES),
    ):
        methods = {name for owner, name in GUNICORN_METHODS if owner is base}
        used, defined = self_attributes(SERVING / "workers.py", class_name)
        unnamed = used - (defined - methods) - methods - attributes
        assert not unnamed, f"{class_name} uses {unnamed} of gunicorn's {base.__name__}: name them in this test"


def hook_argument_attributes(function_name: str) -> dict[str, set[str]]:
    """The attributes a module-level function of workers.py reads of each of its arguments."""
    tree = ast.parse((SERVING / "workers.py").read_text())
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function_name]
    arguments: dict[str, set[str]] = {argument.arg: set() for argument in function.args.args}
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in arguments:
            arguments[node.value.id].add(node.attr)
    return arguments


def test_what_the_child_exit_hook_reads_is_named_here_and_gunicorns_as_it_was():
    assert hook_argument_attributes("_worker_exited") == HOOK_ARGUMENTS, "name what the hook reads in this test"
    # The hook is called with the arbiter and the worker; the arbiter's `log` is its logger, and the
    # worker's `pid` is set in the master when it is spawned.
    assert "self.cfg.child_exit(self, worker)" in inspect.getsource(Arbiter.reap_workers)
    assert "self.log = self.cfg.logger_class(" in inspect.getsource(Arbiter.setup)
    assert "worker.pid = pid" in inspect.getsource(Arbiter.spawn_worker)


def gunicorn_options() -> set[str]:
    """The settings `serve_workers` passes to gunicorn: the keys of its `options`."""
    tree = ast.parse((SERVING / "workers.py").read_text())
    (function,) = [
        node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "serve_workers"
    ]
    (options,) = [
        node.value
        for node in ast.walk(function)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "options"
    ]
    assert isinstance(options, ast.Dict)
    return {key.value for key in options.keys if isinstance(key, ast.Constant)}


def test_the_gunicorn_internals_used_are_as_they_were():
    for (owner, name), signature in GUNICORN_METHODS.items():
        method = getattr(owner, name, None)
        assert method is not None, f"gunicorn's {owner.__name__} has no {name} any more: shared/serving/workers.py"
        assert str(inspect.signature(method)) == signature, f"gunicorn's {owner.__name__}.{name} changed"
    logger_init = inspect.getsource(Logger.__init__)
    for name in LOGGER_ATTRIBUTES:
        assert f"self.{name} = " in logger_init, f"gunicorn's Logger has no {name} any more: shared/serving/workers.py"
    # `_ProcessLogger.setup` rewires the two loggers gunicorn's has set up: the constructor calls it last.
    assert logger_init.index("self.setup(cfg)") > max(logger_init.index(f"self.{n} = ") for n in LOGGER_ATTRIBUTES)
    # BaseApplication builds `cfg` before it calls `load_config`, which fills it in.
    assert "self.cfg = Config(" in inspect.getsource(BaseApplication.load_default_config)
    assert isinstance(Arbiter.WORKER_BOOT_ERROR, int)
    config = GunicornConfig()
    options = gunicorn_options()
    assert "bind" in options
    unknown = options - set(config.settings)
    assert not unknown, f"gunicorn has no setting {unknown} any more: shared/serving/workers.py"
    for name, signature in GUNICORN_HOOKS.items():
        assert name in options
        assert str(inspect.signature(config.settings[name].value)) == signature, f"gunicorn's {name} hook changed"


@pytest.mark.parametrize(("owner", "name"), sorted(PROMETHEUS_FUNCTIONS, key=lambda key: key[1]))
def test_the_prometheus_sample_file_functions_used_are_as_they_were(owner, name):
    function = getattr(owner, name, None)
    assert function is not None, f"prometheus_client's {owner.__name__} has no {name} any more"
    assert str(inspect.signature(function)) == PROMETHEUS_FUNCTIONS[owner, name], f"{owner.__name__}.{name} changed"


def test_the_value_class_multiprocess_mode_assigns_is_prometheus_clients_as_it_was():
    tree = ast.parse((SERVING / "multiprocess.py").read_text())
    assigned = {
        target.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id.startswith("prometheus")
    }
    assert assigned == {PROMETHEUS_VALUE_CLASS}, (
        f"multiprocess.py assigns {assigned} of prometheus_client's: name it here"
    )
    assert hasattr(values, PROMETHEUS_VALUE_CLASS), (
        f"prometheus_client's values has no {PROMETHEUS_VALUE_CLASS} any more"
    )
    # The assignment counts because every metric looks the class up there when it creates a value.
    assert f"values.{PROMETHEUS_VALUE_CLASS}(" in inspect.getsource(metrics)
