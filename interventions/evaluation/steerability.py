"""Steerability (Tan et al., 2024; used by W2S): how well a steering vector modulates a behaviour.

For a multiple-choice prompt with a positive (behaviour-matching) answer token and a negative one,
the **propensity** is ``log p(positive) - log p(negative)`` of the next-token distribution.  The
prompt is steered with several multipliers ``lambda`` (the steering vector is added with strength
``lambda``); its **steerability** is the slope of the least-squares line of propensity against
``lambda``.  A positive slope means larger multipliers push the model towards the behaviour; the
**proportion of steerable examples** is the fraction of prompts with a slope ``> 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection

__all__ = ["SteerabilityMetrics", "propensity", "steerability_slopes"]


def steerability_slopes(propensity: Tensor, multipliers: Tensor | Sequence[float]) -> Tensor:
    """Least-squares slope of ``propensity`` on ``multipliers`` along the last axis.

    ``slope = sum((lambda - mean lambda) * (p - mean p)) / sum((lambda - mean lambda) ** 2)``,
    the same value as ``numpy.polyfit(multipliers, p, 1)[0]``.

    Args:
        propensity: ``[..., M]`` propensity of each example at each of the ``M`` multipliers.
        multipliers: ``[M]`` steering multipliers, in the order of the last axis of
            ``propensity``; at least two distinct values.

    Returns:
        ``[...]`` one slope per example, in the floating dtype of ``propensity`` (integer input
        gives float32).
    """
    if not propensity.is_floating_point():
        propensity = propensity.float()
    lam = torch.as_tensor(multipliers, dtype=propensity.dtype, device=propensity.device)
    if lam.dim() != 1:
        raise ValueError(f"multipliers must be one-dimensional ([M]), got shape {list(lam.shape)}.")
    if propensity.dim() == 0 or propensity.shape[-1] != lam.shape[0]:
        raise ValueError(
            f"propensity has shape {list(propensity.shape)} but there are {lam.shape[0]} "
            "multipliers: the last axis of propensity must hold one value per multiplier "
            "([..., M] with M = len(multipliers))."
        )
    if torch.unique(lam).numel() < 2:
        raise ValueError(
            f"A slope needs at least two distinct multipliers, got {lam.tolist()}. Steer with "
            "several strengths, e.g. [-1.0, -0.5, 0.0, 0.5, 1.0]."
        )
    lam_c = lam - lam.mean()  # [M]
    p_c = propensity - propensity.mean(dim=-1, keepdim=True)  # [..., M]
    return (p_c * lam_c).sum(dim=-1) / (lam_c * lam_c).sum()


def propensity(logits: Tensor, positive_id: Tensor | int, negative_id: Tensor | int) -> Tensor:
    """Log-probability of the positive answer token minus that of the negative one.

    ``log softmax(z)[pos] - log softmax(z)[neg] = z[pos] - z[neg]``: the log-normaliser is shared
    and cancels, so the propensity is the logit difference.  It is computed as that difference,
    which is exact, cheaper than a log-softmax over the vocabulary and free of its rounding.

    Args:
        logits: ``[..., vocab]`` next-token logits (half precision is computed in float32).
        positive_id: token id of the behaviour-matching answer; an int or a tensor that
            broadcasts (standard, trailing-aligned rules) to ``logits.shape[:-1]``, e.g. ``[B]``
            for logits ``[M, B, vocab]`` (use ``ids[:, None]`` for ``[B, M, vocab]``).
        negative_id: token id of the other answer, same rules.

    Returns:
        ``[...]`` = ``logits.shape[:-1]``.
    """
    if logits.dim() == 0:
        raise ValueError("logits must have a vocabulary axis ([..., vocab]), got a scalar.")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    lead = logits.shape[:-1]

    def gather(ids: Tensor | int, name: str) -> Tensor:
        ids = torch.as_tensor(ids, device=logits.device)
        if ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}.")
        try:
            if torch.broadcast_shapes(ids.shape, lead) != lead:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(
                f"{name} has shape {list(ids.shape)}, which does not broadcast to the leading "
                f"dims {list(lead)} of logits {list(logits.shape)}."
            ) from None
        vocab = logits.shape[-1]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{name} holds ids outside the vocabulary [0, {vocab}).")
        index = ids.long().expand(lead).unsqueeze(-1)  # [..., 1]
        return logits.gather(-1, index).squeeze(-1)  # [...]

    return gather(positive_id, "positive_id") - gather(negative_id, "negative_id")


class SteerabilityMetrics(MetricCollection):
    """Running means of per-example steerability slopes over an evaluation split.

    Logged as ``<prefix>steerability`` (mean slope) and ``<prefix>prop_steerable`` (fraction of
    examples with slope ``> 0``).  Feed it with :meth:`update` (``slopes [N]``); ``compute()``
    returns the prefixed dict, ``reset()`` starts a new epoch.

    Args:
        prefix: prepended to the metric names, e.g. ``"test/base/w2s/"``.
    """

    NAMES = ("steerability", "prop_steerable")

    def __init__(self, prefix: str = "") -> None:
        # compute_groups=False: the two means have different inputs, so they must never share
        # state (torchmetrics would merge them whenever their states happened to be equal).
        super().__init__(
            {name: MeanMetric() for name in self.NAMES}, prefix=prefix, compute_groups=False
        )

    def update(self, slopes: Tensor) -> None:  # type: ignore[override]
        """Add the slopes ``[N]`` of one batch."""
        slopes = slopes.detach().reshape(-1).float()
        if slopes.numel() == 0:
            return
        self["steerability"].update(slopes)
        self["prop_steerable"].update((slopes > 0).float())

    def forward(self, slopes: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """Add one batch and return the batch's own values (prefixed)."""
        self.update(slopes)
        slopes = slopes.detach().reshape(-1).float()
        return {
            f"{self.prefix or ''}steerability": slopes.mean(),
            f"{self.prefix or ''}prop_steerable": (slopes > 0).float().mean(),
        }
