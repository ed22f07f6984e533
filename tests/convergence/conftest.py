"""Options of the convergence suites (pytest marker `convergence`).

    pytest tests/convergence                          # every method (the full suite)
    pytest tests/convergence --convergence-subset ci  # the reduced subset CI runs
    pytest tests/convergence --convergence-reuse      # assert again on the last run's JSON

Each workload trains once per selected method (2 ranks, Gloo) in a module-scoped fixture and
writes its JSON to --convergence-out (default results/convergence/<workload>.json); the tests
then assert on those results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from suite import CI_SUBSET, run, selected_labels


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("convergence")
    group.addoption(
        "--convergence-subset",
        choices=["full", "ci"],
        default="full",
        help="full: every method; ci: " + "; ".join(f"{k}: {v}" for k, v in CI_SUBSET.items()),
    )
    group.addoption(
        "--convergence-out",
        type=Path,
        default=Path("results/convergence"),
        help="folder for the suites' JSON (default results/convergence)",
    )
    group.addoption(
        "--convergence-reuse",
        action="store_true",
        help="assert on the JSON already in --convergence-out instead of training again",
    )


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> dict[str, dict]:
    """The test module's workload (its WORKLOAD), trained once per selected method."""
    workload = request.module.WORKLOAD
    out = request.config.getoption("--convergence-out") / f"{workload}.json"
    labels = selected_labels(workload, request.config.getoption("--convergence-subset"))
    if not labels:
        pytest.skip(f"{workload}: no methods in this subset (the full suite runs it)")
    if request.config.getoption("--convergence-reuse"):
        if not out.is_file():
            pytest.fail(f"--convergence-reuse: {out} does not exist; run the suite first")
        result = json.loads(out.read_text())
        missing = set(labels) - {r["label"] for r in result["runs"]}
        if missing:
            pytest.fail(f"--convergence-reuse: {out} has no runs for {sorted(missing)}")
    else:
        result = run(workload, labels, out)
    return {r["label"]: r for r in result["runs"]}
