"""The adoption recipes in examples/recipes/ run as documented (docs/recipes.md).

Each test launches a recipe exactly as a user would (torchrun, two torchrun "nodes",
Lightning's own launcher, accelerate launch) in a subprocess on loopback, with a timeout, and
checks the JSON line every rank prints last: gradcomp compressed every step (Top-K 1%: under a
tenth of the dense bytes), the loss fell, and all ranks ended with bit-identical parameters.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "examples" / "recipes"
PREFIX = "GRADCOMP_RECIPE_RESULT "
TIMEOUT = 90  # seconds per launch; each takes about 10 s on the 2-core CI machine


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GLOO_SOCKET_IFNAME="lo",  # loopback only, whatever the host's interfaces
        HF_HOME=str(tmp_path / "hf"),  # no user `accelerate config` file leaks in
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(cmd: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    # A session of its own, so a hung launch can be killed with all the ranks it started.
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {timeout} s; output:\n{out[-4000:]}")
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}; output:\n{out[-4000:]}"
    return out


def _results(output: str) -> list[dict[str, Any]]:
    """Every rank's report line. raw_decode ignores anything another process wrote after the
    JSON object on the same line (the ranks share one stdout)."""
    decoder = json.JSONDecoder()
    found = [
        decoder.raw_decode(line, line.index(PREFIX) + len(PREFIX))[0]
        for line in output.splitlines()
        if PREFIX in line
    ]
    return sorted(found, key=lambda r: r["rank"])


def _check(results: list[dict[str, Any]], recipe: str, steps: int, output: str) -> None:
    assert [r["rank"] for r in results] == [0, 1], output[-4000:]
    mean_first = sum(r["losses_first"] for r in results) / len(results)
    mean_last = sum(r["losses_last"] for r in results) / len(results)
    print(f"{recipe}: loss {mean_first:.3f} -> {mean_last:.3f}; stats {results[0]['stats']}")
    for r in results:
        assert r["recipe"] == recipe and r["world_size"] == 2
        stats = r["stats"]
        assert stats["compressor"] == "topk:ratio=0.01"
        assert stats["steps"] == steps
        assert 0 < stats["ratio"] < 0.1, stats
    assert results[0]["param_digest"] == results[1]["param_digest"], "replicas differ"
    assert mean_last < 0.75 * mean_first, (mean_first, mean_last)


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -r requirements-dev.txt)")


def test_plain_ddp_under_torchrun(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = _finish(_start([*cmd, str(RECIPES / "plain_ddp.py")], tmp_path), TIMEOUT)
    _check(_results(out), "plain_ddp", steps=60, output=out)


def test_plain_ddp_as_two_torchrun_nodes(tmp_path: Path) -> None:
    """The multi-node flags, really exercised: two torchrun agents, one process each, meet
    through a c10d rendezvous on 127.0.0.1, as two machines would through HOST:PORT."""
    port = free_port()
    procs = [
        _start(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=gradcomp-recipe",
                "--local-addr=127.0.0.1",
                str(RECIPES / "plain_ddp.py"),
            ],
            tmp_path,
        )
        for node in (0, 1)
    ]
    try:
        outputs = [_finish(proc, TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    per_node = [_results(out) for out in outputs]
    assert [len(r) for r in per_node] == [1, 1], outputs
    results = sorted(per_node[0] + per_node[1], key=lambda r: r["rank"])
    _check(results, "plain_ddp", steps=60, output="\n".join(outputs))
    # One process per agent, two agents that became "nodes" 0 and 1, rank 0's store on
    # loopback. (With a c10d rendezvous torchrun ignores --node_rank, with a warning, and
    # numbers the nodes as they join.)
    assert sorted(r["group_rank"] for r in results) == [0, 1]
    assert all(r["local_rank"] == 0 and r["master_addr"] == "127.0.0.1" for r in results)


def test_lightning_ddp_strategy_with_callback(tmp_path: Path) -> None:
    _needs("lightning")
    # Lightning's own launcher starts rank 1 (it re-runs the script), as users run it.
    out = _finish(_start([sys.executable, str(RECIPES / "lightning_ddp.py")], tmp_path), TIMEOUT)
    results = _results(out)
    _check(results, "lightning_ddp", steps=60, output=out)
    assert all(r["global_step"] == 60 for r in results)


def test_lightning_checkpoint_keeps_every_ranks_residuals(tmp_path: Path) -> None:
    """Lightning writes one checkpoint from rank 0; the callback puts every rank's hook state
    in it (gathered_state_dict) and each rank loads its own part on resume."""
    _needs("lightning")
    ckpt = tmp_path / "resume.ckpt"
    cmd = [sys.executable, str(RECIPES / "lightning_ddp.py"), "--resume-at", "30"]
    out = _finish(_start([*cmd, "--checkpoint", str(ckpt)], tmp_path), TIMEOUT)
    results = _results(out)
    _check(results, "lightning_ddp", steps=60, output=out)
    assert ckpt.exists()
    for r in results:
        assert r["global_step"] == 60 and r["saved_step"] == 30
        assert r["loaded_digest"] == r["saved_digest"], r["rank"]  # its own residuals came back
    assert results[0]["saved_digest"] != results[1]["saved_digest"]  # they are per rank


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_accelerate_after_prepare(tmp_path: Path, launcher: str) -> None:
    _needs("accelerate")
    if launcher == "accelerate":
        # `--multi_gpu` is Accelerate's multi-process launcher (torch.distributed.run); the
        # script's Accelerator(cpu=True) then runs on CPU and Gloo. `--cpu` would start one
        # process: on CPU, Accelerate launches several only through MPI.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        cmd += ["--num_processes=2", "--num_machines=1", "--mixed_precision=no"]
        cmd += ["--dynamo_backend=no", f"--main_process_port={free_port()}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = _finish(_start([*cmd, str(RECIPES / "accelerate_ddp.py")], tmp_path), TIMEOUT)
    results = _results(out)
    # 80 micro-batches per rank, accumulated in pairs: 40 synchronizing steps, each one hook
    # call per bucket; the no_sync() micro-batches never reach the hook.
    _check(results, "accelerate_ddp", steps=40, output=out)
    assert all(r["micro_batches"] == 80 and r["accumulate"] == 2 for r in results)
