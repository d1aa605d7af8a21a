"""The alert rules: valid, unit-tested by promtool for every alert (firing and not firing), written
for on-call, and built only from metric names a live scrape contains."""

from __future__ import annotations

import re
import subprocess

import pytest

from metrics_support import PROMTOOL_MISSING, REPO, live_sample_names, promql_metric_names, promtool

RULES = REPO / "etc/prometheus/armhf-agent.rules.yml"
RULE_TESTS = REPO / "etc/prometheus/armhf-agent.rules.test.yml"
REQUIRED = {"ArmhfAgentDown", "ArmhfAgentMetricsAbsent", "ArmhfDockerdDown", "ArmhfDockerdFlapping", "ArmhfAgentStuck",
            "ArmhfManagedFileDrifting", "ArmhfPayloadRolledBack", "ArmhfRuntimeWrapperFailing", "ArmhfPlatformNotArmV7",
            "ArmhfHostNotNative", "ArmhfBuildFailureRatioHigh",
            # rollouts (docs/FLEET.md)
            "ArmhfAgentVersionLagging", "ArmhfAgentRestartingAfterUpgrade"}


def rules() -> dict[str, dict[str, str]]:
    """alert name -> {expr, summary, description}, read from the YAML's plain and folded scalars
    (PyYAML is not a dependency)."""
    out: dict[str, dict[str, str]] = {}
    current = None
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*- alert: (\w+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        m = re.match(r"(\s*)(expr|summary|description): ?(.*)$", line)
        if m and current is not None:
            indent, key, text = len(m.group(1)), m.group(2), m.group(3)
            if text in (">-", ">", "|"):
                block = []
                for follow in lines[i + 1:]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                        break
                    block.append(follow.strip())
                text = " ".join(block)
            current[key] = text.strip().strip('"')
    return out


@pytest.fixture(scope="module")
def tool():
    path = promtool()
    if path is None:
        pytest.skip(PROMTOOL_MISSING)
    return path


def test_rules_are_valid(tool):
    result = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass(tool):
    result = subprocess.run([tool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    alerts = rules()
    assert REQUIRED <= set(alerts)
    text = RULE_TESTS.read_text()
    for name in alerts:
        assert re.search(rf"alertname: {name}\n\s+exp_alerts: \[\]", text), f"{name}: no not-firing case"
        assert re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", text), f"{name}: no firing case"


def test_every_alert_tells_on_call_what_and_what_to_do():
    for name, rule in rules().items():
        # absent() has no instance to name (nothing reports): it names the job that went silent.
        where = "{{ $labels.job }}" if rule["expr"].startswith("absent(") else "{{ $labels.instance }}"
        assert where in rule["summary"], name
        assert len(rule["description"].split()) >= 25, name


def test_rules_use_only_metrics_a_live_scrape_has():
    # `up` is Prometheus' own series for every target: the one name that is not in the agent's scrape.
    scraped = live_sample_names() | {"up"}
    used = set()
    for name, rule in rules().items():
        names = promql_metric_names(rule["expr"])
        assert names, f"{name}: no metric in {rule['expr']!r}"
        assert names <= scraped, f"{name}: {sorted(names - scraped)} not in a live scrape"
        used |= names
    assert len(used) >= 8
