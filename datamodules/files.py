"""Your own data from a file, in three shapes, for every method of the project.

Each data module reads a ``.jsonl``, ``.json`` (a list of objects, or ``{"data": [...]}``),
``.csv`` or ``.parquet`` file, or a Hugging Face dataset (a hub name or a saved folder, with the
``datasets`` library); see :mod:`datamodules.file_records`.  Column names are the ones below
unless ``columns`` maps a field to another column, e.g. ``columns: {prompt: question}``.  The
rows are read and checked when the data module is built (a missing file, a missing column, an
empty value, a label out of range, ...), the checks that need the tokenizer (one-token answers,
equal prompt lengths) at ``setup``; each problem is one
:class:`~interventions.core.errors.ConfigError` line naming the file, the row and what is wrong.

* :class:`ContrastiveFileDataModule`: one-token contrastive prompts, columns ``prompt``,
  ``correct``, ``wrong`` and optionally ``corrupted_prompt``; wherever ``IOIDataModule`` goes
  (ActivScalar / SteerVec / DynScalar via ``InterventionModule``, attribution, A2A with corrupted
  prompts)::

      {"prompt": "The capital of France is", "correct": " Paris", "wrong": " Rome"}

* :class:`BehaviorFileDataModule`: A/B behaviour items in the model-written-evals format,
  columns ``question``, ``answer_matching_behavior``, ``answer_not_matching_behavior``, for CAA
  and A2A (everything :class:`~datamodules.mwe.MWEDataModule` does: chat-format prompts,
  variants, contrast pairs); :class:`W2SFileDataModule`: the same items for W2S::

      {"question": "...\\n\\nChoices:\\n (A) ...\\n (B) ...",
       "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}

  (answers ``Yes`` / ``No`` make persona-style items, as MWE's persona files);

* :class:`MultipleChoiceFileDataModule` (in :mod:`datamodules.file_choices`): multiple-choice
  questions, columns ``question`` (or ``context``, or both), ``choices`` (a list; in a CSV cell a
  JSON list, or one column per choice with ``columns: {choices: [a, b, c]}``) and ``label`` (the
  index of the correct choice from 0, or its letter ``A``, ``B``, ...), for AUSteer (all its
  ``method`` values, CAA on multiple choice included)::

      {"question": "Which planet is the largest?", "choices": ["Jupiter", "Mars"], "label": 0}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from datamodules.base import ContrastiveDataModule, ContrastiveExample
from datamodules.file_choices import CHOICE_FIELDS, MultipleChoiceFileDataModule
from datamodules.file_records import Columns, Record, inherited_hparams, read_records, source_name
from datamodules.mwe import MWEDataModule
from datamodules.mwe_items import ABItem, ab_items_from_records
from datamodules.w2s import W2SDataModule
from interventions.core.errors import ConfigError

__all__ = [
    "BEHAVIOR_FIELDS",
    "CHOICE_FIELDS",
    "CONTRASTIVE_FIELDS",
    "BehaviorFileDataModule",
    "ContrastiveFileDataModule",
    "MultipleChoiceFileDataModule",
    "W2SFileDataModule",
]

CONTRASTIVE_FIELDS: dict[str, str] = {
    "prompt": "the text before the answer",
    "correct": "the correct next token",
    "wrong": "the competing wrong token",
    "corrupted_prompt": "an optional counterfactual prompt of the same token length",
}
"""The fields of :class:`ContrastiveFileDataModule`."""

BEHAVIOR_FIELDS: dict[str, str] = {
    "question": "the question with its choices (A) and (B), or a statement answered Yes / No",
    "answer_matching_behavior": "the answer of the behaviour, (A) / (B) or Yes / No",
    "answer_not_matching_behavior": "the other answer",
}
"""The fields of :class:`BehaviorFileDataModule` and :class:`W2SFileDataModule`."""


def _check_sizes(owner: str, **sizes: int | None) -> None:
    for name, value in sizes.items():
        if value is not None and value < 0:
            raise ConfigError(f"{owner}: {name} must be >= 0 or null, got {value}.")


# ---------------------------------------------------------------------------- contrastive
class ContrastiveFileDataModule(ContrastiveDataModule):
    """One-token contrastive prompts from a file: ``prompt``, ``correct``, ``wrong``, optional
    ``corrupted_prompt`` (see the module docstring).

    Every mechanism of :class:`~datamodules.base.ContrastiveDataModule` applies: the answers are
    checked to be one token each for the backbone's tokenizer (here with the file's row in the
    message), ``fixed_length`` keeps the prompts of the most common token length, and the splits
    are a permutation seeded by ``seed``.  :attr:`rows` lists the rows of the examples.
    """

    def __init__(
        self,
        path: str,
        columns: dict[str, str] | None = None,
        answer_template: str = " {answer}",
        split: str = "train",
        subset: str | None = None,
        backbone: str = "smollm2-135m-instruct",
        batch_size: int = 32,
        num_train: int | None = None,
        num_val: int | None = None,
        num_test: int | None = None,
        seed: int = 0,
        fixed_length: bool = False,
        padding_side: Literal["left", "right"] = "left",
        num_workers: int = 0,
    ) -> None:
        """Read and check the file (this signature is the YAML/CLI schema).

        Args:
            path: A ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a Hugging Face
                dataset name or saved folder (needs ``pip install datasets``).
            columns: The file's column of a field whose column has another name, e.g.
                ``{prompt: question, correct: answer, wrong: foil}``.
            answer_template: How a ``correct`` / ``wrong`` value (stripped of surrounding
                whitespace) becomes the answer token's text: ``" {answer}"`` puts the space
                that separates it from the prompt; ``"{answer}"`` takes it as is (e.g. after a
                prompt ending in ``"("``).
            split: The split of a Hugging Face dataset (ignored for files).
            subset: The configuration name of a Hugging Face dataset (ignored for files).
            backbone: Name or path of the model whose tokenizer is used (linked to
                ``model.backbone`` on the command line).
            batch_size: Examples per batch in every dataloader.
            num_train: Training examples; ``null``: the usable rows left by val and test.
            num_val: Validation examples; ``null``: 20% of the usable rows (rounded down).
            num_test: Test examples; ``null``: 20% of the usable rows (rounded down).
            seed: Seed of the train/val/test split.
            fixed_length: Keep only the prompts of the most common token length (needed by
                edits tied to prompt positions, ``positions: all``); off by default, as the
                prompts of a file usually vary in length.
            padding_side: Side on which batches are padded.
            num_workers: DataLoader worker processes.
        """
        name = type(self).__name__
        _check_sizes(name, num_train=num_train, num_val=num_val, num_test=num_test)
        super().__init__(
            backbone=backbone,
            batch_size=batch_size,
            num_train=num_train or 0,
            num_val=num_val or 0,
            num_test=num_test or 0,
            seed=seed,
            fixed_length=fixed_length,
            padding_side=padding_side,
            num_workers=num_workers,
        )
        self.path = path
        self.columns = columns
        self.answer_template = answer_template
        # the sizes as given (``None``: see split_sizes)
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test  # type: ignore
        self.source, records = read_records(path, split, subset)
        self._fields = Columns(self.source, CONTRASTIVE_FIELDS, columns, name)
        self._rows = [self._example(record) for record in records]
        self.save_hyperparameters(ignore=inherited_hparams(self))  # this signature only

    def _example(self, record: Record) -> tuple[Record, ContrastiveExample]:
        f = self._fields
        prompt = f.text(record, "prompt")
        correct, wrong = (
            f.format(record, self.answer_template, "answer_template", answer=value.strip())
            for value in (f.text(record, "correct"), f.text(record, "wrong"))
        )
        corrupted = f.optional_text(record, "corrupted_prompt")
        return record, ContrastiveExample(prompt, correct, wrong, corrupted)

    @property
    def rows(self) -> list[str]:
        """The row of each example read (``"row 3 (line 3)"``), in file order."""
        return [record.where for record, _ in self._rows]

    def split_sizes(self, available: int) -> tuple[int, int, int]:
        """The given sizes; ``null`` val / test: 20% of ``available``; ``null`` train: the rest."""
        val = self.num_val if self.num_val is not None else math.floor(0.2 * available)
        test = self.num_test if self.num_test is not None else math.floor(0.2 * available)
        train = self.num_train if self.num_train is not None else max(available - val - test, 0)
        return train, val, test

    def build_examples(self) -> list[ContrastiveExample]:
        """The rows' examples in file order, checked against the tokenizer row by row."""
        self._check_tokens()
        return [example for _, example in self._rows]

    def _check_tokens(self) -> None:
        f, tok = self._fields, self.tokenizer
        answers = {a for _, ex in self._rows for a in (ex.correct, ex.wrong)}
        pieces = {
            a: tok.convert_ids_to_tokens(tok.encode(a, add_special_tokens=False)) for a in answers
        }
        with_corrupted = [ex.corrupted_prompt is not None for _, ex in self._rows]
        for (record, ex), has in zip(self._rows, with_corrupted):
            for field in ("correct", "wrong"):
                answer = getattr(ex, field)
                if len(pieces[answer]) != 1:
                    raise f.error(
                        record,
                        f"{field} {answer!r} is {len(pieces[answer])} tokens {pieces[answer]} for "
                        f"the tokenizer of {self.backbone!r}; every answer must be exactly one "
                        "token (answer_template adds the leading space: "
                        f"{self.answer_template!r}).",
                    )
            if pieces[ex.correct] == pieces[ex.wrong]:
                raise f.error(record, f"correct and wrong are the same token {ex.correct!r}.")
            if any(with_corrupted) and not has:
                raise f.error(
                    record,
                    f"has no corrupted_prompt, but {sum(with_corrupted)} of {len(with_corrupted)} "
                    "rows have one; give every row one, or none.",
                )
        if all(with_corrupted):
            clean = self.token_lengths([ex.prompt for _, ex in self._rows])
            corrupt = self.token_lengths([ex.corrupted_prompt or "" for _, ex in self._rows])
            for (record, _), n_clean, n_corrupt in zip(self._rows, clean, corrupt):
                if n_clean != n_corrupt:
                    raise f.error(
                        record,
                        f"the corrupted_prompt is {n_corrupt} tokens but the prompt is {n_clean} "
                        f"for the tokenizer of {self.backbone!r}; they must be equal (patching "
                        "aligns them position by position).",
                    )


