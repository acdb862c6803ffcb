"""`python -m scripts.reference` (`make docs-reference`): writes the reference pages of the docs site
from the code, so they cannot drift from it:

- `docs/reference/settings.md`: every setting of every process, from its pydantic settings model
  (env name with the process's prefix, type and bounds, default, the field's description: the docstring below it);
- `docs/reference/metrics.md`: every metric each process serves, read from the registry its app
  factory builds (the apps are built, never served);
- `docs/reference/errors.md`: every error code, from the `PorticoError` classes (status, code, title,
  problem type, and when: the class's docstring);
- `docs/reference/headers.md`: the headers the gateway reads and the ones it adds, from the edge's
  own lists and the OpenAPI document's header descriptions.

`python -m scripts.reference --check` writes nothing and exits 1 naming the pages that are out of
date; `tests/unit/test_reference.py` runs the same check. A setting without a description, an error
class without a docstring or a header without a description stops the script with a message that
says what to add where.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import json
import pkgutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from pydantic import AnyUrl, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from shared.contract import PROCESSES, WORKERS, Process
from shared.errors import PROBLEM_BASE, PorticoError
from shared.settings import BaseServiceSettings, ProcessSettings

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
PACKAGES = ("shared", "gateway", "services")
REGENERATE = "make docs-reference"
GENERATED = (
    "<!-- Generated from the code by `{command}` (python -m scripts.reference): edit the code, not this page. -->"
)


class MissingDoc(Exception):
    """Something the reference must show has no text in the code; the message says what to add where."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(["the reference pages cannot be generated:", *(f"- {p}" for p in problems)]))
        self.problems = problems


def _cell(text: str) -> str:
    """Markdown table cell text: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]


def _page(title: str, intro: str, body: list[str]) -> str:
    return (
        "\n".join([f"# {title}", "", GENERATED.format(command=REGENERATE), "", intro.strip(), "", *body]).rstrip()
        + "\n"
    )


# --------------------------------------------------------------------------- the processes


@dataclass(frozen=True)
class Served:
    """One process as it runs: its name, command, settings class, and the factory of its app."""

    name: str
    command: str
    process: Process
    settings: type[BaseSettings]
    app_factory: Callable[..., Any]


def _settings_class(process: Process) -> type[BaseSettings]:
    """The settings class in `<module>.settings` whose env prefix is the process's."""
    module = importlib.import_module(f"{process.module}.settings")
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseSettings)
        and obj.__module__ == module.__name__
        and obj.model_config.get("env_prefix") == process.env_prefix
    ]
    if len(found) != 1:
        raise MissingDoc([f"{module.__name__} must define one settings class with env_prefix {process.env_prefix!r}"])
    return found[0]


def served_processes() -> list[Served]:
    """Every process and worker, the gateway first, as `python -m` runs them. An app is
    `<module>.app.create_app`; a worker's is `<module>.app.create_<command>_app`."""
    served = []
    for process in sorted(PROCESSES.values(), key=lambda p: p.name != "gateway"):
        app_module = importlib.import_module(f"{process.module}.app")
        served.append(
            Served(
                process.name, f"python -m {process.module}", process, _settings_class(process), app_module.create_app
            )
        )
        for worker in WORKERS.values():
            if worker.service == process.name:
                served.append(
                    Served(
                        worker.name,
                        f"python -m {worker.module} {worker.command}",
                        process,
                        _settings_class(process),
                        getattr(app_module, f"create_{worker.command}_app"),
                    )
                )
    return served


# --------------------------------------------------------------------------- settings


