from __future__ import annotations

import gc
import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def single_rank_group() -> Iterator[None]:
    """A one-process Gloo world, for tests that need DDP but not several ranks."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        # Collect the test's DDP models and hook states first, so the group (and its Gloo
        # threads) is torn down here rather than at an arbitrary later garbage collection.
        gc.collect()
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def _fixed_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
