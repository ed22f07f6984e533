#!/usr/bin/env bash
# The main demo from a fresh machine: set-up and build, then 2-rank torchrun DDP training on
# Fashion-MNIST with plain DDP, gradcomp "none" and gradcomp Top-K 1%, printing a table.
# Extra arguments go to the example, e.g. `bash scripts/demo.sh --epochs 1`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
python3 -m torch.distributed.run --nproc-per-node 2 examples/fashion_mnist_ddp.py \
  --json results/demo.json "$@"
