"""CAA vectors (Rimsky et al. 2024): the mean answer-token ``resid_post`` difference per layer.

The CAA vector of layer ``l`` is the mean, over the training examples, of the difference of
``resid_post`` at the answer token between the prompt completed with the behaviour-matching
letter and with the other letter.  :func:`caa_vectors` computes it for every layer in one batched
pass (a running sum, so memory does not grow with the data).  Steering adds ``lambda * v[l]`` at
the answer position of one layer; the vectors are a :class:`~interventions.edits.SteerVec` on
``resid_post`` with ``positions="last"`` (:func:`steering_edit`) and export like any other
intervention.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from interventions.core.dispatch import input_device
from interventions.core.distributed import all_reduce_count, all_reduce_sums, shard_loader
from interventions.core.sites import ModelDims, model_dims
from interventions.edits import SteerVec
from interventions.evaluation.sweep import answer_activations

__all__ = ["DiffAccumulator", "caa_vectors", "steering_edit"]


def steering_edit(model: nn.Module | ModelDims, vectors: Tensor) -> SteerVec:
    """``vectors [L, d]`` as a SteerVec on resid_post at the answer position (every layer), for
    a model or its dims."""
    dims = model if isinstance(model, ModelDims) else model_dims(model)
    edit = SteerVec(dims, sites=["resid_post"], positions="last")
    with torch.no_grad():
        edit.params["resid_post"].copy_(vectors[:, None, :])
    return edit


class DiffAccumulator:
    """Running sum of per-example answer-token activation differences, ``[L, d]``."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def update(self, model: nn.Module, batch: dict[str, Any]) -> None:
        """Add one batch (keys ``input_ids``, ``attention_mask``, ``correct_id``, ``wrong_id``)."""
        layers = list(range(model_dims(model).num_layers))
        device = input_device(model)
        diff, _ = answer_activations(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["correct_id"].to(device),
            batch["wrong_id"].to(device),
            layers,
        )
        part = diff.double().sum(0).cpu()  # [L, d]
        self.total = part if self.total is None else self.total + part
        self.count += diff.shape[0]

    def all_reduce(self) -> None:
        """Sum the running sums and counts of every process into each one's (no-op in one)."""
        self.total = all_reduce_sums({} if self.total is None else {"total": self.total}).get(
            "total"
        )
        self.count = all_reduce_count(self.count)

    def mean(self) -> Tensor:
        """``[L, d]`` the CAA vectors."""
        if self.total is None or self.count == 0:
            raise ValueError(
                "CAA needs at least one training example; the training split is empty."
            )
        return (self.total / self.count).float()


@torch.no_grad()
def caa_vectors(model: nn.Module, batches: Iterable[dict[str, Any]]) -> Tensor:
    """``[L, d]`` CAA vectors from batches of a contrastive (A/B) data module (under a process
    group: each rank runs its share of the batches, every rank gets the vectors of all)."""
    acc = DiffAccumulator()
    for batch in shard_loader(batches):  # this rank's share under a process group
        acc.update(model, batch)
    acc.all_reduce()
    return acc.mean()
