"""The beta search of attribution scalars: every signed beta of a grid on the validation prompts
(:func:`sweep_betas`, :class:`BetaSweep`), the choice (:func:`choose_beta`) and the evaluation of
an edit at one beta (:func:`evaluate_edit`).  See :mod:`.scores` for the conventions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from interventions.core.dispatch import input_device
from interventions.core.distributed import gather_rows, shard_loader
from interventions.core.hooks import attach, last_token_logits
from interventions.edits import ActivScalar
from interventions.evaluation.objectives import kl_to_clean, logit_diff
from interventions.methods.attribution.scores import real_tokens

DEFAULT_BETA_MAGNITUDES: tuple[float, ...] = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
)  # fmt: skip
DEFAULT_BETA_GRID: tuple[float, ...] = tuple(
    sorted([*DEFAULT_BETA_MAGNITUDES, *(-m for m in DEFAULT_BETA_MAGNITUDES)])
)
"""Signed, log-spaced (1-2-5) betas of the search: +-0.01 ... +-100."""


# ------------------------------------------------------------------------------ beta search
@dataclass
class BetaSweep:
    """Per-example logit differences of one edit at ``+m`` and ``-m`` for each magnitude ``m``.

    A signed beta is evaluated as the pair (``beta``, ``-beta``) of the effectiveness metric: the
    ``beta`` pass should make the correct token win, the ``-beta`` pass the wrong one.
    """

    magnitudes: list[float]
    diff_pos: Tensor  # [N, K] logit difference at beta = +m
    diff_neg: Tensor  # [N, K] at beta = -m
    kl_pos: Tensor  # [N, K] KL(edited || clean) at +m
    kl_neg: Tensor  # [N, K] at -m
    correct_pos: Tensor  # [N, K] logit of the correct token at +m (for the curve)
    wrong_pos: Tensor
    correct_neg: Tensor
    wrong_neg: Tensor
    diff_clean: Tensor  # [N]
    correct_clean: Tensor  # [N]
    wrong_clean: Tensor  # [N]

    def _column(self, beta: float) -> int:
        for k, m in enumerate(self.magnitudes):
            if math.isclose(abs(beta), m, rel_tol=1e-9):
                return k
        raise ValueError(f"beta {beta} was not swept (magnitudes {self.magnitudes}).")

    def at(self, beta: float) -> dict[str, float]:
        """Metrics of a signed beta: ``effectiveness`` (E_0, <= 0), ``flip_rate``,
        ``faithfulness`` (-KL sum), ``logit_diff_pos`` / ``_neg`` (mean at ``beta`` / ``-beta``),
        ``logit_diff_clean`` and ``mean_flipped`` (1 if the mean difference flips both ways)."""
        k = self._column(beta)
        if beta > 0:
            d_pos, d_neg = self.diff_pos[:, k], self.diff_neg[:, k]
        else:
            d_pos, d_neg = self.diff_neg[:, k], self.diff_pos[:, k]
        kl = self.kl_pos[:, k] + self.kl_neg[:, k]
        return dict(
            beta=float(beta),
            effectiveness=float(-(F.relu(-d_pos) + F.relu(d_neg)).mean()),
            flip_rate=float(((d_pos > 0) & (d_neg < 0)).float().mean()),
            faithfulness=float(-kl.mean()),
            logit_diff_pos=float(d_pos.mean()),
            logit_diff_neg=float(d_neg.mean()),
            logit_diff_clean=float(self.diff_clean.mean()),
            mean_flipped=float(bool(d_pos.mean() > 0) and bool(d_neg.mean() < 0)),
        )

    def curve(self) -> dict[str, list[float]]:
        """Mean correct / wrong logits and their difference against every signed beta and 0."""
        points = [(0.0, self.correct_clean.mean(), self.wrong_clean.mean())]
        for k, m in enumerate(self.magnitudes):
            points.append((m, self.correct_pos[:, k].mean(), self.wrong_pos[:, k].mean()))
            points.append((-m, self.correct_neg[:, k].mean(), self.wrong_neg[:, k].mean()))
        points.sort(key=lambda t: t[0])
        return dict(
            beta=[float(b) for b, _, _ in points],
            correct=[float(c) for _, c, _ in points],
            wrong=[float(w) for _, _, w in points],
            diff=[float(c - w) for _, c, w in points],
        )


def check_beta_grid(betas: Iterable[float]) -> list[float]:
    """The grid as floats; a clear error for an empty grid or beta = 0."""
    grid = [float(b) for b in betas]
    if not grid:
        raise ValueError("beta_grid is empty; give signed betas, e.g. [-1, -0.1, 0.1, 1].")
    if any(b == 0 or not math.isfinite(b) for b in grid):
        raise ValueError(f"beta_grid must hold finite nonzero betas (0 is no steering): {grid}.")
    return grid


@torch.no_grad()
def sweep_betas(
    model: nn.Module,
    edit: ActivScalar,
    batches: Iterable[dict[str, Any]],
    betas: Iterable[float],
    progress: bool = False,
) -> BetaSweep:
    """Run the edit at ``+|beta|`` and ``-|beta|`` for every distinct ``|beta|`` of ``betas`` over
    the batches (one forward of ``2 x batch`` rows per magnitude, plus one clean pass).

    Under a process group each rank runs its share of the loader's prompts and every rank gets
    the rows of all (collective: call it on every rank)."""
    grid = check_beta_grid(betas)
    magnitudes = sorted({abs(b) for b in grid})
    device = input_device(model)
    edit = edit.to(device)
    parts: dict[str, list[Tensor]] = {}

    def keep(name: str, value: Tensor) -> None:
        parts.setdefault(name, []).append(value.float().cpu())

    for batch in tqdm(shard_loader(batches), desc="beta sweep", disable=not progress, leave=False):
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        correct, wrong = batch["correct_id"].to(device), batch["wrong_id"].to(device)
        real_tokens(ids, mask, "clean")
        if int(mask.sum(1)[0]) != edit.num_positions:
            raise ValueError(
                f"The edit ties one scalar to each of {edit.num_positions} prompt positions, but "
                f"these prompts have {int(mask.sum(1)[0])} tokens."
            )
        n = ids.shape[0]
        rows = torch.arange(n, device=device)
        clean = last_token_logits(model, ids, mask)
        keep("diff_clean", logit_diff(clean, correct, wrong))
        keep("correct_clean", clean[rows, correct])
        keep("wrong_clean", clean[rows, wrong])
        cols: dict[str, list[Tensor]] = {}
        for m in magnitudes:
            beta = torch.cat([torch.full((n,), m), torch.full((n,), -m)]).to(device)
            with attach(model, edit, beta=beta):
                logits = last_token_logits(model, ids.repeat(2, 1), mask.repeat(2, 1))
            pos, neg = logits.split(n)
            for name, value in (
                ("diff_pos", logit_diff(pos, correct, wrong)),
                ("diff_neg", logit_diff(neg, correct, wrong)),
                ("kl_pos", kl_to_clean(pos, clean)),
                ("kl_neg", kl_to_clean(neg, clean)),
                ("correct_pos", pos[rows, correct]),
                ("wrong_pos", pos[rows, wrong]),
                ("correct_neg", neg[rows, correct]),
                ("wrong_neg", neg[rows, wrong]),
            ):
                cols.setdefault(name, []).append(value)
        for name, values in cols.items():
            keep(name, torch.stack(values, dim=1))  # [batch, K]
    merged = gather_rows({name: torch.cat(values) for name, values in parts.items()})
    if not merged:
        raise ValueError("The beta search got no prompts (empty split).")
    return BetaSweep(magnitudes=magnitudes, **merged)


def choose_beta(sweep: BetaSweep, betas: Iterable[float]) -> tuple[float, list[dict[str, float]]]:
    """``(beta, table)``: the beta with the highest flip rate (ties: higher effectiveness, then
    smaller ``|beta|``, then positive), and the metrics of every beta of the grid."""
    table = [sweep.at(b) for b in check_beta_grid(betas)]
    best = max(
        table,
        key=lambda r: (r["flip_rate"], r["effectiveness"], -abs(r["beta"]), r["beta"] > 0),
    )
    return best["beta"], table


def mean_flip_beta(table: Sequence[dict[str, float]]) -> float | None:
    """The smallest ``|beta|`` of ``table`` whose mean logit difference flips both ways (positive
    preferred on a tie), or ``None`` when no beta does."""
    flips = [r for r in table if r["mean_flipped"]]
    if not flips:
        return None
    return min(flips, key=lambda r: (abs(r["beta"]), r["beta"] < 0))["beta"]


def evaluate_edit(
    model: nn.Module, edit: ActivScalar, batches: Iterable[dict[str, Any]], beta: float
) -> dict[str, float]:
    """Effectiveness, flip rate, faithfulness and mean logit differences of ``edit`` steered with
    ``+beta`` (towards the correct token) and ``-beta`` (towards the wrong one)."""
    return sweep_betas(model, edit, batches, [beta]).at(beta)


# ------------------------------------------------------------------------------ module
