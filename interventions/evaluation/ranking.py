"""Layer rankings and their quality: ranks, top-k, the relevance of a grid search, nDCG.

The A2A paper's evaluation (Section 3): a method's per-layer scores rank the layers
(:func:`rank_layers`, :func:`top_k_layers`); the grid search on the test split gives every layer
a relevance (:func:`layer_relevance`); :func:`ndcg` compares a ranking with it.  The baselines
that need no model: :func:`mid_layer_scores` and :func:`random_scores`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.retrieval import retrieval_normalized_dcg

__all__ = [
    "NDCG_CUTOFFS",
    "layer_relevance",
    "mid_layer_scores",
    "ndcg",
    "random_scores",
    "rank_layers",
    "top_k_layers",
]

NDCG_CUTOFFS: tuple[int, ...] = (1, 5, 10)


def mid_layer_scores(num_layers: int, center: float = 0.6) -> Tensor:
    """``[num_layers]`` higher for layers closer to ``center * (num_layers - 1)`` (the paper's
    mid-layer baseline steers layers 18-20 of 32, i.e. about 60% depth)."""
    mid = center * (num_layers - 1)
    return -(torch.arange(num_layers, dtype=torch.float64) - mid).abs()


def random_scores(num_layers: int, generator: torch.Generator) -> Tensor:
    """``[num_layers]`` a random permutation as scores (the random baseline)."""
    return torch.randperm(num_layers, generator=generator).double()


def rank_layers(scores: Tensor) -> list[int]:
    """Layers sorted by score, highest first (ties: the lower layer first)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order


def top_k_layers(scores: Tensor, k: int) -> list[int]:
    """The ``k`` highest-scoring layers (see :func:`rank_layers`)."""
    num_layers = len(scores)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_layers:
        raise ValueError(
            f"top_k must be an integer between 1 and the number of layers ({num_layers}), "
            f"got {k!r}; lower --model.top_k."
        )
    return rank_layers(scores)[:k]


def layer_relevance(best: Tensor, vanilla: float, scale: float = 100.0) -> Tensor:
    """``[L]`` integer relevance of each layer for nDCG: how much steering there improves on the
    unsteered model, ``round(scale * max(0, best[l] - vanilla))``.

    With the accuracy (``scale=100``) the relevance is the accuracy points gained; with the mean
    margin (``scale=100``) it is the gain in centi-logits.

    Args:
        best: ``[L]`` or ``[L, M]`` the grid-search value of each layer (best over multipliers).
        vanilla: the unsteered value.
        scale: the unit of one relevance step.
    """
    best = best.max(-1).values if best.dim() == 2 else best
    return torch.round(scale * (best.double() - vanilla)).clamp(min=0).long()


def ndcg(scores: Tensor, relevance: Tensor, k: int) -> float:
    """nDCG@k of the ranking by ``scores`` against integer ``relevance`` (linear gains, log2
    discounts; torchmetrics' ``retrieval_normalized_dcg``).  0 when no layer is relevant."""
    if scores.shape != relevance.shape:
        raise ValueError(
            f"scores {list(scores.shape)} and relevance {list(relevance.shape)} must both be "
            "[num_layers]."
        )
    # torchmetrics casts the scores to float32: pass their float64 dense ranks instead, so that
    # scores closer than float32 precision keep their order (exact ties stay ties)
    dense = torch.unique(scores.double(), return_inverse=True)[1]
    return float(retrieval_normalized_dcg(dense.double(), relevance.long(), top_k=k))
