"""DSelect-k (Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi, "DSelect-k: Differentiable
Selection in the Mixture of Experts with Applications to Multi-Task Learning", NeurIPS 2021, arXiv 2106.03760;
official TensorFlow code: google-research ``dselect_k_moe``).

``num_experts`` (E) shared experts, copies of the configured ``expert`` encoder, read the input; task ``t``'s
representation is ``h_t = Σ_e a_t(x)_e · expert_e(x)`` with a DSelect-k gate per task.  The gate has ``num_nonzeros``
(k) *single-expert selectors*.  Selector ``i`` maps m = ⌈log₂E⌉ logits ``z_i`` to m smooth-step "bits"
``s_ij = S_γ(z_ij)`` and gives expert ``e`` (binary code ``b(e)``, most significant bit first) the weight
``r_i(e) = Π_j (s_ij if b(e)_j = 1 else 1 − s_ij)``; the gate is ``a = Σ_i softmax(w)_i · r_i``.  Once the bits
saturate (|z| ≥ γ/2) each ``r_i`` is one-hot, so at most k experts get a non-zero weight (exactly one for k = 1).
``S_γ(z) = 0`` for z ≤ −γ/2, 1 for z ≥ γ/2, and ``−2z³/γ³ + 3z/(2γ) + 1/2`` between (the cubic smooth-step).

We implement the **per-example** gate (the official code's "example conditioning", the variant LibMTL's MTL
architecture uses): ``z`` and ``w`` are Linear maps of the flattened raw input (``z``: ``k·m`` outputs, ``w``: ``k``);
the official code's static, input-independent gate ("task-only conditioning") is not implemented.  Initialisation as
the official code: ``z`` weights and biases U(−γ/100, γ/100), ``w`` weights and biases U(−0.05, 0.05) (Keras'
RandomUniform default).  ``gamma`` (γ, default 1) is the smooth-step width used **in the forward pass** — LibMTL
calls its smooth-step with γ = 1 whatever its ``kgamma`` (a pitfall: there ``kgamma`` only scales the
initialisation).

Regularisation (``regularization(x)``, the trainer's model-regularizer hook: its gradient is added to ``.grad`` after
the engine's, outside the combiner; the official code adds the same terms to the total loss, which is the same thing
when that loss is a plain sum of the task losses).  Summed over the tasks' gates, the examples and the k selectors
— the official scale, a sum rather than a mean over the batch, so the terms grow with the (per-rank) batch size:

- entropy regulariser ``λ·Σ H(r_i)``, H(r) = −Σ_e r_e log(r_e + 1e-6), λ = ``entropy_reg``; it pushes the selectors
  to binary codes faster.  The official gate has none unless one is passed (``entropy_reg=None``), so the config
  default is 0 (off); 1e-6 is the official regulariser's default weight when it is used (LibMTL always adds it).
- unused codes: when E is not a power of 2, 2^m − E codes select no expert, ``r_i`` sums to ``s_i = Σ_{e<E} r_i(e)``
  ≤ 1 over the experts and the gate weights ``a`` to ``Σ_i softmax(w)_i s_i`` ≤ 1 (no renormalisation, as in the
  official code).  The official term ``Σ 1/s_i`` (weight 1) keeps the selectors off those codes; it is constant (1
  per selector and example, zero gradient) once they select experts only.  Deviation: ``s_i`` is clamped at 1e-6, so a
  selector whose bits saturate on an unused code (no gradient reaches it then, with or without the clamp) gives a
  finite 1e6 instead of an infinite loss and NaN gradients; identical otherwise.

The terms depend only on the gates, which read the raw input: ``regularization(x)`` recomputes the gate forward
alone (no expert, no shared features), cheap and independent of the engine's graph, which is freed when the trainer
calls it.  It returns ``None`` (nothing to add) for λ = 0 with E a power of 2.  The forward pass never
backpropagates anything (LibMTL's pitfall: it calls ``backward`` on the entropy term inside ``forward()``, on the
last task's selectors only, once per forward — so per-task-backward methods run it several times per step).  With
``shared_gates: true`` the gates are shared parameters, which a task-wise optimizer (AdaTask) updates from per-task
gradients only: the trainer refuses that combination when a term is on.

Sharing (``shared_gates``, recorded in ``summary.json["sharing"]``): the experts are shared; task ``t``'s gate (its
``z`` and ``w`` maps) is task ``t``'s unless ``shared_gates: true`` (LibMTL: experts only).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtl_bench.errors import ConfigError
from mtl_bench.models.cgc import last_layer_of
from mtl_bench.models.mmoe import build_experts, mix
from mtl_bench.models.mtl_model import TaskAwareEncoder

ENTROPY_EPS = 1e-6  # the official EntropyRegularizer's log(r + ε)
UNUSED_EPS = 1e-6  # our floor on a selector's weight on used codes in the unused-code term (not in the official code)


def smooth_step(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """The cubic smooth-step S_γ: 0 below −γ/2, 1 above γ/2 (the cubic meets both with zero slope)."""
    z = z.clamp(-gamma / 2, gamma / 2)
    return -2.0 / gamma**3 * z**3 + 1.5 / gamma * z + 0.5


def binary_codes(num_experts: int) -> torch.Tensor:
    """E × m boolean matrix: row e is the m-bit binary code of e, most significant bit first."""
    m = math.ceil(math.log2(num_experts))
    return torch.tensor([[(e >> (m - 1 - j)) & 1 for j in range(m)] for e in range(num_experts)], dtype=torch.bool)


def selector_entropy(selectors: torch.Tensor) -> torch.Tensor:
    """Σ H(r_i) over all selectors (rows of the last dimension), H(r) = −Σ_e r_e log(r_e + 1e-6) (the official ε)."""
    return -(selectors * torch.log(selectors + ENTROPY_EPS)).sum()


def unused_code_term(selectors: torch.Tensor) -> torch.Tensor:
    """Σ 1/s_i, s_i = Σ_e r_i(e) the selector's weight on codes that are experts (clamped at 1e-6: module docstring)."""
    return (1.0 / selectors.sum(-1).clamp_min(UNUSED_EPS)).sum()


