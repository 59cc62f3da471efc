"""Multiple-choice scoring by answer log-likelihood, with or without an edit attached.

A multiple-choice batch (made by ``datamodules.commonsense.ChoiceCollator``) has one row per
(item, choice): ``R`` rows for ``B`` items::

    {"prompt_ids": [R, Tp], "prompt_mask": [R, Tp],                 # prompts, LEFT padded
     "continuation_ids": [R, Tc], "continuation_mask": [R, Tc],     # answers, left or right padded
     "item": [R], "gold": [B], "num_choices": [B]}

:func:`choice_logprobs` runs two forward calls: the prompts (with the KV cache), then the answer
tokens as a cached continuation. The log-probability of answer token ``t`` is read from the
logits at the position before it (for the first answer token: the prompt's last position). Both
calls run inside one :func:`interventions.core.hooks.attach` block, so an edit with ``positions="last"``
touches the prompt's last token and every answer token, exactly as during generation; an edit on
prompt positions touches only the prompt. Positions are counted on real tokens, so padding and
batch composition never change a score.

:func:`choice_scores` turns the per-row sums into a ``[B, max choices]`` matrix (``"sum"`` of
log-probabilities, or ``"mean"`` per answer token, i.e. length-normalised; ``-inf`` where an item
has fewer choices), :func:`predict_choices` takes its argmax, and :func:`evaluate_accuracy`
runs a whole loader.

Scoring many edits on the same items (a hyperparameter search) shares work:
:func:`evaluate_many` loads each batch once, and when an edit leaves every prompt token but the
last alone (``positions="last"``) it runs the prompts' prefix once (:func:`prompt_prefix`) and
re-runs only the last prompt token and the answer per edit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from tqdm.auto import tqdm

from interventions.core.dispatch import input_device
from interventions.core.distributed import reduce_device, shard_loader
from interventions.core.hooks import Edit, attach, keep_last_column, position_ids
from interventions.core.kv_cache import output_cache, with_cache

__all__ = [
    "MultipleChoiceAccuracy",
    "PromptPrefix",
    "evaluate_many",
    "leaves_prefix_alone",
    "prompt_prefix",
    "choice_logprobs",
    "choice_scores",
    "evaluate_accuracy",
    "predict_choices",
    "rows_to_items",
]

Normalize = Literal["sum", "mean"]


def _device(model: nn.Module) -> torch.device:
    return input_device(model)


def _batch_tensors(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """The batch's prompt and continuation tensors on the model's device, checked."""
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
    if not bool((cont_mask.sum(1) > 0).all()):
        raise ValueError("choice_logprobs: every row needs at least one continuation token")
    return prompt_ids, prompt_mask, cont_ids, cont_mask


def _distinct_prompts(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(ids [U, T], mask [U, T], copy_of [R])`` of the distinct rows, or ``None`` if all differ.

    Choices of one item usually share their prompt: it then runs once and its key/value cache is
    copied to the rows of its choices.
    """
    rows = torch.cat([ids, mask], dim=1)
    distinct, copy_of = torch.unique(rows, dim=0, return_inverse=True)  # [U, 2T], [R]
    if distinct.shape[0] == rows.shape[0]:
        return None  # nothing to share: keep the rows' order
    return distinct[:, : ids.shape[1]], distinct[:, ids.shape[1] :], copy_of


def _run_prompts(model: nn.Module, ids: Tensor, mask: Tensor, share: bool) -> tuple[Tensor, Any]:
    """Run left-padded prompts ``[R, T]``; with ``share``, each distinct one once.

    Returns ``(logits at each row's last column [R, vocab], key/value cache with R rows)``.
    """
    shared = _distinct_prompts(ids, mask) if share else None
    run_ids, run_mask = (ids, mask) if shared is None else shared[:2]
    out = model(
        input_ids=run_ids,
        attention_mask=run_mask,
        position_ids=position_ids(run_mask),
        use_cache=True,
        logits_to_keep=keep_last_column(run_ids),
    )
    logits, cache = out.logits[:, -1], output_cache(out)  # [U or R, vocab]
    if shared is not None:
        cache.reorder_cache(shared[2])  # [U] -> [R] rows
        logits = logits[shared[2]]
    return logits, cache


