"""Char-level transformer LM on Python standard-library source, 2 ranks: every compressed
method ends with a validation loss within 2% of dense."""

from __future__ import annotations

import pytest

from suite import method_params, selected_labels

pytestmark = pytest.mark.convergence
WORKLOAD = "char_lm"
MAX_RELATIVE_LOSS_ABOVE_DENSE = 0.02
# Measured misses with this recipe (2026-11-27, dense 1.8659; docs/convergence.md says why):
# on this 0.1M-parameter model the 1-5% methods lose 11-28% in 1,000 steps.
_SPARSE = "the model's matrices hold 4k-16k elements, so 1% keeps 40-160 values per matrix"
KNOWN_MISSES = {
    "topk 1%": f"2.1068 (+12.9%): {_SPARSE}",
    "topk_approx 1%": f"2.1068 (+12.9%), the same selection as topk: {_SPARSE}",
    "threshold 1%": f"2.1068 (+12.9%), exactly topk's selection on tensors this small: {_SPARSE}",
    "topk_int8 1%": f"2.0984 (+12.5%): {_SPARSE}",
    "randomk 10%": "2.3808 (+27.6%): delayed bursts of gradient under momentum",
    "sign": "2.1829 (+17.0%): one bit per element is too coarse for this model and budget",
    "powersgd rank 2": "2.0785 (+11.4%): rank 2 of 64x192 and 64x256 matrices is too little",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "label" in metafunc.fixturenames:
        labels = selected_labels(WORKLOAD, metafunc.config.getoption("--convergence-subset"))
        compared = [x for x in labels if x != "dense"]
        metafunc.parametrize("label", method_params(compared, KNOWN_MISSES))


def test_dense_learns(runs: dict[str, dict]) -> None:
    # A uniform guess over 256 bytes costs ln 256 = 5.55 nats; the model must do far better.
    assert runs["dense"]["val_loss"] < 0.5 * 5.545, runs["dense"]["curve"]


def test_method_within_two_percent_of_dense(runs: dict[str, dict], label: str) -> None:
    dense, method = runs["dense"]["val_loss"], runs[label]["val_loss"]
    relative = method / dense - 1
    assert relative <= MAX_RELATIVE_LOSS_ABOVE_DENSE, (
        f"{label}: validation loss {method:.4f} vs dense {dense:.4f} "
        f"({100 * relative:+.2f}%; allowed +{100 * MAX_RELATIVE_LOSS_ABOVE_DENSE:.0f}%)"
    )
    assert runs[label]["bytes_per_step"] < runs["dense"]["bytes_per_step"]
