"""From accumulated attribution scores to an ActivScalar: :class:`ScoreAccumulator` (the running
mean over the training split, all-reduced over processes), :func:`scores_to_alpha`,
:func:`scalar_edit` and :func:`edit_values`.  See :mod:`.scores` for the score conventions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from interventions.core.distributed import all_reduce_count, all_reduce_sums
from interventions.core.sites import ModelDims
from interventions.edits import ActivScalar
from interventions.methods.attribution.scores import ALPHA_SIGN, Scores, check_method


class ScoreAccumulator:
    """Running sum (float64) of per-example scores; :meth:`mean` gives ``site -> [layers, T]``."""

    def __init__(self) -> None:
        self.total: dict[str, Tensor] = {}
        self.count = 0

    def update(self, scores: Scores) -> None:
        """Add one batch of per-example scores (``site -> [batch, layers, T]``)."""
        sizes = {v.shape[0] for v in scores.values()}
        for site, value in scores.items():
            part = value.double().sum(0).cpu()
            if site in self.total and self.total[site].shape != part.shape:
                raise ValueError(
                    f"Scores of site {site!r} have shape {list(part.shape)} but earlier batches "
                    f"had {list(self.total[site].shape)} (layers x positions): every prompt must "
                    "have the same token length."
                )
            self.total[site] = part if site not in self.total else self.total[site] + part
        self.count += sizes.pop() if sizes else 0

    def all_reduce(self) -> None:
        """Sum the running sums and counts of every process into each one's (no-op in one)."""
        self.total = all_reduce_sums(self.total)
        self.count = all_reduce_count(self.count)

    def mean(self) -> Scores:
        """The mean score of every point, ``site -> [layers, T]`` (float32)."""
        if not self.count:
            raise ValueError("No scores yet: the training split is empty.")
        return {site: (v / self.count).float() for site, v in self.total.items()}

    def state_dict(self) -> dict[str, Any]:
        """Tensors and count, for checkpoints."""
        return {"total": dict(self.total), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.total = dict(state["total"])
        self.count = int(state["count"])


# ------------------------------------------------------------------------------ scalars
def scores_to_alpha(scores: Scores, method: str, normalize: bool = True) -> tuple[Scores, float]:
    """``(alpha, scale)``: ``alpha = ALPHA_SIGN[method] * scores / scale`` with ``scale`` the
    largest ``|score|`` over every site (``normalize``) or 1."""
    check_method(method)
    scale = 1.0
    if normalize:
        scale = max(float(v.abs().max()) for v in scores.values())
        if scale == 0.0 or not math.isfinite(scale):
            raise ValueError(
                f"Cannot normalise {method} scores whose largest |value| is {scale}: every score "
                "is zero (are the corrupted prompts equal to the clean ones?) or not finite."
            )
    sign = ALPHA_SIGN[method]
    return {site: sign * v.float() / scale for site, v in scores.items()}, scale


def scalar_edit(dims: ModelDims, alpha: Scores, layers: Sequence[int] | None = None) -> ActivScalar:
    """An ActivScalar on ``alpha``'s sites, ``layers`` (``None``: all) and ``positions="all"``
    whose scalars are ``alpha`` (``site -> [layers, T]``)."""
    sites = list(alpha)
    shapes = {tuple(v.shape) for v in alpha.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(
            f"alpha must be site -> [layers, positions] of one shape, got "
            f"{ {s: list(v.shape) for s, v in alpha.items()} }."
        )
    num_layers, length = next(iter(shapes))
    edit = ActivScalar(
        dims, sites=sites, layers=layers, positions="all", num_positions=length, init_std=0.0
    )
    if len(edit.layers) != num_layers:
        raise ValueError(f"alpha has {num_layers} layer rows but layers={edit.layers}.")
    with torch.no_grad():
        for site in sites:
            edit.params[site].copy_(alpha[site][..., None])  # [layers, T, 1]
    return edit


def edit_values(edit: ActivScalar) -> Scores:
    """``site -> [layers, positions]`` the scalars of an ActivScalar (one unit per point)."""
    out = {}
    for site, p in edit.params.items():
        if p.shape[-1] != 1:
            raise ValueError(f"Site {site!r} has {p.shape[-1]} units per point; expected 1.")
        out[site] = p.detach().squeeze(-1).float().cpu()
    return out