def _continuation_logprob(
    prompt_logits: Tensor, cont_logits: Tensor, cont_ids: Tensor, cont_mask: Tensor
) -> Tensor:
    """``[R]`` summed log-probability of the real continuation tokens.

    ``prompt_logits`` ``[R, vocab]`` are the logits at the prompt's last token (they predict the
    first answer token); ``cont_logits`` ``[R, Tc, vocab]`` those at the answer columns.
    """
    first_logp = F.log_softmax(prompt_logits.float(), dim=-1)  # [R, vocab]
    from_prompt = first_logp.gather(1, cont_ids)  # [R, Tc]: token t given the prompt alone
    next_logp = F.log_softmax(cont_logits[:, :-1].float(), dim=-1)  # [R, Tc - 1, vocab]
    from_previous = next_logp.gather(2, cont_ids[:, 1:, None]).squeeze(2)  # [R, Tc - 1]
    from_previous = F.pad(from_previous, (1, 0))  # [R, Tc]: token t given column t - 1
    real = cont_mask.bool()
    is_first = real & (cont_mask.cumsum(1) == 1)  # first answer token (any padding side)
    token_logp = torch.where(is_first, from_prompt, from_previous)  # [R, Tc]
    return torch.where(real, token_logp, 0.0).sum(1)


@dataclass
class PromptPrefix:
    """The key/value cache of a batch's prompts without their last token, one row per batch row.

    Made by :func:`prompt_prefix`.  An edit that leaves these tokens alone (``positions="last"``,
    or no edit) gives the same scores whether the prefix is recomputed or reused, so
    :func:`choice_logprobs` and :func:`evaluate_many` run it once per batch and re-run only the
    prompt's last token and the answer for each edit.  The stored cache is never modified: each
    use works on a copy.

    Attributes:
        cache: the model's key/value cache of ``prompt_ids[:, :-1]``, ``R`` rows.
        mask: ``[R, Tp - 1]`` attention mask of those columns.
    """

    cache: Any
    mask: Tensor


def leaves_prefix_alone(edit: Edit | None) -> bool:
    """Whether ``edit`` never touches a prompt token before the last one (so a
    :class:`PromptPrefix` may be reused under it): no edit, or ``positions == "last"``."""
    return edit is None or getattr(edit, "positions", None) == "last"


@torch.no_grad()
def prompt_prefix(model: nn.Module, batch: dict[str, Tensor]) -> PromptPrefix | None:
    """Run the batch's prompts without their last token, unedited, and keep the cache.

    Returns ``None`` when some prompt has a single token (there is no prefix to reuse).
    """
    prompt_ids, prompt_mask, _, _ = _batch_tensors(model, batch)
    if prompt_ids.shape[1] < 2 or not bool((prompt_mask.sum(1) >= 2).all()):
        return None
    ids, mask = prompt_ids[:, :-1], prompt_mask[:, :-1]  # left padded: drops each last token
    _, cache = _run_prompts(model, ids, mask, share=True)
    return PromptPrefix(cache=cache, mask=mask)


