"""signSGD and Signum (sign of the momentum).

Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed Optimisation for Non-Convex Problems",
ICML 2018 (arXiv 1802.04434); Algorithm 1 (signSGD) and Algorithm 3 (Signum)::

    m ← β m + (1 − β) g          (Signum; β = momentum; m starts at 0)
    θ ← θ − lr · sign(m)         (signSGD: sign(g), i.e. momentum = 0)

Every coordinate moves by exactly ±lr (0 where the gradient/momentum is exactly 0, ``torch.sign(0) = 0``).
The (1 − β) factor does not change the sign, so this equals the undamped form ``m ← β m + g`` step for step.

Weight decay is **decoupled** and applied once per step before the sign update, ``θ ← θ − lr·wd·θ``
(the form stated in the docstring of the Signum PyTorch reference code, ``jiaweizzhao/Signum_pytorch``; that
code itself adds ``wd·θ`` to the gradient before the momentum, i.e. an L2 term whose effect is clipped by the
sign — we do not follow it).  Not a task-wise optimizer: it steps every parameter from its ``.grad``.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from mtl_bench.optimizers.adatask import check_lr, check_range, dense_grads


class SignSGD(torch.optim.Optimizer):
    """signSGD with momentum (Signum).  ``momentum=0`` is plain signSGD (no state).  State key
    ``momentum_buffer`` (as ``torch.optim.SGD``)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group)
        check_range(group, "momentum", 0.0, 1.0)
        check_range(group, "weight_decay", 0.0, None)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = dense_grads(self, group)
            if not params:
                continue
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            if beta:
                bufs = []
                for p in params:
                    st = self.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    bufs.append(st["momentum_buffer"])
                torch._foreach_lerp_(bufs, grads, 1.0 - beta)
                signs = torch._foreach_sign(bufs)
            else:
                signs = torch._foreach_sign(grads)
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, signs, alpha=-lr)
        return loss
