"""Fashion-MNIST, 2 ranks: every compressed method ends within 1.0 point of dense test
accuracy, dense reaches 90%, and Top-K 1% without error feedback does worse than with it."""

from __future__ import annotations

import pytest

from suite import method_params, selected_labels

pytestmark = pytest.mark.convergence
WORKLOAD = "fashion_mnist"
MAX_POINTS_BELOW_DENSE = 1.0
DENSE_AT_LEAST = 0.90
# Measured misses with this recipe (2026-11-27, 2026-11-30 and 2026-12-01; docs/convergence.md
# has the curves and why).
KNOWN_MISSES = {
    "randomk 10%": "86.39% vs dense 92.33%: each element waits about ten steps to be sent, "
    "and those delayed bursts of gradient cost accuracy under momentum",
    "sign": "90.33% vs dense 92.33%: one bit and one chunk mean per 1024 elements lose "
    "more than error feedback recovers in 5 epochs (sign momentum meets the bound)",
    "randomk 10% momentum": "86.53%: momentum correction without masking, no gain",
    "randomk 10% dgc": "88.53%: masking gains 2.1 points; each element still waits ~10 steps",
    "randomk 10% ef21 momentum": "86.15%: EF21's estimate lags as much as the residual does",
    "randomk 10% unbiased": "87.36%: no delay, but ten times the variance",
    "sign ef21": "89.35%: EF21 with sign tracks the gradient too slowly",
    "topk 1% two_phase": "91.29%: the owners' second Top-K 1% applies half of what the "
    "allgather's union of two ranks' Top-K can (reduced_density_factor=2 meets the bound)",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "label" in metafunc.fixturenames:
        labels = selected_labels(WORKLOAD, metafunc.config.getoption("--convergence-subset"))
        compared = [x for x in labels if x != "dense" and not x.endswith("without EF")]
        metafunc.parametrize("label", method_params(compared, KNOWN_MISSES))


def test_dense_reaches_90_percent(runs: dict[str, dict]) -> None:
    assert runs["dense"]["test_accuracy"] >= DENSE_AT_LEAST, runs["dense"]["curve"]


def test_method_within_one_point_of_dense(runs: dict[str, dict], label: str) -> None:
    dense, method = runs["dense"]["test_accuracy"], runs[label]["test_accuracy"]
    points_below = 100 * (dense - method)
    assert points_below <= MAX_POINTS_BELOW_DENSE, (
        f"{label}: {100 * method:.2f}% vs dense {100 * dense:.2f}% "
        f"({points_below:.2f} points below; allowed {MAX_POINTS_BELOW_DENSE})"
    )
    assert runs[label]["bytes_per_step"] < runs["dense"]["bytes_per_step"]


def test_topk_without_error_feedback_is_worse(runs: dict[str, dict]) -> None:
    with_ef = runs["topk 1%"]["test_accuracy"]
    without = runs["topk 1% without EF"]["test_accuracy"]
    assert without < with_ef, (without, with_ef)
