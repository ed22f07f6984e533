"""register(ddp, "auto"): the planner's model on numbers worked by hand, the candidates, and
two Gloo ranks planning, agreeing, stepping aside, re-planning and resuming."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import auto_workers
import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import gradcomp
from gradcomp.auto import candidate_methods
from gradcomp.planner import (
    BucketCost,
    LinkFit,
    StepProfile,
    choose_plan,
    fit_link,
    predict_step,
    step_tail,
    uniform_plan,
)

from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _link(bandwidth: float, latency: float = 0.0) -> LinkFit:
    link = gradcomp.Link(latency=latency, bandwidth=bandwidth)
    return LinkFit(link, link, 2)


def test_fit_link_recovers_latency_and_bandwidth() -> None:
    steps, per_byte = 2, 1.0  # allreduce at P=2: 2 message steps, wire = input
    samples = [(n, steps * 1e-4 + per_byte * n / 5e8) for n in (1 << 12, 1 << 16, 1 << 20, 1 << 23)]
    link = fit_link(samples, steps, per_byte)
    assert link.latency == pytest.approx(1e-4, rel=1e-6)
    assert link.bandwidth == pytest.approx(5e8, rel=1e-6)
    # Noise that makes bigger messages look no slower: clamped, not negative.
    flat = fit_link([(1000, 2e-3), (10_000_000, 1e-3)], 2, 1.0)
    assert flat.latency == 0.0 and flat.bandwidth == pytest.approx(1e10)
    with pytest.raises(ValueError, match="at least one"):
        fit_link([], 2, 1.0)


def test_step_tail_follows_thread_channel_and_decode() -> None:
    # Two buckets 10 ms apart; 1 MB/s link at P=2: an allreduce of 1000 bytes takes 1 ms.
    profile = StepProfile(buckets=(0, 1), gaps=(0.0, 0.010), period=0.100)
    link = _link(1e6)
    dense = BucketCost(0.0, 0.0, (("allreduce", 1000),))
    assert step_tail(profile, [dense, dense], link) == pytest.approx(0.011)
    # Encode 2 ms on the backward thread delays bucket 1; the channel is busy 20 ms with
    # bucket 0's allgather (20000 bytes, P-1 = 1 copy), so bucket 1's waits; decode 3 ms each.
    coded = BucketCost(0.002, 0.003, (("allgather", 20_000),))
    # thread: 0.002, channel 0.002+0.020=0.022, decoded 0.025; thread 0.002+0.010+0.002=0.014,
    # channel max(0.022, 0.014)+0.020=0.042, decoded 0.045.
    assert step_tail(profile, [coded, coded], link) == pytest.approx(0.045)


def test_prediction_is_the_measured_period_for_the_running_plan() -> None:
    profile = StepProfile(buckets=(3, 1), gaps=(0.0, 0.02), period=0.2)
    costs = {
        b: {"none": BucketCost(0.0, 0.0, (("allreduce", 4_000_000),)),
            "sign": BucketCost(0.004, 0.004, (("allgather", 125_000),))}
        for b in profile.buckets
    }  # fmt: skip
    link = _link(1e8)
    dense = uniform_plan(profile, "none")
    plan = predict_step(profile, costs, link, dense, dense)
    assert plan.predicted_step == pytest.approx(0.2)
    # Dense: each 40 ms allreduce waits for the previous, so the tail is 80 ms; the free
    # plan's tail is the backward gap alone.
    assert plan.predicted_compute == pytest.approx(0.2 - 0.08 + 0.02)
    assert plan.bytes_sent == 8_000_000
    # Measured under sign, predicted for dense: the difference of the two tails.
    signed = uniform_plan(profile, "sign")
    back = predict_step(profile, costs, link, dense, signed)
    there = predict_step(profile, costs, link, signed, dense)
    assert back.predicted_step - 0.2 == pytest.approx(0.2 - there.predicted_step)


@pytest.mark.parametrize("bandwidth", [1e6, 1e12])
def test_choose_plan_compresses_on_slow_links_and_steps_aside_on_fast(bandwidth: float) -> None:
    profile = StepProfile(buckets=(0, 1, 2), gaps=(0.0, 0.01, 0.01), period=0.3)
    costs = {
        b: {"none": BucketCost(0.0, 0.0, (("allreduce", 1_000_000),)),
            "fp16": BucketCost(0.002, 0.002, (("allreduce", 500_000),)),
            "topk": BucketCost(0.010, 0.002, (("allgather", 20_000),))}
        for b in profile.buckets
    }  # fmt: skip
    running = uniform_plan(profile, "none")
    plan = choose_plan(profile, costs, _link(bandwidth), running)
    if bandwidth < 1e9:
        assert set(plan.methods.values()) == {"topk"}
        dense = predict_step(profile, costs, _link(bandwidth), running, running)
        assert plan.predicted_step < 0.5 * dense.predicted_step
    else:  # the codecs cost more than the link: DDP's own way everywhere
        assert set(plan.methods.values()) == {"none"}
        assert plan.predicted_step == pytest.approx(0.3)


def test_choose_plan_needs_min_gain() -> None:
    profile = StepProfile(buckets=(0,), gaps=(0.0,), period=1.0)
    costs = {0: {"none": BucketCost(0.0, 0.0, (("allreduce", 1_000_000),)),
                 "fp16": BucketCost(0.0, 0.0, (("allreduce", 500_000),))}}  # fmt: skip
    link = _link(1e8)  # dense 10 ms, fp16 5 ms: 0.5% of a 1 s step
    running = uniform_plan(profile, "none")
    assert choose_plan(profile, costs, link, running).methods == {0: "none"}
    assert choose_plan(profile, costs, link, running, min_gain=0.0).methods == {0: "fp16"}


def test_candidate_methods() -> None:
    specs = candidate_methods(["sign", "topk"], 0.03)
    assert specs[0] == "none"
    assert [s for s in specs if s.startswith("topk")] == ["topk:ratio=0.1", "topk:ratio=0.03"]
    assert candidate_methods(["topk:ratio=0.05"], 0.01)[1:] == ["topk:ratio=0.05"]
    assert candidate_methods(["topk"], 0.5)[1:] == ["topk:ratio=0.5"]
    with pytest.raises(ValueError, match="below min_ratio"):
        candidate_methods(["topk:ratio=0.001"], 0.01)
    with pytest.raises(ValueError, match="PowerSGD"):
        candidate_methods(["powersgd"], 0.01)
    with pytest.raises(ValueError, match=r"min_ratio must be in \(0, 1\], got 0"):
        candidate_methods(["topk"], 0.0)
    with pytest.raises(TypeError, match="list of compressor specs"):
        candidate_methods("topk", 0.01)
    with pytest.raises(ValueError, match="unknown compressor"):
        candidate_methods(["nope"], 0.01)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"overrides": {"*": "none"}}, r"does not take \['overrides'\]"),
        ({"momentum": 0.9, "start_iter": 3}, r"\['momentum', 'start_iter'\]"),
        ({"replan_every": -1}, "replan_every"),
        ({"measure_steps": 1}, "measure_steps"),
        ({"drift": -0.5}, "drift must be >= 0"),
        ({"min_gain": 1.0}, r"min_gain must be in \[0, 1\)"),
        ({"link": 5}, "link must be a gradcomp.Link"),
        ({"tensorboard": "x"}, "log_every"),
        ({"min_ratio": "0.1"}, "min_ratio must be a number, got '0.1'"),
        ({"ratio": 0.1}, r"'auto' does not take \['ratio'\]; its options: \['methods'"),
    ],
)
def test_bad_auto_options_are_refused(single_rank_group, options: dict, match: str) -> None:
    ddp = DistributedDataParallel(torch.nn.Linear(4, 4))
    with pytest.raises((ValueError, TypeError), match=match):
        gradcomp.register(ddp, "auto", **options)


@pytest.mark.distributed
def test_auto_plans_agrees_steps_aside_replans_and_resumes(tmp_path: Path) -> None:
    world = 2
    mp.spawn(auto_workers.plans, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for case in ("slow", "fast", "replan"):
        first = ranks[0][case]
        for other in ranks[1:]:
            assert other[case]["stats"]["auto"]["plan"] == first["stats"]["auto"]["plan"]
            for name, p in first["params"].items():
                assert torch.equal(p, other[case]["params"][name]), (case, name)

    slow = ranks[0]["slow"]["stats"]
    assert slow["compressor"] == "auto"
    assert len(slow["auto"]["plan"]) == len(slow["collectives"]) >= 2  # every bucket
    assert any(m != "none" for m in slow["auto"]["plan"].values())
    assert slow["ratio"] < 0.7  # it compressed after planning (steps 0-5 were dense)
    assert slow["auto"]["link"]["allreduce"]["bandwidth_Bps"] == 1e6
    assert slow["auto"]["predicted_step_ms"] > 0
    assert slow["auto"]["measured_step_ms"] > 0

    fast = ranks[0]["fast"]["stats"]
    assert set(fast["auto"]["plan"].values()) == {"none"}
    assert fast["ratio"] == 1.0
    for name, p in ranks[0]["ddp"]["params"].items():  # stepping aside is DDP's own average
        assert torch.allclose(p, ranks[0]["fast"]["params"][name], rtol=1e-5, atol=1e-6), name

    replan = ranks[0]["replan"]["stats"]
    assert replan["auto"]["replans"] >= 2
    assert len(replan["auto"]["history"]) == replan["auto"]["replans"] + 1
    assert replan["steps"] == 30

    for rank in ranks:
        switch = rank["switch"]
        kept_names = set(switch["kept"])  # these names have no fnmatch specials to escape
        dropped = set(switch["before"]) - set(switch["after"])
        assert dropped and not dropped & kept_names
        for name, tensor in switch["after"].items():
            assert torch.equal(tensor, switch["before"][name])
        assert switch["reset"] == len(dropped)
        restored = rank["restored"]
        assert restored["overrides"] == switch["kept"]
        assert restored["step"] == switch["step"]
        assert set(restored["residuals"]) == set(switch["after"])
        for name, tensor in restored["residuals"].items():
            assert torch.equal(tensor, switch["after"][name])
        # The plan, its prediction and the counters of earlier plans came back with it.
        saved_auto = ranks[0]["replan"]["stats"]["auto"]
        assert restored["stats"]["auto"]["predicted_step_ms"] is not None
        assert restored["stats"]["auto"]["replans"] == saved_auto["replans"]
        resumed = rank["resumed"]["stats"]
        assert resumed["steps"] == switch["step"] + 4
        assert resumed["auto"]["plan"] == restored["stats"]["auto"]["plan"]
        assert resumed["last_step"]["ratio"] < 0.7  # compressed, with no measuring steps first
    for name, p in ranks[0]["resumed"]["params"].items():
        assert torch.equal(p, ranks[1]["resumed"]["params"][name]), name


def test_auto_on_one_rank_stays_dense(single_rank_group) -> None:
    _ddp, state = auto_workers._train(0, 10, "auto", check_every=1)
    stats = state.stats()
    assert set(stats["auto"]["plan"].values()) == {"none"}
    assert stats["steps"] == 10 and stats["ratio"] == 1.0


def test_probe_needs_torchrun(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gradcomp.__main__ import main

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit, match="under torchrun with at least 2 processes"):
        main(["probe"])
    assert main([]) == 2 and "python -m gradcomp probe" in capsys.readouterr().err


@pytest.mark.distributed
def test_probe_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), "-m", "gradcomp", "probe", "--params", "600000",
           "--methods", "sign", "topk", "--min-ratio", "0.03", "--verify", "1",
           "--json", str(out)]  # fmt: skip
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "would pick" in done.stdout and "measured" in done.stdout
    import json

    record = json.loads(out.read_text())
    methods = [r["method"] for r in record["rows"]]
    assert methods == ["ddp", "sign:chunk=1024", "topk:ratio=0.1", "topk:ratio=0.03", "auto"]
    for row in record["rows"]:
        assert row["predicted_step_ms"] > 0 and row["measured_step_ms"] > 0
        assert math.isfinite(row["error"])
    assert record["rows"][0]["bytes_sent"] == 4 * record["parameters"]
