"""Prometheus' load-time rules for its configuration file, in Python, for the checks of
`deploy/prometheus/prometheus.yml` (tests/unit/test_compose.py): the suite runs where no Prometheus
binary can be installed from a package registry, so `promtool check config` is not at hand.

Written from Prometheus' own loader (config/config.go, discovery/dns, model/relabel, rules): as
Prometheus loads YAML strictly, every key is checked against the keys Prometheus knows, and an unknown
one is an error. The rules are those of the parts of the format this project can use: global
settings, scrape configs with static and DNS discovery, relabelling, and rule files (each expression
parsed with promql-parser). A key Prometheus knows but these rules do not cover (another kind of
service discovery, remote write, ...) is refused too, saying so: a configuration that uses one needs
its rules written here first, so nothing is taken as checked that was not.

`problems(path)` lists what Prometheus would refuse; an empty list is a configuration it loads.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import promql_parser
import yaml

# Prometheus' duration: units from years to milliseconds, largest first, each at most once; or "0".
DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
UNIT_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
SIZE = re.compile(r"^\d+(?:[KMGTPE]i?B|B)?$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# A rule file path may hold one `*`, in its last element only.
RULE_PATH = re.compile(r"^[^*]*(\*[^/]*)?$")
SCRAPE_PROTOCOLS = {
    "PrometheusProto",
    "PrometheusText0.0.4",
    "PrometheusText1.0.0",
    "OpenMetricsText0.0.1",
    "OpenMetricsText1.0.0",
}
RELABEL_ACTIONS = {
    "replace",
    "keep",
    "drop",
    "keepequal",
    "dropequal",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
}
DNS_RECORD_TYPES = {"SRV", "A", "AAAA", "MX", "NS"}

# Keys Prometheus knows whose rules are not written here.
HTTP_CLIENT_KEYS = {
    "basic_auth",
    "authorization",
    "oauth2",
    "bearer_token",
    "bearer_token_file",
    "tls_config",
    "proxy_url",
    "no_proxy",
    "proxy_from_environment",
    "proxy_connect_header",
    "follow_redirects",
    "enable_http2",
    "http_headers",
}
OTHER_DISCOVERY = {
    f"{kind}_sd_configs"
    for kind in [
        "azure",
        "consul",
        "digitalocean",
        "docker",
        "dockerswarm",
        "ec2",
        "eureka",
        "file",
        "gce",
        "hetzner",
        "http",
        "ionos",
        "kubernetes",
        "kuma",
        "lightsail",
        "linode",
        "marathon",
        "nerve",
        "nomad",
        "openstack",
        "ovhcloud",
        "puppetdb",
        "scaleway",
        "serverset",
        "triton",
        "uyuni",
        "vultr",
        "stackit",
    ]
}
UNCHECKED_TOP = {
    "runtime",
    "alerting",
    "scrape_config_files",
    "storage",
    "tracing",
    "remote_write",
    "remote_read",
    "otlp",
}


class Problems(list[str]):
    def at(self, where: str, message: str) -> None:
        self.append(f"{where}: {message}")


def seconds(value: Any) -> float | None:
    """A duration's seconds, None when it is not one."""
    if not isinstance(value, str) or value == "":
        return None
    if value == "0":
        return 0.0
    match = DURATION.match(value)
    if match is None:
        return None
    return sum(int(part) * unit for part, unit in zip(match.groups(), UNIT_SECONDS, strict=True) if part)


def _keys(problems: Problems, where: str, section: Any, known: set[str], unchecked: set[str] | None = None) -> bool:
    """Checks that `section` is a mapping of known keys; False when it is no mapping at all."""
    if not isinstance(section, dict):
        problems.at(where, f"expected a mapping, got {type(section).__name__}")
        return False
    for key in section:
        if key in (unchecked or set()):
            problems.at(where, f"{key!r} is a Prometheus setting whose rules tests/prometheus_config.py lacks")
        elif key not in known:
            problems.at(where, f"field {key} not found (not a Prometheus setting here)")
    return True


