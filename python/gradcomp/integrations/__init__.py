"""Integrations with training frameworks. Each submodule imports its framework when it is
imported itself, so gradcomp does not depend on any of them:

- ``gradcomp.integrations.lightning``: ``GradcompCallback``, for PyTorch Lightning's DDP
  strategy (pip install lightning);
- ``gradcomp.integrations.accelerate``: ``register`` on the model ``accelerator.prepare``
  returns, and ``Checkpoint`` for ``accelerator.register_for_checkpointing``
  (pip install accelerate).
"""

__all__: list[str] = []