# ---------------------------------------------------------------------------- behaviour items
def _read_ab_items(
    path: str, columns: dict[str, str] | None, split: str, subset: str | None, owner: str
) -> tuple[str, list[ABItem], int]:
    """``(source, items, skipped)`` of a behaviour file (see :class:`BehaviorFileDataModule`)."""
    source, records = read_records(path, split, subset)
    fields = Columns(source, BEHAVIOR_FIELDS, columns, owner)
    rows = [(r.where, {k: fields.text(r, k) for k in BEHAVIOR_FIELDS}) for r in records]
    first = rows[0][1]["answer_matching_behavior"].strip().strip("()").strip()
    kind = "persona" if first in ("Yes", "No") else "xrisk"
    try:
        items, skipped = ab_items_from_records(source, rows, kind)
    except ValueError as err:  # the MWE reader's checks: the answers of a row
        raise ConfigError(str(err)) from err
    if not items:
        raise ConfigError(
            f"{source}: has no usable item: all {skipped} rows have a third option (C); the items "
            "must have two choices, (A) and (B)."
        )
    return source, items, skipped


class BehaviorFileDataModule(MWEDataModule):
    """A/B behaviour items from a file, for CAA and A2A (see the module docstring).

    Everything of :class:`~datamodules.mwe.MWEDataModule` applies to the file's items: the
    chat-format prompt ending in ``"("`` with the answer letter as next token, the prompt
    ``variant``, the ``contrast`` pairs (A2A), ``target``, the seeded fractional split and
    ``deduplicate``.  Answers ``(A)`` / ``(B)`` (with or without parentheses and spaces) take the
    question as written, which must hold both choices; answers ``Yes`` / ``No`` make an A/B item
    of the statement, the matching answer on (A) for every other row (as MWE's persona files).
    A question with a third option ``(C)`` is skipped (:attr:`num_skipped`).  The behaviour's
    name (:attr:`behavior`, in reports and caches) is the file's stem.  There are no built-in
    descriptions: the ``*_pos`` / ``*_neg`` variants and the contrasts need
    ``positive_description`` and ``negative_description``.
    """

    def __init__(
        self,
        path: str,
        columns: dict[str, str] | None = None,
        split: str = "train",
        subset: str | None = None,
        variant: Literal["base", "user_pos", "user_neg", "sys_pos", "sys_neg"] = "base",
        contrast: Literal["none", "system", "user"] = "none",
        target: Literal["matching", "not_matching"] = "matching",
        positive_description: str | None = None,
        negative_description: str | None = None,
        train_fraction: float = 0.4,
        val_fraction: float = 0.1,
        max_examples: int | None = None,
        deduplicate: bool = True,
        backbone: str = "smollm2-135m-instruct",
        batch_size: int = 32,
        seed: int = 0,
        padding_side: Literal["left", "right"] = "left",
        num_workers: int = 0,
    ) -> None:
        """Read and check the file (this signature is the YAML/CLI schema).

        Args:
            path: A ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a Hugging Face
                dataset name or saved folder (needs ``pip install datasets``).
            columns: The file's column of a field whose column has another name, e.g.
                ``{question: prompt, answer_matching_behavior: yes_answer,
                answer_not_matching_behavior: no_answer}``.
            split: The split of a Hugging Face dataset (ignored for files).
            subset: The configuration name of a Hugging Face dataset (ignored for files).
            variant: Prompt variant (see ``MWEDataModule``): ``base``, ``sys_pos`` /
                ``sys_neg`` (a description as system message), ``user_pos`` / ``user_neg``
                (before the question).
            contrast: ``"system"`` / ``"user"``: each example's ``corrupted_prompt`` is its
                item under the negative description, its prompt under the positive one (A2A);
                the two descriptions must have the same token length. ``"none"``: no pairs.
            target: Which answer is ``correct``: the behaviour's, or ``not_matching``.
            positive_description: The behaviour's description (the ``*_pos`` variants and
                the positive side of a contrast).
            negative_description: Its opposite (the ``*_neg`` variants, a contrast's negative).
            train_fraction: Fraction of the items for training (rounded down).
            val_fraction: Fraction for validation (rounded down); the rest is the test split.
            max_examples: Cap on the items used (the first of the seeded shuffle); ``null``: all.
            deduplicate: Keep only the first item of each repeated question.
            backbone: Name or path of the model whose tokenizer and chat template are used
                (linked to ``model.backbone`` on the command line).
            batch_size: Examples per batch in every dataloader.
            seed: Seed of the train/val/test split.
            padding_side: Side on which batches are padded.
            num_workers: DataLoader worker processes.
        """
        super().__init__(
            behavior=source_name(path),
            variant=variant,
            contrast=contrast,
            target=target,
            positive_description=positive_description,
            negative_description=negative_description,
            train_fraction=train_fraction,
            val_fraction=val_fraction,
            max_examples=max_examples,
            deduplicate=deduplicate,
            backbone=backbone,
            batch_size=batch_size,
            seed=seed,
            padding_side=padding_side,
            num_workers=num_workers,
        )
        self.path = path
        self.columns = columns
        self.source, self._file_items, self._file_skipped = _read_ab_items(
            path, columns, split, subset, type(self).__name__
        )
        self.save_hyperparameters(ignore=inherited_hparams(self))  # this signature only

    @property
    def descriptions(self) -> tuple[str | None, str | None]:
        """The (positive, negative) descriptions given, each ``None`` if not given."""
        return self.positive_description, self.negative_description

    def load_items(self) -> tuple[list[ABItem], int, Path]:
        """The file's items (read when the data module was built)."""
        return list(self._file_items), self._file_skipped, Path(self.source)