def choice_logprobs(
    model: nn.Module,
    batch: dict[str, Tensor],
    edit: Edit | None = None,
    beta: float | Tensor = 1.0,
    prefix: PromptPrefix | None = None,
) -> tuple[Tensor, Tensor]:
    """Sum of the log-probabilities of each row's continuation tokens given its prompt.

    Args:
        model: A Hugging Face causal LM (frozen; gradients flow only if enabled by the caller).
        batch: A multiple-choice batch (see the module docstring); moved to the model's device.
        edit: Optional edit attached to the forward calls (see the module docstring).
        beta: Strength of the edit: a float, or a tensor with one value per row ``[R]``.
        prefix: The batch's :func:`prompt_prefix`, reused (not modified) when the edit leaves
            the prefix alone (:func:`leaves_prefix_alone`); otherwise ignored.

    Returns:
        ``(logprob_sum, num_tokens)``, both ``[R]``: the summed log-probability (float32) and the
        number of continuation tokens of each row.

    Raises:
        ValueError: The prompts are not left padded, or a row has no prompt or continuation token.
    """
    prompt_ids, prompt_mask, cont_ids, cont_mask = _batch_tensors(model, batch)
    num_tokens = cont_mask.sum(1)  # [R]
    prompt_len = prompt_mask.sum(1)  # [R]
    # answer tokens continue each row's real positions; pad columns get a harmless repeat
    cont_positions = prompt_len[:, None] + (cont_mask.cumsum(1) - 1).clamp(min=0)  # [R, Tc]
    context = attach(model, edit, beta) if edit is not None else nullcontext()

    if prefix is not None and leaves_prefix_alone(edit):
        if prefix.mask.shape != (prompt_ids.shape[0], prompt_ids.shape[1] - 1):
            raise ValueError(
                f"prefix mask {list(prefix.mask.shape)} does not fit this batch's prompts "
                f"{list(prompt_ids.shape)}; pass the prompt_prefix() of the same batch."
            )
        # the prompt's last token and the answer in one cached call; attach() takes a block
        # that starts with a cached call as "the prompt ran before", so its first token is the
        # prompt's last one: "last" positions are the same as in the two-call path below
        cache = copy.deepcopy(prefix.cache)
        with context:
            out = model(
                input_ids=torch.cat([prompt_ids[:, -1:], cont_ids], dim=1),  # [R, 1 + Tc]
                attention_mask=torch.cat([prompt_mask, cont_mask], dim=1),  # [R, Tp + Tc]
                position_ids=torch.cat([prompt_len[:, None] - 1, cont_positions], dim=1),
                **with_cache(model, cache),
            )
        total = _continuation_logprob(out.logits[:, 0], out.logits[:, 1:], cont_ids, cont_mask)
        return total, num_tokens

    # Run each distinct prompt once and copy its key/value cache to the rows of its choices
    # (not with per-row betas, which could differ).
    # With shared prompts the continuation call below has another batch size than the prompt
    # call, which attach() takes as "the prompt ran before": its first token is after the
    # prompt's last one, so "last" positions are the same as without sharing.
    share = not (isinstance(beta, Tensor) and beta.numel() > 1)
    with context:
        prompt_logits, cache = _run_prompts(model, prompt_ids, prompt_mask, share)
        cont_out = model(
            input_ids=cont_ids,
            attention_mask=torch.cat([prompt_mask, cont_mask], dim=1),  # [R, Tp + Tc]
            position_ids=cont_positions,
            **with_cache(model, cache),
        )
    total = _continuation_logprob(prompt_logits, cont_out.logits, cont_ids, cont_mask)
    return total, num_tokens


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
    prefix: PromptPrefix | None = None,
) -> Tensor:
    """``[B, max choices]`` score of every choice (``-inf`` where an item has fewer choices).

    Args:
        model: A Hugging Face causal LM.
        batch: A multiple-choice batch.
        normalize: ``"sum"`` of the answer's token log-probabilities, or ``"mean"`` (the sum
            divided by the number of answer tokens: length-normalised).
        edit: Optional edit (see :func:`choice_logprobs`).
        beta: Strength of the edit (a float or one value per row).
        prefix: The batch's :func:`prompt_prefix` (see :func:`choice_logprobs`).
    """
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
    total, count = choice_logprobs(model, batch, edit=edit, beta=beta, prefix=prefix)
    rows = total / count if normalize == "mean" else total
    return rows_to_items(rows, batch["item"], batch["num_choices"])


