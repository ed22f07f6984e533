"""collective="two_phase", "auto" and hierarchy on 2, 3, 4 and 8 Gloo ranks (spawned on
loopback; a tiny model, so 8 processes fit on 2 cores)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import gradcomp
from gradcomp.bucket_split import MIN_PART, base_name, even_bounds, split_entries
from gradcomp.cost_model import Link, allgather_wire, allreduce_wire, choose_collective

import collective_workers
from collective_workers import VectorNet, inputs_of
from conftest import free_port

_PART = re.compile(r"\[(\d+):(\d+)\]")


def _spawn(fn, world_size: int, tmp_path: Path, *extra) -> list[dict]:
    mp.spawn(
        fn, args=(world_size, free_port(), str(tmp_path), *extra), nprocs=world_size, join=True
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _place(residuals: dict[str, torch.Tensor], reduced: bool) -> dict[str, torch.Tensor]:
    """Residuals of parts (``w[a:b]``, nested ``w[a:b][c:d]``) added into whole-parameter
    vectors; ``reduced``: the second-stage ones, else the first."""
    out = {n: torch.zeros(k) for n, k in VectorNet.SIZES.items()}
    for label, values in residuals.items():
        if label.endswith("/reduced") != reduced:
            continue
        start = sum(int(m.group(1)) for m in _PART.finditer(label))
        out[base_name(label)][start : start + values.numel()] += values
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("world_size", [2, 3, 4, 8])
def test_collectives_match_ddp_keep_ranks_identical_and_lose_nothing(
    tmp_path: Path, world_size: int
) -> None:
    check_exchanges(_spawn(collective_workers.exchanges, world_size, tmp_path), world_size)


def check_exchanges(ranks: list[dict], world_size: int) -> None:
    """What collective_workers.exchanges wrote (also run on one GPU by test_cuda.py)."""
    plain = ranks[0]["plain"]
    labels = [k for k in ranks[0] if "/" not in k and k != "plain"]
    for label in labels:
        for r, result in enumerate(ranks):
            # Lossless settings: DDP's average, up to the order of the float sums.
            for name, expected in plain.items():
                got = result[f"{label}/lossless"][name]
                assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (label, r, name)
            # Every rank ends bit-identical.
            for name, p0 in ranks[0][label]["params"].items():
                assert torch.equal(result[label]["params"][name], p0), (label, r, name)
        # The invariant: what was applied plus every residual (first stage averaged over its
        # holders, second stage as it is) is the average of every rank's gradients.
        holders = world_size // 2 if label.startswith("node") else world_size
        start = dict(VectorNet().named_parameters())
        for name in VectorNet.SIZES:
            applied = start[name].detach() - ranks[0][label]["params"][name]
            first = sum(_place(r[label]["residuals"], False)[name] for r in ranks) / holders
            second = sum(_place(r[label]["residuals"], True)[name] for r in ranks)
            sent = sum(inputs_of(r, t)[name] for r in range(world_size) for t in range(6))
            total = applied + first + second
            assert torch.allclose(total, sent / world_size, atol=2e-5), (label, name)
        if label.startswith("two_phase") or label == "node_two_phase":
            assert any(n.endswith("/reduced") for r in ranks for n in r[label]["residuals"])
    stats = {label: ranks[0][label]["stats"] for label in labels}
    dense = 4 * sum(VectorNet.SIZES.values()) * 6
    for label, s in stats.items():
        assert s["bytes_dense"] == dense, label
        # A ring allreduce sends 2(P-1)/P of its input (floored per bucket).
        ring = dense * 2 * (world_size - 1) / world_size
        assert math.isclose(s["wire_bytes_dense"], ring, rel_tol=1e-3), label
        assert math.isclose(s["wire_ratio"], s["wire_bytes"] / s["wire_bytes_dense"])
    # Two phases move fewer bytes than an allgather from 3 ranks on; never more than 2 payloads.
    # The denser second stage sends more in phase 2 than the plain one.
    assert stats["two_phase_denser"]["wire_bytes"] > stats["two_phase"]["wire_bytes"]
    if world_size >= 4:
        assert stats["two_phase"]["wire_bytes"] < stats["allgather"]["wire_bytes"]
        assert set(stats["two_phase"]["collectives"].values()) >= {"two_phase"}
        assert "two_phase" in stats["per_parameter"]["collectives"].values()
        between = stats["node_allgather"]["wire_bytes_between_nodes"]
        assert between < stats["allgather"]["wire_bytes"]


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("world_size", "options"),
    [(2, {"collective": "two_phase"}), (4, {"hierarchy": 2, "collective": "two_phase"})],
)
def test_resume_is_bit_identical_with_second_stage_residuals(
    tmp_path: Path, world_size: int, options: dict
) -> None:
    ranks = _spawn(collective_workers.resume, world_size, tmp_path, options)
    for result in ranks:
        for name, p in result["straight"].items():
            assert torch.equal(result["resumed"][name], p), name
    assert any(result["reduced"] for result in ranks)


def test_split_entries_cuts_parameters_not_buckets() -> None:
    entries = [("a", 0, 4 * MIN_PART + 3, True, 0, 0), ("b", 4 * MIN_PART + 3, 100, True, 0, 0)]
    parts = split_entries(entries, 4)
    bounds = even_bounds(4 * MIN_PART + 3, 4)
    for p in range(4):
        a = [e for e in parts[p] if e[0].startswith("a")]
        start, stop = bounds[p], bounds[p + 1]
        assert a == [(f"a[{start}:{stop}]", start, stop - start, True, 0, 0)]
    # "b" is too small to cut: whole, in one part only.
    assert sum(e[0] == "b" for part in parts for e in part) == 1
    # The same parameter in another bucket position is cut the same way.
    moved = split_entries([(n, o + 7, k, c, r, m) for n, o, k, c, r, m in entries], 4)
    assert [[e[0] for e in p] for p in moved] == [[e[0] for e in p] for p in parts]
    assert even_bounds(10, 3) == [0, 4, 7, 10]
    assert base_name("w[0:10][2:4]/reduced") == "w" and base_name("w/reduced") == "w"


def test_cost_model_prefers_allgather_at_two_ranks_and_two_phase_when_many() -> None:
    link = Link(latency=50e-6, bandwidth=1.25e8)
    payload = 800_000  # Top-K 1% of a 20M-element bucket, roughly
    assert choose_collective(payload, payload // 2, 2, link) == "allgather"
    assert choose_collective(payload, payload // 8, 8, link) == "two_phase"
    # Tiny payloads: latency dominates, the single allgather wins.
    assert choose_collective(64, 16, 8, Link(latency=1e-3, bandwidth=1e12)) == "allgather"
    assert allgather_wire(10, 8) == 70 and allreduce_wire(80, 8) == 140
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        Link(bandwidth=0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"collective": "ring"}, "collective='ring'; valid: 'allgather', 'two_phase', 'auto'"),
        ({"collective": "two_phase", "compressor": "powersgd"}, "powersgd allreduces"),
        ({"hierarchy": 3}, "3 ranks per node must be >= 1 and divide the world size 1"),
        ({"hierarchy": "rack"}, "hierarchy must be None, 'node' or the number"),
        ({"collective": "two_phase", "momentum": 0.9}, "momentum factor masking cannot read"),
        ({"collective": "auto", "feedback": "ef21"}, "feedback='ef21' cannot read"),
        ({"link": 1e9, "collective": "auto"}, "link must be a gradcomp.Link"),
        ({"collective": {"weight": "ring"}}, "collective 'weight': 'ring'; valid:"),
        ({"collective": {"embed.*": "two_phase"}}, "collective pattern 'embed.*' matches no"),
        ({"collective": ["two_phase"]}, "collective must be a str or a mapping"),
        (
            {"collective": "two_phase", "reduced_density_factor": 0.5},
            "reduced_density_factor=0.5 is out of range; valid: 1 <= factor <= 1024",
        ),
    ],
)
def test_bad_collective_options_are_refused(single_rank_group, options: dict, match: str) -> None:
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
    compressor = options.pop("compressor", "topk")
    with pytest.raises((ValueError, TypeError), match=re.escape(match)):
        gradcomp.register(model, compressor, **options)


@pytest.mark.distributed
def test_two_phase_with_overrides_start_iter_and_a_grad_scaler(tmp_path: Path) -> None:
    ranks = _spawn(collective_workers.options_together, 3, tmp_path)
    for r, result in enumerate(ranks):
        for name, p in result["plain"].items():
            # A power-of-two loss scale, followed by the residuals of both stages, is exact.
            assert torch.equal(result["scaled"][name], p), (r, name)
            assert torch.equal(result["skipped"][name], ranks[0]["skipped"][name]), (r, name)
            assert torch.isfinite(result["skipped"][name]).all(), (r, name)
        # The inf at step 5 made every rank's scaler skip that step and halve its scale.
        scales = result["skipped_scales"]
        assert scales[5] == scales[4] / 2, scales
        assert result["scales"][5] != result["scales"][4] / 2
