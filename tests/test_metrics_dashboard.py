"""The Grafana dashboard: fleet overview and per-host drill-down, and every query selects metric
names that a live scrape of the agent's collectors actually contains."""

from __future__ import annotations

import json
import re

from metrics_support import REPO, live_sample_names, promql_metric_names

DASHBOARD = REPO / "etc/grafana/armhf-agent.json"


def queries(node) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and the template variables' queries."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                found.append(value["query"])
            else:
                found.extend(queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(queries(item))
    return found


def test_every_query_uses_metrics_a_live_scrape_has():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = queries(dashboard)
    assert len(exprs) >= 25
    scraped = live_sample_names()
    used = set()
    for expr in exprs:
        # Grafana's label_values(metric, label): only the first argument is a selector.
        expr = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"\1", expr)
        names = promql_metric_names(expr) - {"vector"}
        assert names, f"no metric in {expr!r}"
        assert names <= scraped, f"{sorted(names - scraped)} (in {expr!r}) not in a live scrape"
        used |= names
    # Every metric family the agent exports appears somewhere on the dashboard.
    exported = {n for n in scraped if not n.endswith(("_created",))}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"


def test_fleet_overview_and_per_host_drill_down():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Host: $instance"]
    split = next(i for i, p in enumerate(dashboard["panels"]) if p["title"] == "Host: $instance")
    for panel in dashboard["panels"][split + 1:]:
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