def _typed(
    problems: Problems, where: str, section: dict[str, Any], rules: dict[str, Callable[[Any], str | None]]
) -> None:
    for key, rule in rules.items():
        if key in section and (message := rule(section[key])) is not None:
            problems.at(f"{where}.{key}", message)


def _duration(value: Any) -> str | None:
    return None if seconds(value) is not None else f"not a valid duration: {value!r}"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _count(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else f"not a count: {value!r}"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, got {value!r}"


def _size(value: Any) -> str | None:
    return None if SIZE.match(str(value)) else f"not a size: {value!r}"


def _protocols(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "scrape_protocols cannot be empty"
    unknown = [p for p in value if p not in SCRAPE_PROTOCOLS]
    if unknown:
        return f"unknown scrape protocol {unknown}, supported: {sorted(SCRAPE_PROTOCOLS)}"
    if len({str(p).lower() for p in value}) != len(value):
        return f"duplicated protocol in scrape_protocols, got {value}"
    return None


def _labels(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected a mapping of labels, got {value!r}"
    for name, label in value.items():
        if not isinstance(name, str) or not name:
            return f"{name!r} is not a valid label name"
        if not isinstance(label, str):
            return f"the value of label {name} is not a string: {label!r}"
    return None


LIMITS = {
    "body_size_limit": _size,
    "sample_limit": _count,
    "target_limit": _count,
    "label_limit": _count,
    "label_name_length_limit": _count,
    "label_value_length_limit": _count,
    "keep_dropped_targets": _count,
}
GLOBAL_RULES: dict[str, Callable[[Any], str | None]] = {
    "scrape_interval": _duration,
    "scrape_timeout": _duration,
    "evaluation_interval": _duration,
    "rule_query_offset": _duration,
    "scrape_protocols": _protocols,
    "query_log_file": _string,
    "scrape_failure_log_file": _string,
    "external_labels": _labels,
    "metric_name_validation_scheme": lambda v: None if v in ("utf8", "legacy") else f"unknown scheme {v!r}",
    "metric_name_escaping_scheme": lambda v: (
        None if v in ("allow-utf-8", "underscores", "dots", "values") else f"unknown escaping scheme {v!r}"
    ),
    "scrape_native_histograms": _bool,
    "convert_classic_histograms_to_nhcb": _bool,
    "always_scrape_classic_histograms": _bool,
    "extra_scrape_metrics": _bool,
    **LIMITS,
}
SCRAPE_RULES: dict[str, Callable[[Any], str | None]] = {
    "job_name": _string,
    "honor_labels": _bool,
    "honor_timestamps": _bool,
    "track_timestamps_staleness": _bool,
    "scrape_interval": _duration,
    "scrape_timeout": _duration,
    "scrape_protocols": _protocols,
    "fallback_scrape_protocol": lambda v: None if v in SCRAPE_PROTOCOLS else f"unknown scrape protocol {v!r}",
    "scrape_native_histograms": _bool,
    "always_scrape_classic_histograms": _bool,
    "convert_classic_histograms_to_nhcb": _bool,
    "scrape_failure_log_file": _string,
    "metrics_path": _string,
    # Loaded as any string, then every target of the job is dropped ("invalid scheme").
    "scheme": lambda v: None if v in ("http", "https") else f"unknown scheme {v!r}: http or https",
    "enable_compression": _bool,
    "native_histogram_bucket_limit": _count,
    "native_histogram_min_bucket_factor": lambda v: None if isinstance(v, int | float) else f"not a number: {v!r}",
    "extra_scrape_metrics": _bool,
    "metric_name_validation_scheme": GLOBAL_RULES["metric_name_validation_scheme"],
    "metric_name_escaping_scheme": GLOBAL_RULES["metric_name_escaping_scheme"],
    "params": lambda v: (
        None if isinstance(v, dict) and all(isinstance(x, list) for x in v.values()) else "expected a mapping of lists"
    ),
    **LIMITS,
}
SCRAPE_KEYS = {*SCRAPE_RULES, "static_configs", "dns_sd_configs", "relabel_configs", "metric_relabel_configs"}


def _relabel(problems: Problems, where: str, rule: Any) -> None:
    known = {"source_labels", "separator", "regex", "modulus", "target_label", "replacement", "action"}
    if rule is None:
        problems.at(where, "empty or null relabeling rule")
        return
    if not _keys(problems, where, rule, known):
        return
    action = str(rule.get("action", "replace")).lower()
    if action not in RELABEL_ACTIONS:
        problems.at(where, f"unknown relabel action {rule.get('action')!r}")
        return
    try:
        re.compile(str(rule.get("regex", "(.*)")))
    except re.error as exc:
        problems.at(f"{where}.regex", f"not a valid regular expression: {exc}")
    if action == "hashmod" and not rule.get("modulus"):
        problems.at(where, "relabel configuration for hashmod requires non-zero modulus")
    needs_target = {"replace", "hashmod", "lowercase", "uppercase", "keepequal", "dropequal"}
    if action in needs_target and not rule.get("target_label"):
        problems.at(where, f"relabel configuration for {action} action requires 'target_label' value")
    if action in ("labeldrop", "labelkeep") and set(rule) - {"regex", "action"}:
        problems.at(where, f"{action} action requires only 'regex', and no other fields")
    source = rule.get("source_labels", [])
    if not isinstance(source, list) or not all(isinstance(s, str) for s in source):
        problems.at(f"{where}.source_labels", f"expected a list of label names, got {source!r}")


def _static(problems: Problems, where: str, group: Any, relabelled: bool) -> None:
    if not _keys(problems, where, group, {"targets", "labels"}):
        return
    targets = group.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        problems.at(f"{where}.targets", f"expected a list of host:port, got {targets!r}")
        return
    for target in targets:
        if not relabelled and "/" in target:
            problems.at(f"{where}.targets", f"{target!r} is not a valid hostname")
    if "labels" in group and (message := _labels(group["labels"])) is not None:
        problems.at(f"{where}.labels", message)


def _dns(problems: Problems, where: str, sd: Any) -> None:
    if not _keys(problems, where, sd, {"names", "refresh_interval", "type", "port"}):
        return
    names = sd.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        problems.at(where, "DNS-SD config must contain at least one SRV record name")
    record = str(sd.get("type", "SRV")).upper()
    if record not in DNS_RECORD_TYPES:
        problems.at(where, f"invalid DNS-SD records type {sd.get('type')}")
    elif record != "SRV" and not sd.get("port"):
        problems.at(where, "a port is required in DNS-SD configs for all record types except SRV")
    port = sd.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        problems.at(f"{where}.port", f"not a port: {port!r}")
    if "refresh_interval" in sd and (message := _duration(sd["refresh_interval"])) is not None:
        problems.at(f"{where}.refresh_interval", message)


def _scrape(problems: Problems, where: str, job: Any, interval: float) -> None:
    if job is None:
        problems.at(where, "empty or null scrape config section")
        return
    if not _keys(problems, where, job, SCRAPE_KEYS, HTTP_CLIENT_KEYS | OTHER_DISCOVERY):
        return
    if not job.get("job_name"):
        problems.at(where, "job_name is empty")
    where = f"scrape_configs[{job.get('job_name')}]"
    _typed(problems, where, job, SCRAPE_RULES)
    job_interval = seconds(job.get("scrape_interval")) or interval
    job_timeout = seconds(job.get("scrape_timeout"))
    # Left out, a job's timeout is the global one, or its own interval when that is shorter.
    if job_timeout is not None and job_timeout > job_interval:
        problems.at(where, "scrape timeout greater than scrape interval")
    relabels = job.get("relabel_configs") or []
    for i, rule in enumerate(relabels):
        _relabel(problems, f"{where}.relabel_configs[{i}]", rule)
    for i, rule in enumerate(job.get("metric_relabel_configs") or []):
        _relabel(problems, f"{where}.metric_relabel_configs[{i}]", rule)
    for i, group in enumerate(job.get("static_configs") or []):
        _static(problems, f"{where}.static_configs[{i}]", group, bool(relabels))
    for i, sd in enumerate(job.get("dns_sd_configs") or []):
        _dns(problems, f"{where}.dns_sd_configs[{i}]", sd)


def _rule_file(problems: Problems, path: Path) -> None:
    where = str(path)
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        problems.at(where, f"not YAML: {exc}")
        return
    if document is None:
        return
    if not _keys(problems, where, document, {"groups"}):
        return
    names: set[str] = set()
    for i, group in enumerate(document.get("groups") or []):
        at = f"{where}: groups[{i}]"
        known = {"name", "interval", "query_offset", "limit", "rules", "labels"}
        if not _keys(problems, at, group, known):
            continue
        name = group.get("name")
        if not name:
            problems.at(at, "group name must not be empty")
        elif name in names:
            problems.at(at, f"repeated group name {name!r}")
        names.add(str(name))
        for key in ("interval", "query_offset"):
            if key in group and (message := _duration(group[key])) is not None:
                problems.at(f"{at}.{key}", message)
        for j, rule in enumerate(group.get("rules") or []):
            _rule(problems, f"{at}.rules[{j}]", rule)


def _rule(problems: Problems, where: str, rule: Any) -> None:
    known = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    if not _keys(problems, where, rule, known):
        return
    record, alert = rule.get("record"), rule.get("alert")
    if bool(record) == bool(alert):
        problems.at(where, "one of 'record' or 'alert' must be set")
    if record is not None and not METRIC_NAME.match(str(record)):
        problems.at(where, f"invalid recording rule name: {record}")
    if record is not None and ({"for", "keep_firing_for", "annotations"} & set(rule)):
        problems.at(where, "a recording rule has no 'for', 'keep_firing_for' or 'annotations'")
    expr = rule.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        problems.at(where, "field 'expr' must be set in rule")
    else:
        try:
            promql_parser.parse(expr)
        except Exception as exc:
            problems.at(f"{where}.expr", f"could not parse expression: {exc}")
    for key in ("for", "keep_firing_for"):
        if key in rule and (message := _duration(rule[key])) is not None:
            problems.at(f"{where}.{key}", message)
    for key in ("labels", "annotations"):
        if key in rule and (message := _labels(rule[key])) is not None:
            problems.at(f"{where}.{key}", message)


def problems(path: Path) -> list[str]:
    """What Prometheus would refuse in the configuration file at `path` (rule files included)."""
    found = Problems()
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"not YAML: {exc}"]
    if config is None:
        return found
    known = {"global", "rule_files", "scrape_configs"}
    if not _keys(found, "config", config, known, UNCHECKED_TOP):
        return found
    settings = config.get("global") or {}
    interval = 60.0
    if _keys(found, "global", settings, set(GLOBAL_RULES)):
        _typed(found, "global", settings, GLOBAL_RULES)
        interval = seconds(settings.get("scrape_interval")) or 60.0
        given = seconds(settings.get("scrape_timeout"))
        if given is not None and given > interval:
            found.at("global", "global scrape timeout greater than scrape interval")
    jobs = config.get("scrape_configs") or []
    if not isinstance(jobs, list):
        found.at("scrape_configs", "expected a list")
        jobs = []
    seen: set[str] = set()
    for i, job in enumerate(jobs):
        _scrape(found, f"scrape_configs[{i}]", job, interval)
        name = job.get("job_name") if isinstance(job, dict) else None
        if name in seen:
            found.at("scrape_configs", f"found multiple scrape configs with job name {name!r}")
        seen.add(name)
    for pattern in config.get("rule_files") or []:
        if not isinstance(pattern, str) or not RULE_PATH.match(pattern):
            found.at("rule_files", f"invalid rule file path {pattern!r}")
            continue
        full = pattern if Path(pattern).is_absolute() else str(path.parent / pattern)
        matched = sorted(glob.glob(full))
        if not matched and "*" not in pattern:
            found.at("rule_files", f"{pattern}: no such file")
        for rule_file in matched:
            _rule_file(found, Path(rule_file))
    return found
