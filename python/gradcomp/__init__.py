"""gradcomp: gradient compression with error feedback for PyTorch DDP.

import gradcomp
state = gradcomp.register(ddp_model, "topk", ratio=0.01)
"""

from gradcomp import ops
from gradcomp._C import compressor_names
from gradcomp.config import CompressorConfig, NoCompression, TopK, parse_spec
from gradcomp.hook import HookState, comm_hook, register

__version__ = "0.1.0"

__all__ = [
    "CompressorConfig",
    "HookState",
    "NoCompression",
    "TopK",
    "comm_hook",
    "compressor_names",
    "ops",
    "parse_spec",
    "register",
]
