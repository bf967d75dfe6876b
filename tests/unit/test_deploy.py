"""
The deployment files of C{deploy/} (docs/deploy.md), checked against the code
they deploy, without running anything:

- every metric and label the alerting rules and the Grafana dashboard use is one
  refresherd really exposes (built from L{refresherd.metrics.metrics_for} and read
  back as Prometheus reads it), with the labels Prometheus gives it when it scrapes
  as C{deploy/prometheus.yml} says (C{job} becomes C{exported_job});
- the example configuration loads, and builds the whole service (on a memory
  reactor);
- the systemd unit and the Containerfile (which no Docker engine here can
  build) are checked statically, their options parsed as twistd parses them.

The same files checked by C{promtool} and C{systemd-analyze}:
tests/integration/test_deploy.py; a real Prometheus scraping a real
refresherd, and the container's health check against a real refresherd:
tests/e2e/test_deploy.py.
"""

from __future__ import annotations

import re
import shlex
import sys
import types
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock

from refresherd.config import Config, load_config
from refresherd.core.flights import ABORT_TIMEOUT
from refresherd.core.refresher import DRAIN_TIMEOUT
from refresherd.errors import ConfigError
from refresherd.metrics import metrics_for
from refresherd.run.build import build_service
from refresherd.run.services import CLOSE_TIMEOUT
from refresherd.run.settings import Setting, Settings
from tests.deploy_files import (
    ALERTS,
    CONFIG,
    CREDENTIALS,
    DEPLOY,
    DOCS,
    ENVIRON,
    GRAFANA_BUILTINS,
    ROOT,
    VARIABLE,
    alert_rules,
    container_argv,
    container_options,
    containerfile,
    dashboard,
    dashboard_queries,
    endpoint_port,
    healthcheck,
    loaded_config,
    scrape_config,
    secret_files,
    substitute,
    twistd_options,
    value,
    values,
)

DOCUMENTED_FAMILIES = (
    "refresherd_requests_total",
    "refresherd_fetches_total",
    "refresherd_fetch_duration_seconds",
    "refresherd_fetches_in_flight",
    "refresherd_coalesced_total",
    "refresherd_early_refreshes_total",
    "refresherd_store_errors_total",
    "refresherd_purged_total",
    "refresherd_http_request_duration_seconds",
    "refresherd_stale_served_age_seconds",
    "refresherd_queue_depth",
)
"""The metrics of docs/README.md, "`GET /metrics` (admin listener)", as they are named in PromQL."""


# -- the metrics refresherd exposes, as Prometheus stores them -----------------------


def exposed() -> dict[str, frozenset[str]]:
    """
    Every sample name of refresherd's C{/metrics} (C{_total}, C{_bucket},
    C{_sum}, C{_count}, C{_created}, C{process_*}), each with its label names:
    the metrics of one configured job, with one child of every labelled metric
    made so that its samples appear, rendered and parsed as Prometheus parses them.
    """
    metrics = metrics_for(["job"])
    for metric in vars(metrics).values():
        # A labelled metric has no samples until a child exists.
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    metrics.count_request("job", "hit")  # the two tallied in plain numbers
    metrics.observe_http("/healthz", 200, 0.001)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in names.items()}


def target_labels(scrape: Mapping[str, Any]) -> frozenset[str]:
    """The labels Prometheus puts on every series of a target: job, instance, static ones."""
    labels = {"job", "instance"}
    for static in scrape.get("static_configs", []):
        labels.update(static.get("labels", {}))
    return frozenset(labels)


def stored() -> dict[str, frozenset[str]]:
    """
    The series names Prometheus holds after scraping refresherd with
    deploy/prometheus.yml, with their label names: the target labels added, and
    with C{honor_labels: false} a scraped label that collides with one of them
    renamed C{exported_NAME} (refresherd's C{job} becomes C{exported_job}).
    Plus C{up}, which Prometheus makes itself.
    """
    scrape = scrape_config()
    target = target_labels(scrape)
    honor = scrape.get("honor_labels", False)
    result = {}
    for name, labels in exposed().items():
        renamed = {
            label if honor or label not in target else f"exported_{label}" for label in labels
        }
        result[name] = frozenset(renamed | target)
    result["up"] = target
    return result


