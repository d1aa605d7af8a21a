"""CI smoke subset of `faults/run` and `bench/run`: one run of every fault case, and each benchmark with
reduced counts. It asserts what must never happen (a fault not survived, a repair not done or not
counted, a dockerd that does not come back); it never asserts on speed: figures are `bench/run`'s job,
recorded in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import sys

import pytest

from conftest import requires_docker
from harness import REPO

sys.path.insert(0, str(REPO))

from bench import figures  # noqa: E402
from bench.rig import Rig  # noqa: E402
from faults.cases import CASES  # noqa: E402

pytestmark = [requires_docker, pytest.mark.dockerd, pytest.mark.slow]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault_is_survived(case, base):
    if case.rig is None:
        case.run(base)
        return
    rig = Rig("s", **case.rig).start()
    try:
        case.run(rig)
    finally:
        rig.close()


def test_bench_quick_every_figure_measured_and_nothing_lost():
    """Each figure runs end to end: repairs are all counted (repair_latency asserts it), each crash and
    hang is replaced and counted, the idle agent is alive and within sane bounds."""
    with Rig("sb", image=False, sentinel=False, docker__restart_stable_seconds=1.0) as rig:
        rows = figures.shim_overhead(rig, 10)
        rows += figures.repair_latency(rig, 2)
        rows += figures.crash_recovery(rig, 1)
        rows += figures.hang_detection(rig, 1)
        rows += figures.footprint_idle(rig, 3)
        rig.assert_nothing_lost()
    figures_seen = [r.figure for r in rows]
    assert len([f for f in figures_seen if f.startswith("repair latency")]) == 8
    assert all(r.measured for r in rows)


def test_bench_quick_metrics_scrapes_answer_and_no_container_lost_or_double():
    """Every scrape answers 200 with the agent's metrics, dockerd healthy and SIGSTOPped; every
    container that ran is counted exactly once."""
    with Rig("sm", sentinel=False, metrics=True, docker__health_failures=100) as rig:
        rows = figures.scrape_latency(rig, 2)
        rows += figures.scrape_with_slow_clients(rig, 2, clients=100)
        rows += figures.event_throughput(rig, 20)
        rig.assert_nothing_lost()
    throughput = next(r for r in rows if r.figure.startswith("event throughput"))
    assert throughput.met, throughput.note
