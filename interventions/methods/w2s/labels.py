"""W2S labels: the best steering layer of each example, Top-K frequency-aware smoothing (paper
App. E, Eq. 7) and the label space (layers that are best for some training example)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label of an example whose best layer is outside the label space (ignored by loss and accuracy)."""


def frequency_smoothed_labels(
    steerability: Tensor, k: int = 1, layers: Sequence[int] | None = None
) -> Tensor:
    """Top-K frequency-aware label smoothing (paper App. E, Eq. 7): one layer label per example.

    ``f(l)`` is the number of examples whose Top-1 (most steerable) layer is ``l``.  Each example
    gets, among its ``k`` most steerable layers, the one with the largest ``f``; ties in ``f`` go
    to the more steerable layer of that example.  ``k = 1`` is the plain argmax.  Ties in
    steerability itself are broken towards the lower layer index (as ``argmax`` does).

    Args:
        steerability: ``[N, L]`` steerability of each example at each layer (column).
        k: how many of each example's best layers are candidates, ``1 <= k <= L``.
        layers: the layer index of each column (``None``: column ``j`` is layer ``j``), for a
            sweep over a subset of layers.

    Returns:
        ``[N]`` (long) the chosen layer of each example.
    """
    if steerability.dim() != 2 or steerability.shape[0] == 0 or steerability.shape[1] == 0:
        raise ValueError(
            f"steerability must be a non-empty [N, L] tensor (examples x layers), got shape "
            f"{list(steerability.shape)}."
        )
    if torch.isnan(steerability).any():
        raise ValueError("steerability contains NaN; fix or drop those examples before labelling.")
    n_layers = steerability.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ValueError(
            f"k must be an integer in 1..{n_layers} (the number of layers), got {k!r}; k = 1 "
            "gives each example its own best layer."
        )
    column_layers = torch.arange(n_layers) if layers is None else torch.as_tensor(layers).long()
    if column_layers.shape != (n_layers,):
        raise ValueError(
            f"layers has {column_layers.numel()} entries but steerability has {n_layers} columns."
        )
    # A stable descending sort puts equal values in column order, so the first column is argmax.
    order = torch.sort(steerability, dim=1, descending=True, stable=True).indices  # [N, L]
    topk = order[:, :k]  # [N, k] columns, most steerable first
    freq = torch.bincount(order[:, 0], minlength=n_layers)  # [L] Top-1 counts
    # Highest frequency wins; among equal frequencies the earlier (more steerable) candidate.
    rank = torch.arange(k - 1, -1, -1, device=topk.device)  # [k] k-1 .. 0
    score = freq[topk] * k + rank  # [N, k], all distinct within a row
    chosen = topk.gather(1, score.argmax(dim=1, keepdim=True)).squeeze(1)  # [N] columns
    return column_layers.to(chosen.device)[chosen]


def label_space(labels: Tensor) -> list[int]:
    """The sorted distinct layers occurring in ``labels`` (``[N]`` layer indices).

    Computed on the training labels, this prunes the layers that are never the best: they get no
    class (paper Sec. 5, "Data curation").
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N] layer indices, got shape {list(labels.shape)}.")
    return sorted({int(v) for v in labels.tolist()})


def encode_labels(labels: Tensor, space: Sequence[int]) -> Tensor:
    """Class index of each layer label in ``space`` (from :func:`label_space`).

    Layers outside ``space`` (possible for val / test examples: their best layer was never the
    best on the training split) become :data:`IGNORE_INDEX` (``-100``), which cross-entropy and
    the accuracy ignore; the steerability metrics still count such examples.

    Args:
        labels: ``[N]`` layer indices.
        space: the layer of each class, distinct.

    Returns:
        ``[N]`` (long) class indices or ``-100``.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N] layer indices, got shape {list(labels.shape)}.")
    space_t = torch.as_tensor(list(space), dtype=torch.long, device=labels.device)
    if space_t.dim() != 1 or space_t.numel() == 0 or space_t.unique().numel() != space_t.numel():
        raise ValueError(f"space must be a non-empty list of distinct layers, got {list(space)}.")
    match = labels.long()[:, None] == space_t[None, :]  # [N, C]
    index = match.long().argmax(dim=1)  # [N]
    return torch.where(match.any(dim=1), index, torch.full_like(index, IGNORE_INDEX))
