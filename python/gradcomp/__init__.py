"""gradcomp: gradient compression with error feedback for PyTorch DDP.

import gradcomp
state = gradcomp.register(ddp_model, "topk", ratio=0.01)
"""

from gradcomp import ops
from gradcomp._C import compressor_names
from gradcomp.auto import AutoState
from gradcomp.config import (
    BF16,
    FP16,
    QSGD,
    CompressorConfig,
    Int8,
    NoCompression,
    PowerSGD,
    RandomK,
    Sign,
    Threshold,
    TopK,
    TopKApprox,
    TopKBitmap,
    TopKInt8,
    parse_spec,
)
from gradcomp.cost_model import Link
from gradcomp.hook import HookState, comm_hook, register
from gradcomp.local_update import check_optimizer
from gradcomp.simulate import Simulator

__version__ = "0.3.0"

__all__ = [
    "AutoState",
    "BF16",
    "FP16",
    "QSGD",
    "CompressorConfig",
    "HookState",
    "Int8",
    "Link",
    "NoCompression",
    "PowerSGD",
    "RandomK",
    "Sign",
    "Simulator",
    "Threshold",
    "TopK",
    "TopKApprox",
    "TopKBitmap",
    "TopKInt8",
    "check_optimizer",
    "comm_hook",
    "compressor_names",
    "ops",
    "parse_spec",
    "register",
]