class DSelectKGate(nn.Module):
    """A per-example DSelect-k gate: ``forward(flat_x)`` → (B × E expert weights, B × k × E selector outputs)."""

    def __init__(self, in_features: int, num_experts: int, num_nonzeros: int, gamma: float):
        super().__init__()
        self.num_nonzeros, self.gamma = num_nonzeros, gamma
        self.register_buffer("codes", binary_codes(num_experts), persistent=False)
        self.num_bits = self.codes.shape[1]
        self.z_logits = nn.Linear(in_features, num_nonzeros * self.num_bits)
        self.w_logits = nn.Linear(in_features, num_nonzeros)
        for p in self.z_logits.parameters():
            nn.init.uniform_(p, -gamma / 100, gamma / 100)
        for p in self.w_logits.parameters():
            nn.init.uniform_(p, -0.05, 0.05)

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bits = smooth_step(self.z_logits(flat), self.gamma).reshape(-1, self.num_nonzeros, 1, self.num_bits)
        selectors = torch.where(self.codes, bits, 1 - bits).prod(dim=-1)  # B × k × E
        weights = torch.softmax(self.w_logits(flat), dim=-1).unsqueeze(-1)  # B × k × 1
        return (weights * selectors).sum(dim=1), selectors


def check_gate(num_experts: int, num_nonzeros: int, gamma: float, entropy_reg: float) -> None:
    if not isinstance(num_experts, int) or num_experts < 2:
        raise ConfigError(f"backbone.num_experts={num_experts!r} must be an integer ≥ 2")
    if not isinstance(num_nonzeros, int) or not 1 <= num_nonzeros <= num_experts:
        raise ConfigError(f"backbone.num_nonzeros={num_nonzeros!r} must be an integer in [1, num_experts={num_experts}]")
    if not gamma > 0:
        raise ConfigError(f"backbone.gamma={gamma} must be positive (the smooth-step width)")
    if not entropy_reg >= 0:
        raise ConfigError(f"backbone.entropy_reg={entropy_reg} must be ≥ 0 (the entropy regulariser's weight; 0 = off)")


class DSelectK(TaskAwareEncoder):
    def __init__(self, input_shape: Sequence[int], task_names: Sequence[str], expert: Callable[..., nn.Module],
                 num_experts: int = 4, num_nonzeros: int = 2, gamma: float = 1.0, entropy_reg: float = 0.0,
                 shared_gates: bool = False):
        super().__init__(task_names)
        self.experts = build_experts(expert, num_experts, input_shape, "num_experts")
        check_gate(num_experts, num_nonzeros, gamma, entropy_reg)
        self.out_dim: Any = self.experts[0].out_dim
        gate_in = math.prod(input_shape)
        self.gates = nn.ModuleDict({t: DSelectKGate(gate_in, num_experts, num_nonzeros, float(gamma)) for t in self.task_names})
        self.shared_gates = bool(shared_gates)
        self.entropy_reg = float(entropy_reg)
        self.unused_codes = 2 ** math.ceil(math.log2(num_experts)) - num_experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = torch.stack([e(x) for e in self.experts], dim=1)  # B × E × out
        flat = x.flatten(1)
        return tuple(mix(self.gates[t](flat)[0], outputs) for t in self.task_names)

    def gate_weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each task's B × E expert weights."""
        return {t: self.gates[t](x.flatten(1))[0] for t in self.task_names}

    def selector_entropy(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_tasks Σ_examples Σ_selectors H(r_i): the official entropy regulariser before its weight λ."""
        return sum((selector_entropy(self.gates[t](x.flatten(1))[1]) for t in self.task_names), x.new_zeros(()))

    def regularization(self, x: torch.Tensor) -> torch.Tensor | None:
        """λ·Σ H(r_i) + (E not a power of 2) Σ 1/s_i over the tasks' gates, examples and selectors (module docstring).
        Only the gates' forward on the raw ``x`` is recomputed (cheap; it needs nothing of the engine's freed graph)."""
        if self.entropy_reg == 0 and not self.unused_codes:
            return None
        flat, total = x.flatten(1), x.new_zeros(())
        for t in self.task_names:
            r = self.gates[t](flat)[1]
            if self.entropy_reg:
                total = total + self.entropy_reg * selector_entropy(r)
            if self.unused_codes:
                total = total + unused_code_term(r)
        return total

    def task_modules(self, task: str) -> list[nn.Module]:
        return [] if self.shared_gates else [self.gates[task]]

    def last_shared_module(self) -> nn.Module:
        """The last expert's last shared layer (every expert sits at the same depth)."""
        return last_layer_of(self.experts[-1])

    def sharing(self) -> dict[str, Any]:
        gate = self.gates[self.task_names[0]]
        return {"architecture": "dselect_k", "num_experts": len(self.experts), "num_nonzeros": gate.num_nonzeros,
                "gamma": gate.gamma, "shared_gates": self.shared_gates}