# What a setting's type reads as, by the first class it is a subclass of (a bool is also an int).
TYPE_TEXTS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (SecretStr, "secret string"),
    (AnyUrl, "URL"),
)
# The project's own setting types, by class name.
NAMED_TYPE_TEXTS = {
    "ServiceAddress": "URL, comma-separated URLs, or `dns+http://name:port`",
    "Quota": "quota (`<requests>/<seconds>s`)",
}
# How a bound reads: its words, and the attribute of the `annotated_types` constraint that holds it.
BOUND_TEXTS: dict[type, tuple[str, str]] = {
    annotated_types.Ge: (">=", "ge"),
    annotated_types.Gt: (">", "gt"),
    annotated_types.Le: ("<=", "le"),
    annotated_types.Lt: ("<", "lt"),
    annotated_types.MinLen: ("at least", "min_length"),
    annotated_types.MaxLen: ("at most", "max_length"),
}


def _type_text(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, UnionType):
        inner = [a for a in args if a is not NoneType]
        text = " or ".join(_type_text(a) for a in inner)
        return f"{text}, or unset" if NoneType in args else text
    if origin is list:
        return "list (JSON array or comma-separated)"
    if origin is tuple:
        return "list of seconds (comma-separated)"
    if origin is dict:
        return f"JSON object of {_type_text(args[1])}s"
    if inspect.isclass(annotation):
        if issubclass(annotation, enum.Enum):
            return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
        for base, text in TYPE_TEXTS:
            if issubclass(annotation, base):
                return text
        if annotation.__name__ in NAMED_TYPE_TEXTS:
            return NAMED_TYPE_TEXTS[annotation.__name__]
    if get_origin(annotation) is not None and hasattr(annotation, "__metadata__"):
        return _type_text(args[0])
    return f"`{annotation}`"