class W2SFileDataModule(W2SDataModule):
    """The W2S item sets of a behaviour file: base train / val / test and the test items of the
    OOD variants (see :class:`~datamodules.w2s.W2SDataModule` and, for the file,
    :class:`BehaviorFileDataModule`).  OOD variants need the two descriptions."""

    def __init__(
        self,
        path: str,
        columns: dict[str, str] | None = None,
        split: str = "train",
        subset: str | None = None,
        target: Literal["matching", "not_matching"] = "matching",
        positive_description: str | None = None,
        negative_description: str | None = None,
        ood_variants: tuple[str, ...] = (),
        deduplicate: bool = True,
        backbone: str = "smollm2-135m-instruct",
        max_examples: int | None = None,
        train_fraction: float = 0.4,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        """Read and check the file (this signature is the YAML/CLI schema).

        Args:
            path: A ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a Hugging Face
                dataset name or saved folder (needs ``pip install datasets``).
            columns: The file's column of a field whose column has another name.
            split: The split of a Hugging Face dataset (ignored for files).
            subset: The configuration name of a Hugging Face dataset (ignored for files).
            target: Which answer is ``correct``: the behaviour's, or ``not_matching``.
            positive_description: The behaviour's description (``sys_pos`` / ``user_pos``).
            negative_description: Its opposite (``sys_neg`` / ``user_neg``).
            ood_variants: Prompt variants evaluated as extra test sets, e.g.
                ``[sys_pos, sys_neg, user_pos, user_neg]`` (they need the descriptions).
            deduplicate: Keep only the first item of each repeated question.
            backbone: Name or path of the model whose tokenizer formats the prompts (linked to
                ``model.backbone``).
            max_examples: Cap on the items (``null``: all).
            train_fraction: Fraction of the items for training.
            val_fraction: Fraction for validation (test = the rest).
            batch_size: W2S training batch size.
            seed: Seed of the split and of the training shuffle.
        """
        super().__init__(
            behavior=source_name(path),
            backbone=backbone,
            ood_variants=ood_variants,
            max_examples=max_examples,
            train_fraction=train_fraction,
            val_fraction=val_fraction,
            batch_size=batch_size,
            seed=seed,
        )
        self.path = path
        options = dict(
            path=path,
            columns=columns,
            split=split,
            subset=subset,
            target=target,
            positive_description=positive_description,
            negative_description=negative_description,
            train_fraction=train_fraction,
            val_fraction=val_fraction,
            max_examples=max_examples,
            deduplicate=deduplicate,
            backbone=backbone,
            seed=seed,
        )
        self._variants = self._variant_modules(options)  # read and checked now
        self.save_hyperparameters(ignore=inherited_hparams(self))  # this signature only

    def _variant_modules(self, options: dict[str, Any]) -> dict[str, BehaviorFileDataModule]:
        # built in a method, not in __init__: Lightning would take this __init__'s arguments
        # for the hyperparameters of the modules built in it
        return {
            variant: BehaviorFileDataModule(variant=variant, **options)
            for variant in ["base", *self.ood_variants]
        }

    def _mwe(self, variant: str) -> MWEDataModule:
        dm = self._variants[variant]
        dm.setup()
        return dm
