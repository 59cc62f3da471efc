"""The three-term objective of activation scaling (Stoehr et al., Eqs. 6-9) and its metrics.

For a prompt ``x`` with correct answer token ``c`` and wrong token ``w``, ``f+`` / ``f-`` are the
next-token logits with the intervention at ``beta = +1`` / ``-1`` and ``f`` the clean logits.

* effectiveness (Eq. 6): ``E_m = -mean[max(0, f+_w - f+_c + m) + max(0, f-_c - f-_w + m)]``;
  the loss uses ``-E_m`` (a hinge with margin ``m``), the metric is ``E_0`` (``<= 0``, 0 = every
  prompt flips both ways).
* faithfulness (Eq. 7): ``F = -mean[KL(softmax f+ || softmax f) + KL(softmax f- || softmax f)]``.
* minimality (Eq. 8): the loss penalises the L1 norm of the parameters; the metric counts the
  parameters with ``|theta| >= 0.01``.

Loss = ``-E_m + lambda_F * (-F) + lambda_M * L1``.  The L1 term is either a plain penalty in the
loss (its subgradient goes through Adam) or handled by a proximal step after each optimiser step
(:func:`soft_threshold_`), which sets small values to exactly zero.

Every term is computed in float32 (float64 for float64 logits) whatever the backbone's dtype:
half-precision logits are widened before the differences, the log-softmax / KL and the hinge,
so a bfloat16 or float16 backbone does not overflow or round the objective.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or unchanged when it is already float32 or wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def logit_diff(logits: Tensor, correct: Tensor, wrong: Tensor) -> Tensor:
    """``[batch]`` logit of the correct token minus logit of the wrong token (at least float32)."""
    logits = at_least_float32(logits)
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, correct] - logits[rows, wrong]


def effectiveness_hinge(diff_pos: Tensor, diff_neg: Tensor, margin: float) -> Tensor:
    """``[batch]`` Eq. 6 summand: hinge for beta=+1 (correct should win) and beta=-1 (wrong should)."""
    return F.relu(margin - diff_pos) + F.relu(diff_neg + margin)


def kl_to_clean(logits: Tensor, clean_logits: Tensor) -> Tensor:
    """``[batch]`` KL(softmax(logits) || softmax(clean_logits)) over the vocabulary.

    Clamped at 0: identical distributions can round to a tiny negative value.
    """
    logp = at_least_float32(logits).log_softmax(-1)
    logq = at_least_float32(clean_logits).log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0.0)


@dataclass
class ObjectiveTerms:
    """Per-example terms of one batch of (beta=+1, beta=-1, clean) logits."""

    diff_pos: Tensor  # [batch]
    diff_neg: Tensor
    diff_clean: Tensor
    hinge: Tensor  # [batch] with the training margin
    hinge0: Tensor  # [batch] with margin 0 (the E_0 metric, negated)
    kl: Tensor  # [batch] KL+ + KL-

    @property
    def flipped(self) -> Tensor:
        """``[batch]`` beta=+1 makes the correct token win AND beta=-1 makes the wrong one win."""
        return (self.diff_pos > 0) & (self.diff_neg < 0)


def objective_terms(
    pos: Tensor, neg: Tensor, clean: Tensor, correct: Tensor, wrong: Tensor, margin: float
) -> ObjectiveTerms:
    """All per-example terms from the three logit sets (``[batch, vocab]`` each, any float
    dtype: they are widened to at least float32 first)."""
    pos, neg, clean = at_least_float32(pos), at_least_float32(neg), at_least_float32(clean)
    diff_pos = logit_diff(pos, correct, wrong)
    diff_neg = logit_diff(neg, correct, wrong)
    return ObjectiveTerms(
        diff_pos=diff_pos,
        diff_neg=diff_neg,
        diff_clean=logit_diff(clean, correct, wrong),
        hinge=effectiveness_hinge(diff_pos, diff_neg, margin),
        hinge0=effectiveness_hinge(diff_pos, diff_neg, 0.0),
        kl=kl_to_clean(pos, clean) + kl_to_clean(neg, clean),
    )


def three_term_loss(
    terms: ObjectiveTerms, l1: Tensor, lambda_f: float, lambda_m: float
) -> dict[str, Tensor]:
    """Eq. 9 as a loss to minimise, with its parts: ``loss``, ``effectiveness``, ``faithfulness``,
    ``l1``."""
    hinge = terms.hinge.mean()
    kl = terms.kl.mean()
    return dict(
        loss=hinge + lambda_f * kl + lambda_m * l1,
        effectiveness=-hinge,
        faithfulness=-kl,
        l1=l1,
    )


@torch.no_grad()
def soft_threshold_(params: Iterable[Tensor], threshold: float) -> None:
    """The proximal step of ``threshold * ||theta||_1``, in place:
    ``theta <- sign(theta) * max(|theta| - threshold, 0)``.

    Values within ``threshold`` of zero become exactly zero (and stay there until a gradient step
    moves them out again); the others move ``threshold`` towards zero.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}.")
    for p in params:
        p.copy_(p.sign() * (p.abs() - threshold).clamp(min=0.0))


class InterventionMetrics(MetricCollection):
    """Running means over an evaluation split, logged under ``<prefix>effectiveness`` etc.

    ``effectiveness`` (E_0, <= 0, 0 is best), ``effectiveness_margin`` (E_m with the training
    margin: the hinge part of the loss, negated), ``faithfulness`` (-KL sum, <= 0), ``flip_rate``
    (fraction of prompts flipped both ways), ``logit_diff_pos`` / ``_neg`` / ``_clean``.
    ``minimality`` depends on the parameters, not the data, and is logged by the module.
    """

    NAMES = (
        "effectiveness",
        "effectiveness_margin",
        "faithfulness",
        "flip_rate",
        "logit_diff_pos",
        "logit_diff_neg",
        "logit_diff_clean",
    )

    def __init__(self, prefix: str) -> None:
        super().__init__({name: MeanMetric() for name in self.NAMES}, prefix=prefix)

    def update_from(self, terms: ObjectiveTerms) -> None:
        """Add one batch."""
        values = dict(
            effectiveness=-terms.hinge0,
            effectiveness_margin=-terms.hinge,
            faithfulness=-terms.kl,
            flip_rate=terms.flipped.float(),
            logit_diff_pos=terms.diff_pos,
            logit_diff_neg=terms.diff_neg,
            logit_diff_clean=terms.diff_clean,
        )
        for name, value in values.items():
            self[name].update(value.detach().float())