def _bounds_text(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        bound = next((kind for kind in BOUND_TEXTS if isinstance(item, kind)), None)
        if bound is not None:
            text, attribute = BOUND_TEXTS[bound]
            words.append(f"{text} {_number(getattr(item, attribute))}")
        elif isinstance(getattr(item, "pattern", None), str):
            words.append(f"matching `{item.pattern}`")
    return ", ".join(words)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default_value(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]  # settings factories take no argument
    return field.default


def _default_text(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("default_text"), str):
        return str(extra["default_text"])
    value = _default_value(field)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "a development value, refused outside development"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`"
    if isinstance(value, list | tuple):
        return f"`{','.join(_number(v) for v in value)}`" if value else "empty"
    if isinstance(value, dict):
        return f"`{json.dumps({k: str(v) for k, v in value.items()})}`"
    return f"`{value}`"


def _description(cls: type[BaseSettings], name: str) -> str | None:
    """The field's description, or, for a field a subclass only gives another default, its base's."""
    for base in cls.__mro__:
        fields: dict[str, FieldInfo] = getattr(base, "model_fields", {}) if isinstance(base, type) else {}
        if name in fields and fields[name].description:
            return fields[name].description
    return None


def _env_names(prefix: str) -> Callable[[str], str]:
    return lambda name: f"{prefix}{name.upper()}"


def _same_field(a: FieldInfo, b: FieldInfo) -> bool:
    return a.annotation == b.annotation and _default_text(a) == _default_text(b) and a.description == b.description


def _setting_rows(
    cls: type[BaseSettings], names: list[str], env: Callable[[str], str], problems: list[str]
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name in names:
        field = cls.model_fields[name]
        description = _description(cls, name)
        if not description:
            problems.append(
                f"setting {cls.__module__}.{cls.__name__}.{name} ({env(name)}) has no description: "
                "give it a docstring right below it"
            )
            continue
        kind = _type_text(field.annotation)
        bounds = _bounds_text(field)
        rows.append((f"`{env(name)}`", f"{kind}{', ' + bounds if bounds else ''}", _default_text(field), description))
    return rows


SETTINGS_INTRO = """
Every process reads its settings from the environment, each name with the process's prefix
(`GATEWAY_`, `USERS_`, `ORDERS_`, `INVENTORY_`, `WEBHOOKS_`): `USERS_LOG_LEVEL=DEBUG`,
`GATEWAY_REDIS_URL=redis://...`. Lists take a JSON array or comma-separated values; quotas are
written `<requests>/<seconds>s`, e.g. `100/60s`. Outside development (`ENVIRONMENT`) a process
refuses to start with a default or weak secret. A value out of its bounds stops the process at
start with a message naming the setting.

Tracing is configured by the standard `OTEL_*` variables as well
([observe](../operations/observe.md#configuring-traces)).
"""


def settings_page() -> str:
    problems: list[str] = []
    body: list[str] = []
    shared_bases: list[tuple[str, type[BaseSettings], str]] = [
        ("Every process", ProcessSettings, "The gateway, every service and the webhook delivery worker."),
        (
            "Every service",
            BaseServiceSettings,
            "The users, orders, inventory and webhooks services (and the delivery worker): their database.",
        ),
    ]
    covered: dict[str, FieldInfo] = {}
    for title, cls, what in shared_bases:
        names = [n for n in cls.model_fields if n not in covered]
        body += [f"## {title}", "", what + " `<PREFIX>` is the process's prefix.", ""]
        body += _table(
            ("setting", "type", "default", "description"),
            _setting_rows(cls, names, lambda n: f"<PREFIX>{n.upper()}", problems),
        )
        body.append("")
        covered.update({n: cls.model_fields[n] for n in names})
    seen: set[type[BaseSettings]] = set()
    for served in served_processes():
        cls = served.settings
        if cls in seen:
            continue
        seen.add(cls)
        readers = [s for s in served_processes() if s.settings is cls]
        prefix = served.process.env_prefix
        names = [n for n in cls.model_fields if n not in covered or not _same_field(cls.model_fields[n], covered[n])]
        commands = " and ".join(f"`{s.command}`" for s in readers)
        body += [
            f"## {served.process.name}",
            "",
            f"Read by {commands}, besides the settings above; prefix `{prefix}`.",
            "",
        ]
        body += _table(
            ("setting", "type", "default", "description"),
            _setting_rows(cls, names, _env_names(prefix), problems),
        )
        body.append("")
    if problems:
        raise MissingDoc(problems)
    return _page("Settings", SETTINGS_INTRO, body)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, order=True)
class MetricDoc:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


def _registry_of(served: Served) -> CollectorRegistry:
    # Defaults only, whatever the environment says: the registry does not depend on the values.
    app = served.app_factory(served.settings.model_construct())
    registry = getattr(app, "metrics_registry", None)
    if not isinstance(registry, CollectorRegistry):
        raise MissingDoc([f"{served.name}'s app has no metrics_registry (shared.app.install_common sets it)"])
    return registry


def _collectors(registry: CollectorRegistry) -> list[Collector]:
    # prometheus_client keeps its collectors in a private mapping and offers no public list of them.
    return list(registry._collector_to_names)


def metric_docs(registry: CollectorRegistry) -> set[MetricDoc]:
    docs = set()
    for collector in _collectors(registry):
        if isinstance(collector, MetricWrapperBase):
            # A labelled metric without children yet shows no labels in its samples: the wrapper's label
            # names are read directly (private, as prometheus_client has no public accessor for them).
            [family] = collector.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            docs.add(MetricDoc(name, family.type, tuple(collector._labelnames), family.documentation))
            continue
        describe = getattr(collector, "describe", None)
        for family in describe() if describe is not None else collector.collect():
            labels = sorted({k for sample in family.samples for k in sample.labels})
            name = family.name + ("_total" if family.type == "counter" else "")
            docs.add(MetricDoc(name, family.type, tuple(labels), family.documentation))
    return docs


METRICS_INTRO = """
Every process serves Prometheus metrics at `GET /metrics` to the networks in
`METRICS_ALLOWED_NETWORKS` ([observe](../operations/observe.md#metrics)). This page lists what each
process's registry holds, as its app builds it. With several workers, gauges carry a `pid` label
unless they say otherwise, and the database pool gauges are not served
([several workers](../operations/observe.md#several-workers)). What the label values mean is on the
page of the part that records them: [the edge](../concepts/edge.md#metrics),
[calling services](../concepts/upstream.md#when-a-call-fails),
[database pools](../operations/observe.md#database-pools),
[users](../concepts/users-and-tokens.md#wrong-passwords-slow-the-account-down),
[webhook delivery](../concepts/webhooks.md#metrics-on-the-workers-metrics).
"""


def metrics_page() -> str:
    by_process = {served.name: (served, metric_docs(_registry_of(served))) for served in served_processes()}
    everywhere = set.intersection(*(docs for _, docs in by_process.values()))
    with_database = [docs for served, docs in by_process.values() if served.process.has_database]
    every_service = set.intersection(*with_database) - everywhere

    def rows(docs: set[MetricDoc]) -> list[tuple[str, ...]]:
        return [(f"`{d.name}`", d.kind, ", ".join(f"`{label}`" for label in d.labels), d.help) for d in sorted(docs)]

    header = ("metric", "type", "labels", "help")
    body = ["## Every process", "", "Served by " + ", ".join(by_process) + ".", "", *_table(header, rows(everywhere))]
    with_db = ", ".join(name for name, (served, _) in by_process.items() if served.process.has_database)
    body += ["", "## Every service", "", f"Served by every process with a database ({with_db}).", ""]
    body += [*_table(header, rows(every_service)), ""]
    for name, (served, docs) in by_process.items():
        own = docs - everywhere - (every_service if served.process.has_database else set())
        body += [f"## {name}", "", f"`{served.command}` serves, besides the metrics above:", ""]
        body += _table(header, rows(own)) if own else ["Nothing more."]
        body.append("")
    return _page("Metrics", METRICS_INTRO, body)


# --------------------------------------------------------------------------- errors

# The "when" of error classes whose docstring says something else (the base class describes the
# hierarchy). A class that has a "when" docstring of its own must not be here (tests/unit/test_reference.py
# checks both ways).
WHEN_ELSEWHERE: dict[str, str] = {
    "shared.errors.PorticoError": (
        "An unhandled error: nothing of it in the body, and a full log line with the trace id in the process's log; "
        "the answer says `Connection: close` (the server closes the connection after it)."
    ),
}


def import_all() -> None:
    """Every module of the processes' packages, so every error class is defined (not `__main__`, which
    starts a process, nor Alembic's migration scripts)."""
    for package in PACKAGES:
        module: ModuleType = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if info.name.endswith("__main__") or ".alembic" in info.name:
                continue
            importlib.import_module(info.name)


def _subclasses(cls: type[PorticoError]) -> Iterator[type[PorticoError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def error_classes() -> list[type[PorticoError]]:
    """Every class that answers with a code of its own."""
    import_all()
    classes: set[type[PorticoError]] = {PorticoError, *_subclasses(PorticoError)}
    return sorted(
        (c for c in classes if "error_code" in vars(c)), key=lambda c: (c.status_code, c.error_code, _path(c))
    )


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def when_of(cls: type[PorticoError]) -> str | None:
    if _path(cls) in WHEN_ELSEWHERE:
        return WHEN_ELSEWHERE[_path(cls)]
    doc = vars(cls).get("__doc__")
    return inspect.cleandoc(doc).split("\n\n")[0] if doc else None


def _answered_by(cls: type) -> str:
    parts = cls.__module__.split(".")
    if parts[0] == "services":
        return parts[1]
    return "every process" if parts[0] == "shared" else parts[0]


ERRORS_INTRO = """
Every error from every process is `application/problem+json` (RFC 9457):

```json
{"type": "https://portico.dev/problems/email-taken", "title": "Email already registered", "status": 409,
 "detail": "The email a@example.com is already registered.", "error_code": "EMAIL_TAKEN",
 "request_id": "…", "trace_id": "…", "errors": [{"field": "email", "msg": "already registered"}]}
```

Domain code raises typed exceptions from the `shared/errors.py` hierarchy; one handler renders them.
`error_code` is what programs match on; `type` is the problem type's URI; `errors` names each field
of a validation problem. An error relayed from a service further down keeps its status, code and
`Retry-After`, and `service` names the service that failed
([calling services](../concepts/upstream.md#when-a-call-fails)).
GraphQL carries the same codes in `errors[].extensions.code` ([GraphQL](../concepts/graphql.md)).
"""


def errors_page() -> str:
    problems = []
    rows = []
    for cls in error_classes():
        when = when_of(cls)
        if not when:
            problems.append(
                f"error class {_path(cls)} ({cls.error_code}) says nowhere when it is answered: give it a docstring"
            )
            continue
        rows.append(
            (
                str(cls.status_code),
                f"`{cls.error_code}`",
                cls.title,
                f"`{PROBLEM_BASE}{cls.slug}`",
                when,
                _answered_by(cls),
            )
        )
    if problems:
        raise MissingDoc(problems)
    body = _table(("status", "error_code", "title", "type", "when", "answered by"), rows)
    return _page("Errors", ERRORS_INTRO, body)


# --------------------------------------------------------------------------- headers

# Headers the edge lists (to forward, to allow from browsers, to expose to them) that the OpenAPI
# document does not describe, in lower case. A header the code lists must have a description, here
# or in the OpenAPI document (tests/unit/test_reference.py).
REQUEST_HEADERS: dict[str, str] = {
    "accept": "Forwarded to the service; `text/event-stream` for `GET /v1/events`.",
    "accept-language": "Allowed from browsers (CORS); not forwarded.",
    "content-language": "Allowed from browsers (CORS); not forwarded.",
    "content-type": "The body's media type: `application/json`, or a form for `POST /v1/auth/token`.",
    "if-match": "Forwarded to the service, for its conditional writes.",
    "last-event-id": "Resumes an event stream strictly after this event id ([real time](../concepts/realtime.md)).",
    "traceparent": "W3C trace context: the request continues the caller's trace, and every hop carries it.",
    "tracestate": "W3C trace context, vendor part; allowed from browsers.",
    "x-request-id": (
        "The request's id when well formed (8 to 128 characters of `[A-Za-z0-9._:-]`), else a new one: echoed, "
        "forwarded, and in every log line and error body."
    ),
    "x-tenant-id": (
        "Optional: the tenant the caller means; one that disagrees with the credential is 403 `TENANT_MISMATCH`."
    ),
}
RESPONSE_HEADERS: dict[str, str] = {
    "location": "The new resource's URL, on a 201.",
    "traceresponse": (
        "On the answer of a sampled request: `00-<trace id>-<span id>-<flags>` (W3C Trace Context Level 2), "
        "the trace to look up in Jaeger ([observe](../operations/observe.md))."
    ),
    "x-aggregate-complete": (
        "On aggregate routes: `true` only when every part answered ([aggregation](../concepts/aggregation.md))."
    ),
    "deprecation": (
        "On deprecated routes and retired fields: `@<unix seconds>` (RFC 9745) "
        "([deprecation](../concepts/deprecation.md))."
    ),
    "sunset": "With `Deprecation`: the HTTP date after which it is gone (RFC 8594).",
    "link": 'With `Deprecation`: `<successor>; rel="successor-version"`.',
    "content-type": "The answer's media type; `application/problem+json` for every error.",
}


@dataclass(frozen=True)
class HeaderLists:
    """The edge's own lists of headers, and the OpenAPI document's descriptions."""

    forwarded_request: frozenset[str]
    cors_request: frozenset[str]
    forwarded_response: frozenset[str]
    cors_exposed: frozenset[str]
    openapi_response: dict[str, str]
    openapi_request: dict[str, str]


def header_lists() -> HeaderLists:
    from gateway import openapi, upstreams
    from gateway.edge import hygiene

    request_docs = {
        p["name"].lower(): p["description"]
        for p in (openapi.IDEMPOTENCY_KEY_PARAMETER, openapi.IF_NONE_MATCH_PARAMETER)
    }
    request_docs["authorization"] = openapi.SECURITY_SCHEMES[openapi.BEARER]["description"]
    request_docs[openapi.SECURITY_SCHEMES[openapi.API_KEY]["name"].lower()] = openapi.SECURITY_SCHEMES[openapi.API_KEY][
        "description"
    ]
    return HeaderLists(
        forwarded_request=frozenset(name.decode() for name in upstreams.FORWARD_REQUEST_HEADERS),
        cors_request=frozenset(hygiene.CORS_REQUEST_HEADERS),
        forwarded_response=frozenset(name.decode() for name in upstreams.FORWARD_RESPONSE_HEADERS),
        cors_exposed=frozenset(h.lower() for h in hygiene.CORS_EXPOSED_HEADERS),
        openapi_response={name.lower(): spec["description"] for name, spec in openapi.HEADERS.items()},
        openapi_request=request_docs,
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else ""


HEADERS_INTRO = """
The headers the gateway reads and the ones it writes, from the edge's own lists: which request
headers browsers may send (CORS) and which are forwarded to the services; which response headers the
gateway adds or passes on from a service, and which browsers may read. Every other request header
(cookies, credentials, hop-by-hop) stops at the gateway. Rate-limit headers are explained under
[rate limiting](../concepts/edge.md#rate-limiting), caching ones under
[HTTP hygiene](../concepts/edge.md#http-hygiene).
"""


def _header_rows(
    direction: Literal["request", "response"],
    columns: tuple[frozenset[str], frozenset[str]],
    openapi_docs: dict[str, str],
    own_docs: dict[str, str],
    problems: list[str],
) -> list[tuple[str, ...]]:
    """One table's rows: every header in either list or in the OpenAPI document, with "yes" in each
    column whose list holds it; a header described nowhere is a problem instead."""
    rows: list[tuple[str, ...]] = []
    for name in sorted(columns[0] | columns[1] | set(openapi_docs)):
        text = openapi_docs.get(name) or own_docs.get(name)
        if not text:
            problems.append(
                f"{direction} header {name} has no description: "
                f"add it to {direction.upper()}_HEADERS in scripts/reference.py"
            )
            continue
        rows.append((f"`{name}`", *(_yes(name in column) for column in columns), text))
    return rows


def headers_page() -> str:
    lists = header_lists()
    problems: list[str] = []
    request_rows = _header_rows(
        "request", (lists.cors_request, lists.forwarded_request), lists.openapi_request, REQUEST_HEADERS, problems
    )
    response_rows = _header_rows(
        "response", (lists.forwarded_response, lists.cors_exposed), lists.openapi_response, RESPONSE_HEADERS, problems
    )
    if problems:
        raise MissingDoc(problems)
    body = ["## Request headers", ""]
    body += _table(("header", "allowed from browsers", "passed to services as sent", "description"), request_rows)
    body += ["", "## Response headers", ""]
    body += _table(("header", "passed on from services", "readable by browsers", "description"), response_rows)
    return _page("Headers", HEADERS_INTRO, body)


# --------------------------------------------------------------------------- the command

PAGES: dict[str, Callable[[], str]] = {
    "settings.md": settings_page,
    "metrics.md": metrics_page,
    "errors.md": errors_page,
    "headers.md": headers_page,
}


def rendered() -> dict[Path, str]:
    return {REFERENCE / name: render() for name, render in PAGES.items()}


def stale_pages(pages: dict[Path, str] | None = None) -> list[Path]:
    """The reference pages whose text is not what the code gives now (`pages`: as `rendered()` gives it)."""
    pages = rendered() if pages is None else pages
    return [path for path, text in pages.items() if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.reference", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the pages out of date")
    args = parser.parse_args(argv)
    try:
        pages = rendered()
    except MissingDoc as exc:
        print(exc, file=sys.stderr)
        return 2
    stale = stale_pages(pages)
    for path in stale:
        if args.check:
            print(f"out of date: {path.relative_to(ROOT)} (run {REGENERATE})", file=sys.stderr)
        else:
            path.write_text(pages[path])
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
