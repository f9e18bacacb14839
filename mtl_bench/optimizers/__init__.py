"""Optimizers beyond ``torch.optim``: task-wise AdaTask variants and signSGD/Signum.

A *task-wise* optimizer (``getattr(opt, "task_wise", False)``) keeps per-task state on the shared parameters
and must be fed the K×d per-task gradient matrix with ``opt.set_task_gradients(G, present)`` before each
``opt.step()``; see :class:`TaskWiseOptimizer`.  Configs: ``configs/optimizer/{adatask_adam, adatask_rmsprop,
adatask_adagrad, signsgd}.yaml``.
"""

from __future__ import annotations

import torch

from mtl_bench.optimizers.adatask import AdaTaskAdagrad, AdaTaskAdam, AdaTaskRMSprop, TaskWiseOptimizer
from mtl_bench.optimizers.signsgd import SignSGD

__all__ = ["TaskWiseOptimizer", "AdaTaskAdam", "AdaTaskRMSprop", "AdaTaskAdagrad", "SignSGD", "is_task_wise"]


def is_task_wise(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` needs ``set_task_gradients`` before each step."""
    return bool(getattr(optimizer, "task_wise", False))
