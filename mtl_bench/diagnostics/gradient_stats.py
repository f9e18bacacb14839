"""Similarity metrics of gradient pairs and their summary statistics (pure functions, no state).

Four metrics per pair (g, g') of gradient vectors, as in Elich et al. ("Examining Common Paradigms in
Multi-Task Learning", §4 and App. A5–A7) and Yu et al. (PCGrad, NeurIPS 2020):

=================  ==========================================================================================
``cos``            g·g' / (‖g‖‖g'‖); a pair *conflicts* if cos < 0 and *supports* if cos > 0 (PCGrad).
                   Convention: 0 when g = 0 or g' = 0 (no direction: neither supporting nor conflicting).
``mag_sim``        2‖g‖‖g'‖ / (‖g‖² + ‖g'‖²) (PCGrad's gradient magnitude similarity), computed as
                   2r / (1 + r²) with r = min/max of the two norms (no overflow or underflow).  1 for equal
                   norms, → 0 for very different norms.  Convention: 1 when both are 0 (equal norms),
                   0 when exactly one is 0 (the formula's value).
``sign_conflict``  the fraction of coordinates where the two gradients have strictly opposite signs
                   (g_j > 0 > g'_j or g_j < 0 < g'_j), over *all* coordinates of the vector or layer: a
                   coordinate where either gradient is exactly 0 never conflicts but still counts in the
                   denominator.  Elich et al.'s "ratio of conflicting gradient parameters" (their text does not
                   define it further; this is our reading).
``dot``            g·g' (mixes direction and magnitude; App. A7).
=================  ==========================================================================================

No metric is ever NaN for finite inputs.  Every function works on the whole shared vector and **per layer**
(a layer is one shared parameter tensor): the whole-vector values are computed from the per-layer inner
products and counts summed over layers, which equals computing them on the concatenated vector.

Two routes compute the same numbers:

* :func:`pair_metrics` — explicit pairs ``a[p]``, ``b[p]`` (``P × d``), elementwise; simple, for tests and ad
  hoc analyses;
* :func:`gram_pair_metrics` — any set of pairs among the rows of an ``N × d`` matrix via per-layer Gram
  matrices (one matrix product for the inner products and one for the sign counts per layer), the fast route
  the conflict probe uses (with :func:`group_pairs` for all pairs inside groups; :func:`within_group_pair_metrics`
  wraps the two for a ``g × k × d`` tensor).  Sign counts are
  products of 0/1 indicator matrices: exact in the gradient dtype up to 2²⁴ coordinates per layer (float32);
  larger layers are counted in float64.

Statistics (:func:`row_statistics`, vectorised over rows, which the conflict probe uses; :func:`summarize` and
:func:`cosine_split` are its single-row wrappers) are computed on the host over the finite values, in float64 (the
probe and the wrappers pass float64): mean, population standard deviation (ddof = 0), and the 2.5 % and 97.5 %
percentiles with linear interpolation between order statistics (NumPy's default ``method="linear"``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

METRICS = ("cos", "mag_sim", "sign_conflict", "dot")
STATISTICS = ("mean", "std", "p2.5", "p97.5")
_EXACT_COUNT = {torch.float16: 2**11, torch.bfloat16: 2**8, torch.float32: 2**24, torch.float64: 2**53}


def metrics_from_products(dot: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor, opposite: torch.Tensor,
                          numel: int | torch.Tensor) -> torch.Tensor:
    """The four metrics (last dim, in :data:`METRICS` order) from the inner product, the two squared norms,
    the number of opposite-sign coordinates and the number of coordinates of each pair (any common shape)."""
    na, nb = sq_a.clamp_min(0).sqrt(), sq_b.clamp_min(0).sqrt()
    both = (na > 0) & (nb > 0)
    one = torch.ones_like(na)
    # cos = (dot / ‖a‖) / ‖b‖: the product ‖a‖‖b‖ of two tiny norms would underflow first
    cos = torch.where(both, dot / torch.where(both, na, one) / torch.where(both, nb, one), torch.zeros_like(dot))
    cos = cos.clamp(-1.0, 1.0)
    hi, lo = torch.maximum(na, nb), torch.minimum(na, nb)
    ratio = torch.where(hi > 0, lo / torch.where(hi > 0, hi, one), one)  # both zero: equal norms -> 1
    mag = 2.0 * ratio / (1.0 + ratio * ratio)
    numel = torch.as_tensor(numel, dtype=dot.dtype, device=dot.device)
    sign = opposite.to(dot.dtype) / numel.clamp_min(1)
    return torch.stack([cos, mag, sign, dot], dim=-1)


def split_layers(flat: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Views of the last dimension of ``flat`` (``..., d``) per layer (``..., d_l``)."""
    if sum(sizes) != flat.shape[-1]:
        raise ValueError(f"layer sizes sum to {sum(sizes)} but the gradient has {flat.shape[-1]} coordinates")
    return list(torch.split(flat, list(sizes), dim=-1))