def test_the_catalogue_is_refresherds() -> None:
    """What the other tests check against is derived from the code, and complete."""
    names = exposed()
    assert names["refresherd_requests_total"] == {"job", "status"}
    assert names["refresherd_fetch_duration_seconds_bucket"] == {"job", "le"}
    assert names["refresherd_http_request_duration_seconds_count"] == {"route", "code"}
    assert names["refresherd_store_errors_total"] == {"operation"}
    assert names["process_cpu_seconds_total"] == frozenset()
    for family in DOCUMENTED_FAMILIES:
        assert family in names or f"{family}_bucket" in names, family
    series = stored()
    assert series["refresherd_requests_total"] == {"job", "instance", "exported_job", "status"}
    assert series["process_open_fds"] == {"job", "instance"}
    assert series["up"] == {"job", "instance"}


# -- PromQL, crudely --------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<duration>[0-9]+(?:ms|s|m|h|d|w|y)(?![A-Za-z0-9_:]))
    | (?P<number>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![A-Za-z_:]))
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)
AGGREGATORS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile".split()
)
FUNCTIONS = frozenset(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_quantile
    holt_winters hour idelta increase irate label_join label_replace ln log2 log10 minute
    month predict_linear rate resets round scalar sgn sort sort_desc sqrt time timestamp
    vector year avg_over_time min_over_time max_over_time sum_over_time count_over_time
    quantile_over_time stddev_over_time stdvar_over_time last_over_time present_over_time""".split()
)
GROUPING = frozenset({"by", "without"})
MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})


@attrs.frozen
class Selector:
    metric: str
    labels: frozenset[str]


@attrs.frozen
class Grouping:
    keyword: str
    labels: frozenset[str]
    scope: tuple[Selector, ...]
    """The selectors the grouping applies to."""


@attrs.frozen
class Query:
    """What a PromQL expression refers to."""

    selectors: tuple[Selector, ...]
    groupings: tuple[Grouping, ...]
    aggregations: tuple[frozenset[str] | None, ...]
    """For each aggregation, the labels it keeps (C{by}); None for C{without}."""
    functions: frozenset[str]

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(s.metric for s in self.selectors)

    def result_labels(self, series: Mapping[str, frozenset[str]]) -> frozenset[str]:
        """
        The labels of the result: those every aggregation keeps, else those of
        every selected series; C{histogram_quantile} consumes C{le}.
        """
        if self.aggregations:
            kept = [labels for labels in self.aggregations if labels is not None]
            result = frozenset.intersection(*kept) if kept else frozenset()
        else:
            result = frozenset.intersection(*(series[s.metric] for s in self.selectors))
        return result - {"le"} if "histogram_quantile" in self.functions else result


def tokens(expr: str) -> list[tuple[str, str]]:
    result = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position:]!r} in {expr!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            result.append((kind, match.group()))
    return result


def parse_promql(expr: str) -> Query:
    """
    The metrics, label matchers and groupings of C{expr}: enough PromQL for
    the expressions of deploy/ (anything else is an error, never a silent pass).
    """
    toks = tokens(expr)
    closing: dict[int, int] = {}
    stack: list[int] = []
    for i, (kind, text) in enumerate(toks):
        if kind == "op" and text in "({":
            stack.append(i)
        elif kind == "op" and text in ")}":
            closing[stack.pop()] = i
    if stack:
        raise ValueError(f"unbalanced brackets in {expr!r}")

    selectors: list[tuple[int, Selector]] = []
    pending: list[tuple[str, frozenset[str], tuple[int, int]]] = []
    aggregations: list[frozenset[str] | None] = []
    functions: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "op" and text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "ident":
            i += 1
            continue
        if text in KEYWORDS:
            i += 1
        elif text in GROUPING | MATCHING:
            if following != ("op", "("):
                raise ValueError(f"{text} without a label list in {expr!r}")
            end = closing[i + 1]
            labels = frozenset(t for k, t in toks[i + 2 : end] if k == "ident")
            if text in GROUPING:
                previous = toks[i - 1]
                if previous[0] == "ident" and previous[1] in AGGREGATORS:
                    # sum by (labels) (expression)
                    start = end + 1
                    scope = (start, closing[start])
                else:
                    # sum (expression) by (labels)
                    opening = next(o for o, c in closing.items() if c == i - 1)
                    scope = (opening, i - 1)
                aggregations.append(labels if text == "by" else None)
            else:
                scope = (0, len(toks))
            pending.append((text, labels, scope))
            i = end + 1
        elif following == ("op", "("):
            if text in AGGREGATORS:
                # sum (expression), unless "by (labels)" follows (recorded there)
                after = closing[i + 1] + 1
                if after >= len(toks) or toks[after][1] not in GROUPING:
                    aggregations.append(frozenset())
            elif text not in FUNCTIONS:
                raise ValueError(f"unknown function {text!r} in {expr!r}")
            functions.add(text)
            i += 1
        elif following == ("ident", "by") or following == ("ident", "without"):
            if text not in AGGREGATORS:
                raise ValueError(f"{text} is not an aggregation in {expr!r}")
            functions.add(text)
            i += 1
        else:
            matched: set[str] = set()
            j = i + 1
            if following == ("op", "{"):
                end = closing[i + 1]
                inside = toks[i + 2 : end]
                for n in range(0, len(inside), 4):
                    matcher = inside[n : n + 4]
                    if (
                        len(matcher) < 3
                        or matcher[0][0] != "ident"
                        or matcher[1][1] not in ("=", "!=", "=~", "!~")
                        or matcher[2][0] != "string"
                        or (len(matcher) == 4 and matcher[3] != ("op", ","))
                    ):
                        raise ValueError(f"cannot read the matchers of {text} in {expr!r}")
                    matched.add(matcher[0][1])
                j = end + 1
            selectors.append((i, Selector(text, frozenset(matched))))
            i = j
    groupings = tuple(
        Grouping(keyword, labels, tuple(s for at, s in selectors if start <= at <= end))
        for keyword, labels, (start, end) in pending
    )
    return Query(
        tuple(s for _, s in selectors), groupings, tuple(aggregations), frozenset(functions)
    )


def check_query(expr: str, series: Mapping[str, frozenset[str]]) -> Query:
    """C{expr} refers only to series Prometheus has, by labels they have."""
    query = parse_promql(expr)
    assert query.selectors, f"no metric in {expr!r}"
    for selector in query.selectors:
        assert selector.metric in series, f"{selector.metric} is not a metric of refresherd"
        unknown = selector.labels - series[selector.metric]
        assert not unknown, f"{selector.metric} has no label {sorted(unknown)} ({expr!r})"
    for grouping in query.groupings:
        assert grouping.scope, f"{grouping.keyword} applies to nothing in {expr!r}"
        for selector in grouping.scope:
            unknown = grouping.labels - series[selector.metric]
            assert not unknown, (
                f"{grouping.keyword} ({', '.join(sorted(grouping.labels))}): "
                f"{selector.metric} has no label {sorted(unknown)} ({expr!r})"
            )
    return query


def test_parse_promql() -> None:
    """The crude parser finds what the checks rely on, and refuses what it cannot read."""
    query = parse_promql(
        'histogram_quantile(0.9, sum by (job, le) (rate(a_bucket{x="1", y=~"a|b"}[5m]))) > 3600'
    )
    assert query.selectors == (Selector("a_bucket", frozenset({"x", "y"})),)
    assert [(g.keyword, g.labels) for g in query.groupings] == [("by", frozenset({"job", "le"}))]
    assert query.groupings[0].scope == query.selectors
    assert query.functions == {"histogram_quantile", "sum", "rate"}
    series = {"a_bucket": frozenset({"job", "le", "x", "y", "z"})}
    assert query.result_labels(series) == {"job"}

    query = parse_promql('sum(rate(b_total{s="a"}[1m])) by (i) / sum(c) + d{e!="f"} offset 5m')
    assert [s.metric for s in query.selectors] == ["b_total", "c", "d"]
    assert query.groupings[0].scope == (Selector("b_total", frozenset({"s"})),)
    series = {n: frozenset({"i", "e", "s"}) for n in ("b_total", "c", "d")}
    assert query.result_labels(series) == frozenset()
    assert parse_promql("up == 0").result_labels({"up": frozenset({"job"})}) == {"job"}
    assert parse_promql("up{job='x'} == 0").selectors == (Selector("up", frozenset({"job"})),)

    for bad in ("rate(x[5m]", 'nonsense(x{a="b"})', '{__name__="x"}', "x{a=b}", "x @ 5"):
        with pytest.raises(ValueError):
            parse_promql(bad)
    with pytest.raises(AssertionError, match="no label"):
        check_query("sum by (nope) (x)", {"x": frozenset({"a"})})
    with pytest.raises(AssertionError, match="not a metric"):
        check_query("y", {"x": frozenset()})


TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


# -- alerts.yml -------------------------------------------------------------------------


def test_alerts_structure() -> None:
    """The rule file layout; each alert with for:, a severity, a summary and a description."""
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    names = []
    for group in document["groups"]:
        assert set(group) <= {"name", "rules", "interval", "limit"}
        assert isinstance(group["name"], str) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            names.append(rule["alert"])
            assert re.fullmatch(r"Refresherd[A-Z][A-Za-z]+", rule["alert"])
            assert isinstance(rule["expr"], str)
            assert re.fullmatch(r"[0-9]+[smh]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert set(rule["annotations"]) == {"summary", "description"}
            assert all(rule["annotations"].values())
    assert len(names) == len(set(names))


def test_alerts_cover_what_matters() -> None:
    """Stale too long, fetch failures, store errors, a saturated origin, a process down."""
    by_metric: dict[str, list[Query]] = {}
    for rule in alert_rules():
        query = parse_promql(rule["expr"])
        for selector in query.selectors:
            by_metric.setdefault(selector.metric, []).append(query)
    assert "refresherd_stale_served_age_seconds_bucket" in by_metric
    assert "refresherd_store_errors_total" in by_metric
    assert "refresherd_queue_depth" in by_metric
    assert "up" in by_metric
    failures = [
        rule["expr"] for rule in alert_rules() if "refresherd_fetches_total" in rule["expr"]
    ]
    assert any('outcome=~"error|timeout"' in expr for expr in failures)
    (down,) = [rule for rule in alert_rules() if parse_promql(rule["expr"]).metrics == {"up"}]
    assert f'job="{scrape_config()["job_name"]}"' in down["expr"]


def test_alerts_use_real_metrics_and_labels() -> None:
    """Every metric an alert selects exists, with every label it names, in annotations too."""
    series = stored()
    for rule in alert_rules():
        query = check_query(rule["expr"], series)
        labels = query.result_labels(series)
        for text in rule["annotations"].values():
            for label in TEMPLATE_LABEL.findall(text):
                assert label in labels, f"{rule['alert']}: $labels.{label} is not in {labels}"


# -- grafana-dashboard.json -------------------------------------------------------------


def test_dashboard_structure() -> None:
    """Importable: the DS_PROMETHEUS input, a recent schema, every panel with targets on it."""
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    (source,) = board["__inputs"]
    assert source == {**source, "name": "DS_PROMETHEUS", "type": "datasource"}
    assert source["pluginId"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], f"{panel['title']} has no targets"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == datasource, variable["name"]


def test_dashboard_variables_are_defined() -> None:
    defined = {v["name"] for v in dashboard()["templating"]["list"]} | GRAFANA_BUILTINS
    texts = [target["expr"] for _, target in dashboard_queries()]
    texts += [v["query"]["query"] for v in dashboard()["templating"]["list"]]
    for text in texts:
        for match in VARIABLE.finditer(text):
            assert (match.group(1) or match.group(2)) in defined, text


def test_dashboard_uses_real_metrics_and_labels() -> None:
    """Every query, the variables' included; each legend names labels its query keeps."""
    series = stored()
    for title, target in dashboard_queries():
        query = check_query(substitute(target["expr"]), series)
        labels = query.result_labels(series)
        for label in LEGEND_LABEL.findall(target.get("legendFormat", "")):
            assert label in labels, f"{title}: legend {{{{{label}}}}} is not in {sorted(labels)}"
    for variable in dashboard()["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.*), *([A-Za-z_]+)\)", variable["query"]["query"])
        assert match is not None, variable["name"]
        query = check_query(substitute(match.group(1)), series)
        assert match.group(2) in query.result_labels(series), variable["name"]


def quantile(expr: str) -> str:
    """The quantile of a C{histogram_quantile(q, ...)} expression."""
    found = re.match(r"histogram_quantile\(([0-9.]+),", expr)
    assert found, expr
    return found[1]


def test_dashboard_shows_every_metric() -> None:
    """docs/README.md's metrics, with what the operator asked for on each."""
    queries = [
        (title, parse_promql(substitute(t["expr"])), t["expr"]) for title, t in dashboard_queries()
    ]
    referenced = {metric for _, query, _ in queries for metric in query.metrics}
    for family in DOCUMENTED_FAMILIES:
        assert referenced & {family, f"{family}_bucket", f"{family}_count"}, family
    fetch_quantiles = {
        quantile(expr)
        for _, query, expr in queries
        if "refresherd_fetch_duration_seconds_bucket" in query.metrics
    }
    assert fetch_quantiles == {"0.5", "0.95", "0.99"}
    status_by = [
        g.labels
        for _, query, _ in queries
        for g in query.groupings
        if query.metrics == {"refresherd_requests_total"}
    ]
    assert frozenset({"status"}) in status_by
    assert any('status="hit"' in expr for _, _, expr in queries)
    assert any(
        "route" in g.labels
        for _, query, _ in queries
        for g in query.groupings
        if "refresherd_http_request_duration_seconds_bucket" in query.metrics
    )
    assert any(
        g.labels == {"outcome"}
        for _, query, _ in queries
        for g in query.groupings
        if query.metrics == {"refresherd_fetches_total"}
    )


# -- refresherd.toml --------------------------------------------------------------------


def credential_names() -> set[str]:
    """The names of the files the example configuration reads from LoadCredential=."""
    return set(re.findall(re.escape(f'"file:{CREDENTIALS}') + r'([^"/]+)"', CONFIG.read_text()))


def test_config_loads() -> None:
    """The example production configuration is valid, with its secrets where it says."""
    config = loaded_config()
    assert config.store.url == "redis://:env:REDIS_PASSWORD@redis.internal:6379/0"
    env_names = set(re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)', CONFIG.read_text()))
    env_names |= set(re.findall(r":env:([A-Za-z_][A-Za-z0-9_]*)@", config.store.url))
    assert env_names == set(ENVIRON)
    for name in set(ENVIRON) - {"REDIS_PASSWORD"}:  # that one is read by the store
        with pytest.raises(ConfigError, match=f"environment variable '{name}' is not set"):
            environ = {k: v for k, v in ENVIRON.items() if k != name}
            load_config(str(CONFIG), environ, read_file=secret_files())
    auth = config.auth
    for tokens in (auth.read_tokens, auth.write_tokens, auth.admin_tokens, auth.metrics_tokens):
        assert tokens and all(token.source in ("env", "file") for token in tokens)
    assert auth.admin_tokens[0].value == "token-admin-token-0123456789"
    assert credential_names() == {"write-token", "admin-token", "metrics-token"}

    kinds = {job.fetch: job for job in config.jobs.values()}
    assert set(kinds) == {"http", "python"} and len(config.jobs) == 2
    http = kinds["http"]
    assert http.arg_patterns and http.tags and http.stale > 0 and http.stale_if_error > 0
    assert http.retries > 0 and http.timeout < http.wait_timeout
    assert http.headers["Authorization"].source == "env"
    assert kinds["python"].callable == "myproject.reports:monthly_sales"


@pytest.fixture
def myproject(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example python job's module, as the operator's package would provide it."""
    package = types.ModuleType("myproject")
    reports = types.ModuleType("myproject.reports")
    monkeypatch.setattr(
        reports,
        "monthly_sales",
        lambda year, month: {"year": year, "month": month},
        raising=False,
    )
    monkeypatch.setattr(package, "reports", reports, raising=False)
    monkeypatch.setitem(sys.modules, "myproject", package)
    monkeypatch.setitem(sys.modules, "myproject.reports", reports)


def build(
    config: Config,
    listen: str | None = None,
    admin_listen: str | None = None,
    environ: Mapping[str, str] = ENVIRON,
) -> MemoryReactorClock:
    """The whole service, as twistd would build it, listening on a memory reactor."""
    settings = Settings(
        config=config,
        listen=Setting(listen or config.server.listen, "--listen"),
        admin_listen=Setting(admin_listen or config.server.admin_listen, "--admin-listen"),
        store=Setting(config.store.url, f"{CONFIG}: store.url"),
        workers=1,
        log_format="text",
    )
    reactor = MemoryReactorClock()
    build_service(settings, reactor, environ)
    return reactor


@pytest.mark.usefixtures("myproject")
def test_config_builds_the_service() -> None:
    """
    The Redis URL (its password from the environment), the endpoints, both jobs
    and the admin listener off loopback (allowed: admin tokens are configured),
    as the unit and the container run them.
    """
    config = loaded_config()
    reactor = build(config)
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (8080, "0.0.0.0"),
        (8081, "0.0.0.0"),
    ]
    options = container_options()
    build(config, options["listen"], options["admin-listen"])
    with pytest.raises(ConfigError, match="environment variable 'REDIS_PASSWORD' is not set"):
        build(config, environ={})
    open_admin = attrs.evolve(config, auth=attrs.evolve(config.auth, admin_tokens=()))
    with pytest.raises(ConfigError, match="may listen only on loopback"):
        build(open_admin)


# -- refresherd.service -----------------------------------------------------------------


def timespan(text: str) -> float:
    """Seconds of a systemd time span: "30s", "2min", "1min 30s", "45"."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
    if re.fullmatch(r"[0-9]+", text):
        return float(text)
    parts = re.findall(r"([0-9]+)\s*([a-z]+)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(int(n) * units[u] for n, u in parts)


def test_unit_runs_refresherd_in_the_foreground() -> None:
    argv = shlex.split(value("Service", "ExecStart"))
    assert argv[0] == "/opt/refresherd/bin/twistd"
    options = twistd_options(argv[1:])
    assert options["nodaemon"] and options["pidfile"] == ""
    assert options.subCommand == "refresherd"
    assert options.subOptions["config"] == "/etc/refresherd/refresherd.toml"
    assert value("Service", "Type") in ("simple", "exec")
    assert value("Install", "WantedBy") == "multi-user.target"


def test_unit_reload_sends_sighup_to_the_main_process() -> None:
    """systemctl reload: the signal refresherd reloads its configuration on (docs/deploy.md)."""
    assert shlex.split(value("Service", "ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]


def test_unit_user_restarts_and_stopping() -> None:
    users = values("Service", "User")
    assert values("Service", "DynamicUser") == ["yes"] or users[-1:] not in ([], ["root"], ["0"])
    assert value("Service", "Restart") == "on-failure"
    assert timespan(value("Service", "RestartSec")) >= 1
    assert int(value("Unit", "StartLimitBurst")) >= 1
    assert timespan(value("Unit", "StartLimitIntervalSec")) > 0
    assert value("Service", "KillSignal") == "SIGTERM"
    # The main process stops the others (the workers of --workers) itself.
    assert value("Service", "KillMode") == "mixed"
    # The drain, the aborted fetches releasing their leases, then the time answers have to
    # reach their clients, and a margin.
    stopping = DRAIN_TIMEOUT + ABORT_TIMEOUT + CLOSE_TIMEOUT
    assert timespan(value("Service", "TimeoutStopSec")) >= stopping + 5


def test_unit_secrets() -> None:
    """The env: secrets from an environment file, the config's credential files loaded."""
    assert value("Service", "EnvironmentFile").lstrip("-").startswith("/etc/refresherd/")
    loaded = {v.partition(":")[0] for v in values("Service", "LoadCredential")}
    assert loaded == credential_names()


def test_unit_hardening() -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }
    for key, wanted in expected.items():
        assert value("Service", key) == wanted, key
    assert set(value("Service", "RestrictAddressFamilies").split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    }
    assert values("Service", "SystemCallFilter")[0] == "@system-service"
    # The process_* metrics read /proc/stat: ProcSubset=pid would hide it.
    assert values("Service", "ProcSubset") == []


# -- Containerfile ----------------------------------------------------------------------


def test_container_stages() -> None:
    """A build stage makes the virtualenv; the runtime stage copies only that."""
    build_stage, *_, final = stages = containerfile()
    assert len(stages) >= 2
    assert all(stage.image == "python:3.11-slim" for stage in stages)
    assert build_stage.name is not None
    assert any("venv /opt/refresherd" in command for command in build_stage.all("RUN"))
    copies = final.all("COPY") + final.all("ADD")
    assert copies == [f"--from={build_stage.name} /opt/refresherd /opt/refresherd"]
    assert any(e.startswith("PATH=/opt/refresherd/bin:") for e in final.all("ENV"))
    ignored = (DEPLOY / "Containerfile.dockerignore").read_text().splitlines()
    for copy in build_stage.all("COPY"):
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert f"!{source}" in ignored or f"!{source.rstrip('/')}/" in ignored, source


def test_container_runs_as_a_user() -> None:
    final = containerfile()[-1]
    users = final.all("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].partition(":")[0]
    assert user not in ("root", "0")
    names = [name for name, _ in final.instructions]
    assert names.index("ENTRYPOINT") > len(names) - 1 - names[::-1].index("USER")
    if user.isdigit():
        assert any(f"--uid {user}" in command for command in final.all("RUN"))


def test_container_ports_and_command() -> None:
    """EXPOSE 8080 8081; twistd's and the plugin's options as twistd parses them."""
    final = containerfile()[-1]
    assert {int(p) for e in final.all("EXPOSE") for p in e.split()} == {8080, 8081}
    assert final.all("STOPSIGNAL") in ([], ["SIGTERM"])
    argv = container_argv()
    options = twistd_options(argv[1:])
    assert options["nodaemon"] and options["pidfile"] == ""
    plugin = options.subOptions
    assert plugin["config"] == "/etc/refresherd/refresherd.toml"
    assert plugin["listen"] == "tcp:8080:interface=0.0.0.0"
    assert endpoint_port(plugin["admin-listen"]) == 8081
    assert plugin["log-format"] in ("text", "json")


def test_container_healthcheck_is_python() -> None:
    argv = healthcheck()
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    compile(argv[2], "<healthcheck>", "exec")
    assert not {"curl", "wget"} & set(re.findall(r"\w+", " ".join(argv)))
    port = endpoint_port(container_options()["listen"])
    assert f"http://127.0.0.1:{port}/healthz" in argv[2]


# -- docs/deploy.md ---------------------------------------------------------------------


def test_docs_describe_every_file() -> None:
    text = DOCS.read_text()
    for path in sorted(DEPLOY.iterdir()):
        assert f"deploy/{path.name}" in text, path.name
