"""The Grafana dashboards in infra/grafana: Grafana's shape, and every metric they query served
by a live mesh of real processes (gateway, orchestrator, projector, batcher, worker)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import all_of, spawn, wait_ready, wait_until

GRAFANA = Path(__file__).resolve().parents[2] / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# PromQL words that are not metric names: keywords, aggregation modifiers, set operators.
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names,
    label values, ranges and numbers left out)."""
    text = _STRING.sub('""', expr)  # label values may hold anything, brackets included
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        word = match.group()
        after = text[match.end() :].lstrip()
        if after.startswith("("):  # a function or an aggregation
            continue
        if word.lower() in _KEYWORDS or re.fullmatch(r"\d+(e\d+)?", word):
            continue
        before = text[: match.start()]
        if re.search(r"\d\.?$|\de-?$", before):  # the tail of a number (1e-9)
            continue
        names.add(word)
    return names


_SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{((?:[^{}"]|"(?:[^"\\]|\\.)*")*)\}')
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
TARGET_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes


def matched_labels(expr: str) -> dict[str, set[str]]:
    """metric -> the label names its selectors match on, in a PromQL expression."""
    found: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(expr):
        labels = _MATCHER_LABEL.findall(_STRING.sub('""', matchers))
        found.setdefault(name, set()).update(labels)
    return found


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.extend(_LABEL_VALUES.findall(query))
    return exprs


def queried() -> dict[str, set[str]]:
    """Every metric name the dashboards query -> the dashboards that do."""
    where: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        for expr in _queries(json.loads(path.read_text())):
            for name in metric_names(expr):
                where.setdefault(name, set()).add(path.name)
    return where


def test_promql_metric_names_are_found_where_they_hide() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket"
        '{model=~"x|y(z)", route!="/v1/{id}"}[5m]))) / clamp_min(sum without (instance) '
        "(rate(b_total[1m] offset 5m)), 1e-9) > bool 2 and on (model) c unless ignoring(x) d:rate5m"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d:rate5m"}
    assert metric_names('time() - process_start_time_seconds{instance=~"$instance"}') == {
        "process_start_time_seconds"
    }
    assert metric_names("count by (role) (dim_process_info)") == {"dim_process_info"}
    assert matched_labels('rate(a_bucket{model=~"x,y=z", le!="1"}[5m]) + b') == {
        "a_bucket": {"model", "le"}
    }


def test_the_dashboards_are_grafana_dashboards() -> None:
    assert len(DASHBOARDS) >= 5
    uids = set()
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        assert isinstance(doc["uid"], str) and 0 < len(doc["uid"]) <= 40, path
        assert doc["uid"] not in uids, f"{path.name}: uid {doc['uid']} used twice"
        uids.add(doc["uid"])
        assert doc["title"] and isinstance(doc["schemaVersion"], int), path
        assert doc["schemaVersion"] >= 36  # the datasource-by-uid shape
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in _panels(doc)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in _panels(doc):
            grid = panel["gridPos"]
            assert {"h", "w", "x", "y"} <= grid.keys() and grid["x"] + grid["w"] <= 24, panel
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel["targets"], (path.name, panel.get("title"))
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["refId"] and target["expr"].strip(), (path.name, panel["title"])
                assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
                for used in re.findall(r"\$(\w+)", target["expr"]):
                    assert used in variables, (path.name, panel["title"], used)


def test_the_provisioning_points_grafana_at_prometheus_and_at_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/dim.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def _labels(exposition: str) -> dict[str, set[str]]:
    """sample name -> the label names its samples carry."""
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def _known(exposition: str) -> set[str]:
    """The names a Prometheus query may use for what `exposition` serves."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type in ("histogram", "summary"):
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.mark.slow
async def test_every_metric_the_dashboards_query_is_served_by_a_live_mesh(
    bus: Bus, settings: Settings
) -> None:
    wanted = queried()
    assert len(wanted) >= 30, sorted(wanted)  # the extraction found the dashboards' queries
    gateway_port = free_port()
    s = settings.model_copy(update={"gateway_port": gateway_port, "queue_depth": 64})
    ports = {role: free_port() for role in ("orchestrator", "projector", "batcher", "worker")}
    _, key = await create_key(bus, principal_id="ops", tenant="acme", roles=("member",), actor="t")
    processes = [
        spawn(s, role, DIM_METRICS_PORT=str(port), DIM_NODE_ID="w1") for role, port in ports.items()
    ]
    with all_of(*processes, spawn(s, "gateway")):
        base = f"http://127.0.0.1:{gateway_port}"
        await wait_ready(base)
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:

            async def served() -> bool:
                r = await http.get("/v1/models", headers=auth)
                return r.status_code == 200 and bool(r.json()["data"])

            await wait_until(served, what="the worker in the gateway's view")
            chat = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}
            for stream in (False, True):
                r = await http.post(
                    "/v1/chat/completions", headers=auth, json={**chat, "stream": stream}
                )
                assert r.status_code == 200, r.text
            r = await http.post(
                "/v1/chat/completions", headers=auth, json={**chat, "model": "nope"}
            )
            assert r.status_code == 404  # an error answer, counted by its code
            texts = {"gateway": (await http.get("/metrics")).text}
            for role, port in ports.items():
                texts[role] = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    served_names: set[str] = set()
    served_labels: dict[str, set[str]] = {}
    for text in texts.values():
        served_names |= _known(text)
        for name, labels in _labels(text).items():
            served_labels.setdefault(name, set()).update(labels)
    missing = {name: sorted(where) for name, where in wanted.items() if name not in served_names}
    assert not missing, f"queried by the dashboards, served by no process: {missing}"
    # a label a selector matches on is one the metric carries (where it has samples to tell)
    wrong = []
    for path in DASHBOARDS:
        for expr in _queries(json.loads(path.read_text())):
            for name, labels in matched_labels(expr).items():
                if name in served_labels:
                    unknown = labels - served_labels[name] - TARGET_LABELS
                    if unknown:
                        wrong.append((path.name, name, sorted(unknown)))
    assert not wrong, f"selectors on labels their metrics do not have: {wrong}"
    # what the traffic moved is there with samples, not only declared
    assert 'dim_gateway_errors_total{code="model_not_found"}' in texts["gateway"]
    assert "dim_worker_time_to_first_token_seconds_bucket" in texts["worker"]