def pair_metrics(a: torch.Tensor, b: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Metrics of the pairs ``(a[p], b[p])`` for ``a``, ``b`` of shape ``(P, d)`` (or ``(d,)`` for one pair).

    Returns ``(L + 1, P, 4)``: row ``l < L`` is layer ``l`` (``sizes`` splits the ``d`` coordinates into
    layers; ``None``: one layer), row ``L`` the whole vector; the last dim follows :data:`METRICS`."""
    if a.shape != b.shape:
        raise ValueError(f"gradient pairs need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 1:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    sizes = [a.shape[-1]] if sizes is None else list(sizes)
    parts = []
    for la, lb in zip(split_layers(a, sizes), split_layers(b, sizes)):
        opp = ((la > 0) & (lb < 0)) | ((la < 0) & (lb > 0))
        parts.append(torch.stack([(la * lb).sum(-1), (la * la).sum(-1), (lb * lb).sum(-1),
                                  opp.sum(-1).to(a.dtype)], dim=0))
    return _with_total(torch.stack(parts), torch.tensor(sizes, dtype=a.dtype, device=a.device))


def gram_pair_metrics(x: torch.Tensor, sizes: Sequence[int], first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Metrics of the pairs ``(x[first[p]], x[second[p]])`` of rows of ``x`` (``N × d``), via per-layer Gram
    matrices: for each layer one ``N × N`` matrix product for the inner products and one of the 0/1
    indicator matrices for the opposite-sign counts (#(a > 0 > b) + #(a < 0 < b) = (P Nᵀ)_ab + (P Nᵀ)_ba with
    P = [x > 0], N = [x < 0]).  ``sizes`` splits the ``d`` coordinates into layers.

    Returns ``(L + 1, P, 4)`` like :func:`pair_metrics` (row ``L``: the whole vector).  Cheaper than
    :func:`pair_metrics` when many pairs share vectors (all pairs among ``N`` vectors cost ``O(N² d)``)."""
    sizes = [int(s) for s in sizes]
    if sum(sizes) != x.shape[-1]:
        raise ValueError(f"layer sizes sum to {sum(sizes)} but the gradients have {x.shape[-1]} coordinates")
    n = x.shape[0]
    grams = x.new_empty(len(sizes), n, n)
    cross = x.new_empty(len(sizes), n, n)
    whole = x.numel() <= 2**27  # indicator matrices of all layers at once unless that costs > 128 M elements
    if whole:
        pos_all, neg_all = _indicators(x)
    offset = 0
    for layer, size in enumerate(sizes):
        part = x[:, offset : offset + size]
        torch.mm(part, part.t(), out=grams[layer])
        if whole:
            pos, neg = pos_all[:, offset : offset + size], neg_all[:, offset : offset + size]
        else:
            pos, neg = _indicators(part)
        if size < _EXACT_COUNT.get(x.dtype, 0):
            torch.mm(pos, neg.t(), out=cross[layer])
        else:  # counts beyond the dtype's exact integers
            cross[layer] = torch.mm(pos.double(), neg.double().t()).to(x.dtype)
        offset += size
    diag = grams.diagonal(dim1=1, dim2=2)
    parts = torch.stack([grams[:, first, second], diag[:, first], diag[:, second],
                         cross[:, first, second] + cross[:, second, first]], dim=1)
    return _with_total(parts, torch.tensor(sizes, dtype=x.dtype, device=x.device))


def _indicators(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 matrices [x > 0] and [x < 0] in x's dtype (comparisons written straight into float outputs)."""
    return torch.gt(x, 0, out=torch.empty_like(x)), torch.lt(x, 0, out=torch.empty_like(x))


def group_pairs(groups: int, members: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of all unordered pairs (a < b) of members inside each group, for rows numbered
    ``group · members + member``; ordered group-major, then (a, b) lexicographically."""
    a, b = torch.triu_indices(members, members, offset=1, device=device)
    base = (torch.arange(groups, device=device) * members).unsqueeze(1)
    return (base + a).reshape(-1), (base + b).reshape(-1)


def within_group_pair_metrics(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Metrics of all unordered pairs (a < b) of the ``k`` vectors inside each group of ``x`` (``g × k × d``),
    pairs ordered as :func:`group_pairs`; ``(L + 1, g · k(k−1)/2, 4)``."""
    g, k, d = x.shape
    first, second = group_pairs(g, k, x.device)
    return gram_pair_metrics(x.reshape(g * k, d), [d] if sizes is None else sizes, first, second)


def _with_total(parts: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """``parts``: ``(L, 4, P)`` (dot, ‖a‖², ‖b‖², #opposite) per layer → ``(L + 1, P, 4)`` metrics."""
    parts = torch.cat([parts, parts.sum(0, keepdim=True)], dim=0)
    numel = torch.cat([sizes, sizes.sum().reshape(1)]).unsqueeze(-1)
    return metrics_from_products(parts[:, 0], parts[:, 1], parts[:, 2], parts[:, 3], numel)


# ---------------------------------------------------------------------- statistics over pairs
def row_statistics(values: np.ndarray, split: bool = False) -> dict[str, list[float]]:
    """Statistics of each row of ``values`` (``R × P``) over its finite entries: :data:`STATISTICS` and, with
    ``split``, the supporting/conflicting split of cosines (see :func:`cosine_split`); NaN for a row without finite
    entries.  Counts are ``int``, everything else ``float``."""
    v = np.where(np.isfinite(values), values, np.nan)
    if v.shape[1] == 0:  # no entries (np.nanpercentile mishandles empty rows): as rows without finite entries
        v = np.full((v.shape[0], 1), np.nan, dtype=v.dtype)
    count = np.isfinite(v).sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN
        lo, hi = np.nanpercentile(v, [2.5, 97.5], axis=1)
        out = {"mean": np.nanmean(v, axis=1), "std": np.nanstd(v, axis=1), "p2.5": lo, "p97.5": hi}
        if split:
            for name, mask in (("supporting", v > 0), ("conflicting", v < 0)):
                c = mask.sum(1)
                out[f"{name}_count"] = c
                out[f"{name}_fraction"] = np.where(count > 0, c / np.maximum(count, 1), np.nan)
                out[f"{name}_mean"] = np.where(c > 0, np.where(mask, v, 0.0).sum(1) / np.maximum(c, 1), np.nan)
    return {k: [int(x) if k.endswith("_count") else float(x) for x in col] for k, col in out.items()}


def summarize(values: np.ndarray | torch.Tensor | Sequence[float]) -> dict[str, float]:
    """Mean, population std (ddof = 0), 2.5 % and 97.5 % percentiles (linear interpolation) of the finite
    values; NaN for each when there is none.  One row of :func:`row_statistics`."""
    return {k: col[0] for k, col in row_statistics(_finite(values)[None, :]).items()}


def cosine_split(cos: np.ndarray | torch.Tensor | Sequence[float]) -> dict[str, float]:
    """Supporting (cos > 0) and conflicting (cos < 0) pairs: counts, fractions of all (finite) pairs and the
    mean cosine of each class (NaN for an empty class).  Pairs with cos = 0 (e.g. a zero gradient) are in
    neither class but count in the fractions' denominator.  One row of :func:`row_statistics` (``split``)."""
    stats = row_statistics(_finite(cos)[None, :], split=True)
    return {k: col[0] for k, col in stats.items() if k not in STATISTICS}


def _finite(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return v[np.isfinite(v)]