def predict_choices(
    model: nn.Module,
    batch: dict[str, Tensor],
    normalize: Normalize = "mean",
    edit: Edit | None = None,
    beta: float | Tensor = 1.0,
    prefix: PromptPrefix | None = None,
) -> Tensor:
    """``[B]`` index of the best-scoring choice of each item (ties: the first)."""
    return choice_scores(model, batch, normalize, edit, beta, prefix).argmax(1)


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


Candidate = tuple[Edit | None, float | Tensor] | None
"""One setting scored by :func:`evaluate_many`: ``(edit, beta)``, or ``None`` for no edit."""


@torch.no_grad()
def evaluate_many(
    model: nn.Module,
    loader: Iterable[dict[str, Tensor]],
    candidates: Sequence[Candidate],
    normalize: Normalize = "mean",
    reuse_prefix: bool = True,
    progress: bool = False,
) -> list[float]:
    """Multiple-choice accuracy of several settings in one pass over the loader.

    Each batch is loaded once and scored under every candidate.  With ``reuse_prefix``, the
    unedited key/value cache of the prompts without their last token (:func:`prompt_prefix`) is
    computed once per batch and shared by every candidate that leaves it alone (no edit, or
    ``positions="last"``): such a candidate re-runs only the prompt's last token and the answer,
    which is what makes a hyperparameter search over many edits cheap for long prompts.  The
    scores are the same as recomputing everything (up to float rounding).

    Args:
        model: A Hugging Face causal LM (its train/eval mode is restored afterwards).
        loader: Multiple-choice batches (e.g. ``CommonsenseDataModule.val_dataloader()``).
        candidates: ``(edit, beta)`` pairs, or ``None`` for the unedited model.
        normalize: ``"sum"`` or ``"mean"`` (see :func:`choice_scores`).
        reuse_prefix: Share the prompt prefix between candidates (see above).
        progress: Show a progress bar over batches.

    Returns:
        One accuracy per candidate, in order.

    Raises:
        ValueError: No candidates, or the loader yields no items.
    """
    if not candidates:
        raise ValueError("evaluate_many needs at least one candidate ((edit, beta) or None).")
    settings = [(None, 1.0) if c is None else c for c in candidates]
    was_training = model.training
    model.eval()
    # under a process group: this rank's share of the items; compute() adds up the ranks' counts
    metrics = [MultipleChoiceAccuracy().to(reduce_device()) for _ in settings]
    try:
        batches = shard_loader(loader)
        for batch in tqdm(batches, desc="multiple choice", disable=not progress, leave=False):
            prefix = None
            if reuse_prefix and any(leaves_prefix_alone(edit) for edit, _ in settings):
                prefix = prompt_prefix(model, batch)
            gold = batch["gold"].to(metrics[0].device)
            for (edit, beta), metric in zip(settings, metrics, strict=True):
                pred = predict_choices(model, batch, normalize, edit, beta, prefix)
                metric.update(pred, gold)
    finally:
        model.train(was_training)
    accuracies = [float(metric.compute()) for metric in metrics]  # collective under DDP
    if math.isnan(accuracies[0]):  # 0 / 0: no item on any rank
        raise ValueError("multiple-choice evaluation: the loader yielded no items")
    return accuracies


def evaluate_accuracy(
    model: nn.Module,
    loader: Iterable[dict[str, Tensor]],
    normalize: Normalize = "mean",
    edit: Edit | None = None,
    beta: float = 1.0,
    progress: bool = False,
) -> float:
    """Multiple-choice accuracy over a loader, without gradients and with the model in eval mode.

    Every batch is scored from scratch (one setting; :func:`evaluate_many` scores several and
    shares the prompt prefix between them).

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
    candidate = (edit, beta)
    return evaluate_many(model, loader, [candidate], normalize, False, progress)[0]
