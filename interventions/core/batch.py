"""The batch contracts every data module serves and every method reads.

* :class:`ContrastiveExample`: a prompt and two competing single-token answers (``correct`` and
  ``wrong``), optionally with a ``corrupted_prompt`` of the same token length;
* :class:`ContrastiveBatch`: the padded tensors of a list of them, made by
  :class:`ContrastiveCollator`::

    {
        "input_ids": LongTensor[batch, seq],
        "attention_mask": LongTensor[batch, seq],
        "correct_id": LongTensor[batch],
        "wrong_id": LongTensor[batch],
        "prompts": list[str],
        # only when the examples have corrupted prompts (same [batch, seq] as the clean ones):
        "corrupted_input_ids": LongTensor[batch, seq],
        "corrupted_attention_mask": LongTensor[batch, seq],
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import torch
from torch import Tensor

__all__ = ["ContrastiveBatch", "ContrastiveCollator", "ContrastiveExample"]


class ContrastiveBatch(TypedDict):
    """A padded batch of contrastive examples (see the module docstring)."""

    input_ids: Tensor
    attention_mask: Tensor
    correct_id: Tensor
    wrong_id: Tensor
    prompts: list[str]
    corrupted_input_ids: NotRequired[Tensor]
    corrupted_attention_mask: NotRequired[Tensor]


@dataclass(frozen=True)
class ContrastiveExample:
    """One data point: a prompt and two competing next-token answers.

    Attributes:
        prompt: The text fed to the model; the answer is the next token after it.
        correct: The correct continuation, one token, with its leading space (e.g. ``" Mary"``).
        wrong: The wrong continuation, one token, with its leading space (e.g. ``" John"``).
        corrupted_prompt: Optional counterfactual prompt of the same token length as ``prompt``
            (for activation/attribution patching), or ``None``.
    """

    prompt: str
    correct: str
    wrong: str
    corrupted_prompt: str | None = None


class ContrastiveCollator:
    """Turns a list of :class:`ContrastiveExample` into a padded batch of tensors.

    Padding follows the tokenizer's ``padding_side``. Answers are mapped to their single token
    id; the datamodule checks beforehand that every answer is exactly one token.
    """

    def __init__(self, tokenizer: Any) -> None:
        """Wrap a tokenizer.

        Args:
            tokenizer: A Hugging Face tokenizer with a pad token.
        """
        self.tokenizer = tokenizer

    def answer_id(self, answer: str) -> int:
        """The id of a single-token answer (``ValueError`` if it is not one token)."""
        ids = self.tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f"answer {answer!r} is {len(ids)} tokens {pieces}, expected exactly 1")
        return int(ids[0])

    def __call__(self, examples: list[ContrastiveExample]) -> ContrastiveBatch:
        """Tokenize and pad a list of examples (see the module docstring for the keys)."""
        prompts = [ex.prompt for ex in examples]
        clean = self.tokenizer(prompts, padding=True, return_tensors="pt")
        batch: ContrastiveBatch = {
            "input_ids": clean["input_ids"].long(),  # [batch, seq]
            "attention_mask": clean["attention_mask"].long(),  # [batch, seq]
            "correct_id": torch.tensor([self.answer_id(ex.correct) for ex in examples]),
            "wrong_id": torch.tensor([self.answer_id(ex.wrong) for ex in examples]),
            "prompts": prompts,
        }
        corrupted = [ex.corrupted_prompt for ex in examples]
        if all(c is not None for c in corrupted):
            # Same per-row token lengths as the clean prompts, hence the same [batch, seq] and
            # the same padding: position j of a row is aligned between clean and corrupted.
            enc = self.tokenizer(corrupted, padding=True, return_tensors="pt")
            batch["corrupted_input_ids"] = enc["input_ids"].long()
            batch["corrupted_attention_mask"] = enc["attention_mask"].long()
        return batch
