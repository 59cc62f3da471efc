"""Multiple-choice scoring by answer log-likelihood, with or without an edit attached.

A multiple-choice batch (made by ``datamodules.commonsense.ChoiceCollator``) has one row per
(item, choice): ``R`` rows for ``B`` items::

    {"prompt_ids": [R, Tp], "prompt_mask": [R, Tp],                 # prompts, LEFT padded
     "continuation_ids": [R, Tc], "continuation_mask": [R, Tc],     # answers, left or right padded
     "item": [R], "gold": [B], "num_choices": [B]}

:func:`choice_logprobs` runs two forward calls: the prompts (with the KV cache), then the answer
tokens as a cached continuation. The log-probability of answer token ``t`` is read from the
logits at the position before it (for the first answer token: the prompt's last position). Both
calls run inside one :func:`interventions.hooks.attach` block, so an edit with ``positions="last"``
touches the prompt's last token and every answer token, exactly as during generation; an edit on
prompt positions touches only the prompt. Positions are counted on real tokens, so padding and
batch composition never change a score.

:func:`choice_scores` turns the per-row sums into a ``[B, max choices]`` matrix (``"sum"`` of
log-probabilities, or ``"mean"`` per answer token, i.e. length-normalised; ``-inf`` where an item
has fewer choices), :func:`predict_choices` takes its argmax, and :func:`evaluate_accuracy`
runs a whole loader.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from tqdm.auto import tqdm

from interventions.hooks import Edit, attach, position_ids

__all__ = [
    "MultipleChoiceAccuracy",
    "choice_logprobs",
    "choice_scores",
    "evaluate_accuracy",
    "predict_choices",
    "rows_to_items",
]

Normalize = Literal["sum", "mean"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def choice_logprobs(
    model: nn.Module,
    batch: dict[str, Tensor],
    edit: Edit | None = None,
    beta: float | Tensor = 1.0,
) -> tuple[Tensor, Tensor]:
    """Sum of the log-probabilities of each row's continuation tokens given its prompt.

    Args:
        model: A Hugging Face causal LM (frozen; gradients flow only if enabled by the caller).
        batch: A multiple-choice batch (see the module docstring); moved to the model's device.
        edit: Optional edit attached to both forward calls (see the module docstring).
        beta: Strength of the edit: a float, or a tensor with one value per row ``[R]``.

    Returns:
        ``(logprob_sum, num_tokens)``, both ``[R]``: the summed log-probability (float32) and the
        number of continuation tokens of each row.

    Raises:
        ValueError: The prompts are not left padded, or a row has no prompt or continuation token.
    """
    device = _device(model)
    prompt_ids = batch["prompt_ids"].to(device)  # [R, Tp]
    prompt_mask = batch["prompt_mask"].to(device)  # [R, Tp]
    cont_ids = batch["continuation_ids"].to(device)  # [R, Tc]
    cont_mask = batch["continuation_mask"].to(device)  # [R, Tc]
    if not bool(prompt_mask[:, -1].bool().all()):
        raise ValueError(
            "choice_logprobs: the prompts must be left padded (every row's last column a real "
            "token); build batches with datamodules.commonsense.ChoiceCollator."
        )
    num_tokens = cont_mask.sum(1)  # [R]
    if not bool((num_tokens > 0).all()):
        raise ValueError("choice_logprobs: every row needs at least one continuation token")

    # Choices of one item usually share their prompt: run each distinct prompt once and copy its
    # key/value cache to the rows of its choices (not with per-row betas, which could differ).
    share = not (isinstance(beta, Tensor) and beta.numel() > 1)
    if share:
        rows = torch.cat([prompt_ids, prompt_mask], dim=1)
        distinct, copy_of = torch.unique(rows, dim=0, return_inverse=True)  # [U, 2Tp], [R]
        share = distinct.shape[0] < rows.shape[0]  # nothing to share: keep the rows' order
    if share:
        run_ids, run_mask = distinct[:, : prompt_ids.shape[1]], distinct[:, prompt_ids.shape[1] :]
    else:
        run_ids, run_mask = prompt_ids, prompt_mask
    context = attach(model, edit, beta) if edit is not None else nullcontext()
    with context:
        prompt_out = model(
            input_ids=run_ids,
            attention_mask=run_mask,
            position_ids=position_ids(run_mask),
            use_cache=True,
            logits_to_keep=1,
        )
        prompt_logits = prompt_out.logits[:, -1]  # [U or R, vocab]
        if share:
            # [U] -> [R] rows; the continuation call below then has another batch size than the
            # prompt call, which attach() takes as "the prompt ran before": its first token is
            # after the prompt's last one, so "last" positions are the same as without sharing.
            prompt_out.past_key_values.reorder_cache(copy_of)
            prompt_logits = prompt_logits[copy_of]
        prompt_len = prompt_mask.sum(1)  # [R]
        # answer tokens continue each row's real positions; pad columns get a harmless repeat
        cont_positions = prompt_len[:, None] + (cont_mask.cumsum(1) - 1).clamp(min=0)  # [R, Tc]
        cont_out = model(
            input_ids=cont_ids,
            attention_mask=torch.cat([prompt_mask, cont_mask], dim=1),  # [R, Tp + Tc]
            position_ids=cont_positions,
            past_key_values=prompt_out.past_key_values,
            use_cache=True,
        )

    first_logp = F.log_softmax(prompt_logits.float(), dim=-1)  # [R, vocab]
    from_prompt = first_logp.gather(1, cont_ids)  # [R, Tc]: token t given the prompt alone
    next_logp = F.log_softmax(cont_out.logits[:, :-1].float(), dim=-1)  # [R, Tc - 1, vocab]
    from_previous = next_logp.gather(2, cont_ids[:, 1:, None]).squeeze(2)  # [R, Tc - 1]
    from_previous = F.pad(from_previous, (1, 0))  # [R, Tc]: token t given column t - 1
    real = cont_mask.bool()
    is_first = real & (cont_mask.cumsum(1) == 1)  # first answer token (any padding side)
    token_logp = torch.where(is_first, from_prompt, from_previous)  # [R, Tc]
    return torch.where(real, token_logp, 0.0).sum(1), num_tokens


def rows_to_items(values: Tensor, item: Tensor, num_choices: Tensor) -> Tensor:
    """Arrange per-row values ``[R]`` as ``[B, max choices]`` (``-inf`` for missing choices).

    Args:
        values: One value per row, rows ordered item by item and choice by choice.
        item: ``[R]`` index of each row's item.
        num_choices: ``[B]`` number of choices of each item.
    """
    num_choices = num_choices.to(values.device)
    item = item.to(values.device)
    first_row = num_choices.cumsum(0) - num_choices  # [B]
    choice = torch.arange(values.shape[0], device=values.device) - first_row[item]  # [R]
    width = int(num_choices.max()) if num_choices.numel() else 0
    out = torch.full((num_choices.shape[0], width), float("-inf"), device=values.device)
    out[item, choice] = values.to(out.dtype)
    return out


def choice_scores(
    model: nn.Module,
    batch: dict[str, Tensor],
    normalize: Normalize = "mean",
    edit: Edit | None = None,
    beta: float | Tensor = 1.0,
) -> Tensor:
    """``[B, max choices]`` score of every choice (``-inf`` where an item has fewer choices).

    Args:
        model: A Hugging Face causal LM.
        batch: A multiple-choice batch.
        normalize: ``"sum"`` of the answer's token log-probabilities, or ``"mean"`` (the sum
            divided by the number of answer tokens: length-normalised).
        edit: Optional edit (see :func:`choice_logprobs`).
        beta: Strength of the edit (a float or one value per row).
    """
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
    total, count = choice_logprobs(model, batch, edit=edit, beta=beta)  # [R], [R]
    rows = total / count if normalize == "mean" else total
    return rows_to_items(rows, batch["item"], batch["num_choices"])


def predict_choices(
    model: nn.Module,
    batch: dict[str, Tensor],
    normalize: Normalize = "mean",
    edit: Edit | None = None,
    beta: float | Tensor = 1.0,
) -> Tensor:
    """``[B]`` index of the best-scoring choice of each item (ties: the first)."""
    return choice_scores(model, batch, normalize=normalize, edit=edit, beta=beta).argmax(1)


class MultipleChoiceAccuracy(Metric):
    """Fraction of items whose predicted choice is the gold one."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        """Create the metric (``kwargs`` go to ``torchmetrics.Metric``)."""
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gold: Tensor) -> None:
        """Count a batch: ``pred`` and ``gold`` are ``[B]`` choice indices."""
        if pred.shape != gold.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and gold {tuple(gold.shape)} differ")
        self.correct += (pred.to(gold.device) == gold).sum()
        self.total += gold.numel()

    def compute(self) -> Tensor:
        """The accuracy (``nan`` before any update)."""
        return self.correct.float() / self.total


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    loader: Iterable[dict[str, Tensor]],
    normalize: Normalize = "mean",
    edit: Edit | None = None,
    beta: float = 1.0,
    progress: bool = False,
) -> float:
    """Multiple-choice accuracy over a loader, without gradients and with the model in eval mode.

    Args:
        model: A Hugging Face causal LM (its train/eval mode is restored afterwards).
        loader: Multiple-choice batches (e.g. ``CommonsenseDataModule.test_dataloader()``).
        normalize: ``"sum"`` or ``"mean"`` (see :func:`choice_scores`).
        edit: Optional edit attached while scoring.
        beta: Strength of the edit.
        progress: Show a progress bar.

    Raises:
        ValueError: The loader yields no items.
    """
    was_training = model.training
    model.eval()
    metric = MultipleChoiceAccuracy()
    try:
        for batch in tqdm(loader, desc="multiple choice", disable=not progress):
            pred = predict_choices(model, batch, normalize=normalize, edit=edit, beta=beta)
            metric.update(pred.cpu(), batch["gold"].cpu())
    finally:
        model.train(was_training)
    if int(metric.total) == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no items")
    return float(metric.compute())
