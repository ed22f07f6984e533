"""Char-level transformer LM on Python standard-library source, 2 ranks: every compressed
method ends with a validation loss within 2% of dense, and issue 16's targets: at least two
methods within 2% at 10x fewer bytes than dense or more, one within 1% at 30x or more.

test_char_lm_1m.py runs the same tests on the 1.07M-parameter configuration."""

from __future__ import annotations

import pytest

from suite import method_params, selected_labels

pytestmark = pytest.mark.convergence
WORKLOAD = "char_lm"
MAX_RELATIVE_LOSS_ABOVE_DENSE = 0.02
# Measured misses with this recipe (2026-11-27 and 2026-11-30, dense 1.8659; docs/convergence.md
# says why): on this 0.1M-parameter model the 1-5% methods lose 3-40% in 1,000 steps.
_SPARSE = "the model's matrices hold 4k-16k elements, so 1% keeps 40-160 values per matrix"
KNOWN_MISSES = {
    "topk 1%": f"2.1068 (+12.9%): {_SPARSE}",
    "topk_approx 1%": f"2.1068 (+12.9%), the same selection as topk: {_SPARSE}",
    "threshold 1%": f"2.1068 (+12.9%), exactly topk's selection on tensors this small: {_SPARSE}",
    "topk_int8 1%": f"2.0984 (+12.5%): {_SPARSE}",
    "randomk 10%": "2.3808 (+27.6%): delayed bursts of gradient under momentum",
    "sign": "2.1829 (+17.0%): one bit per element is too coarse for this model and budget",
    "powersgd rank 2": "2.0785 (+11.4%): rank 2 of 64x192 and 64x256 matrices is too little",
    "topk 1% local clip": f"2.0901 (+12.0%): clipping before EF gains 0.8%; {_SPARSE}",
    "topk 1% dgc": f"2.0966 (+12.4%): momentum correction and masking do not help; {_SPARSE}",
    "topk 1% ef21": f"2.2096 (+18.4%): the estimate lags the velocity; {_SPARSE}",
    "topk_int8 5% momentum": "1.9283 (+3.3%): momentum correction without masking, as plain",
    "randomk 10% dgc": "2.6020 (+39.4%): masking clears the momentum of every sent element",
    "sign momentum": "2.1183 (+13.5%): momentum correction gains 3.5 points of sign's +17.0%",
}
# Issue 16's targets, asserted on the full suite's methods (each label's run is in the JSON).
AT_10X_WITHIN_2_PERCENT = 2  # at least this many methods
THIRTY_X_MISS = "no method of the suite sends 30x fewer bytes within 1% of dense on this model"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "label" in metafunc.fixturenames:
        labels = selected_labels(
            metafunc.module.WORKLOAD, metafunc.config.getoption("--convergence-subset")
        )
        compared = [x for x in labels if x != "dense"]
        metafunc.parametrize("label", method_params(compared, metafunc.module.KNOWN_MISSES))


def _relative(runs: dict[str, dict], label: str) -> float:
    return runs[label]["val_loss"] / runs["dense"]["val_loss"] - 1


def _bytes_ratio(run: dict) -> float:
    return run["bytes_per_step"] / run["dense_bytes_per_step"]


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


def _full_suite(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--convergence-subset") != "full":
        pytest.skip("a target over the whole suite's methods: run the full suite")


def test_two_methods_at_ten_times_fewer_bytes_within_two_percent(
    runs: dict[str, dict], request: pytest.FixtureRequest
) -> None:
    _full_suite(request)
    if getattr(request.module, "TEN_X_MISS", ""):  # strict: meeting it fails until updated
        request.applymarker(pytest.mark.xfail(strict=True, reason=request.module.TEN_X_MISS))
    meeting = sorted(
        label
        for label, run in runs.items()
        if run["spec"] is not None
        and _bytes_ratio(run) <= 0.1
        and _relative(runs, label) <= MAX_RELATIVE_LOSS_ABOVE_DENSE
    )
    assert len(meeting) >= request.module.AT_10X_WITHIN_2_PERCENT, (
        f"methods at 10x fewer bytes or more within 2% of dense: {meeting}"
    )


def test_a_method_at_thirty_times_fewer_bytes_within_one_percent(
    runs: dict[str, dict], request: pytest.FixtureRequest
) -> None:
    _full_suite(request)
    if not any(r["spec"] is not None and _bytes_ratio(r) <= 1 / 30 for r in runs.values()):
        pytest.skip("no method of this suite sends 30x fewer bytes than dense")
    if request.module.THIRTY_X_MISS:  # strict: meeting it fails until the page is updated
        request.applymarker(pytest.mark.xfail(strict=True, reason=request.module.THIRTY_X_MISS))
    meeting = [
        label
        for label, run in runs.items()
        if run["spec"] is not None
        and _bytes_ratio(run) <= 1 / 30
        and _relative(runs, label) <= 0.01
    ]
    assert meeting, {
        label: (round(_bytes_ratio(run), 4), round(100 * _relative(runs, label), 2))
        for label, run in runs.items()
        if run["spec"] is not None
    }
