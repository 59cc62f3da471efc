"""Multiple-choice questions from your own file: :class:`MultipleChoiceFileDataModule`, for
AUSteer (see :mod:`datamodules.files` for the three shapes and :mod:`datamodules.file_records`
for the formats).

Columns ``question`` (or ``context``, or both), ``choices`` (a list; in a CSV cell a JSON list,
or one column per choice with ``columns: {choices: [a, b, c]}``) and ``label`` (the index of the
correct choice from 0, or its letter ``A``, ``B``, ...)::

    {"question": "Which planet is the largest?", "choices": ["Jupiter", "Mars"], "label": 0}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from datamodules.commonsense import ChoiceItem, CommonsenseDataModule, StatisticToken
from datamodules.file_records import Columns, Record, inherited_hparams, read_records, source_name
from interventions.core.errors import ConfigError

__all__ = ["CHOICE_FIELDS", "MultipleChoiceFileDataModule"]

CHOICE_FIELDS: dict[str, str] = {
    "question": "the question, the prompt the choices follow",
    "context": "a passage before the question (or the prompt, without a question)",
    "choices": "the answer options, a list",
    "label": "the correct choice, an index from 0 or a letter A, B, ...",
}
"""The fields of :class:`MultipleChoiceFileDataModule`."""


def _label(columns: Columns, record: Record, num_choices: int) -> int:
    value = columns.value(record, "label")
    index: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            index = int(text)
        elif len(text) == 1 and "A" <= text.upper() <= "Z":
            index = ord(text.upper()) - ord("A")
    if index is None:
        raise columns.error(
            record,
            f"label {value!r} is not the index of a choice (0, 1, ...) nor its letter (A, B, ...).",
        )
    if not 0 <= index < num_choices:
        raise columns.error(
            record,
            f"label {value!r} is out of range for {num_choices} choices (an index from 0 to "
            f"{num_choices - 1}, or a letter from A to {chr(ord('A') + num_choices - 1)}).",
        )
    return index


def _choices(columns: Columns, record: Record) -> list[str]:
    raw = value = columns.value(record, "choices")
    if isinstance(raw, str):  # a CSV cell: a JSON list
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list):
            raise columns.error(
                record,
                f"choices {raw!r} is not a list; in a CSV "
                'cell write a JSON list ("[""Paris"", ""Rome""]"), or name one column per '
                "choice with columns: {choices: [choice_a, choice_b]}.",
            )
    if not isinstance(value, list | tuple):
        raise columns.error(record, f"choices must be a list, got {type(value).__name__}.")
    if len(value) < 2:
        raise columns.error(
            record, f"has {len(value)} choice(s) {list(value)!r}; a question needs at least 2."
        )
    choices = []
    for i, choice in enumerate(value):
        if isinstance(choice, int | float) and not isinstance(choice, bool):
            choice = str(choice)
        if not isinstance(choice, str) or not choice.strip():
            raise columns.error(record, f"choice {i} is empty or not text: {choice!r}.")
        choices.append(choice.strip())
    return choices


class MultipleChoiceFileDataModule(CommonsenseDataModule):
    """Multiple-choice questions from a file, for AUSteer (see the module docstring).

    Every mechanism of :class:`~datamodules.commonsense.CommonsenseDataModule` applies to the
    file's items: the seeded split into the contrastive pool (prompt + correct choice vs prompt
    + a wrong one), the validation set for the search and the test set, and the batches scored by
    the log-likelihood of each choice.  The prompt is ``question``, or ``context``, or
    ``"{context}\\n{question}"`` when the row has both (``prompt_template`` writes another);
    each choice is ``choice_template`` of the stripped choice (default ``" {choice}"``).
    :attr:`task` (in reports and caches) is the file's stem.
    """

    def __init__(
        self,
        path: str,
        columns: dict[str, str | list[str]] | None = None,
        prompt_template: str | None = None,
        choice_template: str = " {choice}",
        split: str = "train",
        subset: str | None = None,
        backbone: str = "smollm2-135m-instruct",
        pool_size: int = 1000,
        num_val: int | None = None,
        max_test: int | None = None,
        batch_size: int = 16,
        seed: int = 0,
        padding_side: Literal["left", "right"] = "left",
        num_workers: int = 0,
        statistic_token: StatisticToken = "answer",
    ) -> None:
        """Read and check the file (this signature is the YAML/CLI schema).

        Args:
            path: A ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a Hugging Face
                dataset name or saved folder (needs ``pip install datasets``).
            columns: The file's column of a field whose column has another name, e.g.
                ``{question: query, label: answer_index}``; ``choices`` may name one column
                per choice, ``{choices: [A, B, C, D]}``.
            prompt_template: The prompt as a ``str.format`` pattern of the row's columns and
                ``{question}`` / ``{context}``, e.g. ``"Question: {question}\\nAnswer:"``;
                ``null``: the question, the context, or ``"{context}\\n{question}"``.
            choice_template: How a choice (stripped) follows the prompt; ``" {choice}"`` puts
                the separating space.
            split: The split of a Hugging Face dataset (ignored for files).
            subset: The configuration name of a Hugging Face dataset (ignored for files).
            backbone: Name or path of the model whose tokenizer is used (linked to
                ``model.backbone`` on the command line).
            pool_size: At most this many items form the contrastive pool; the pool is also
                capped at half of the items left after the validation set.
            num_val: Size of the validation set (for the search); ``null``: 10% of the items
                (at least 1).
            max_test: Cap on the test set; ``null``: every remaining item.
            batch_size: Pairs or items per batch in every dataloader.
            seed: Seed of the split and of the wrong answers of the contrastive pairs.
            padding_side: Side on which the contrastive pair batches are padded.
            num_workers: DataLoader worker processes.
            statistic_token: Where the statistic of each contrastive text is read: ``answer``
                (the last token where the positive and the negative differ, e.g. not a final
                ``"."`` both choices end with) or ``last`` (each text's last token).
        """
        name = type(self).__name__
        source, records = read_records(path, split, subset)
        fields = Columns(source, CHOICE_FIELDS, columns, name)
        items = [self._item(fields, r, prompt_template, choice_template) for r in records]
        if num_val is not None and num_val < 0:
            raise ConfigError(f"{name}: num_val must be >= 0 or null, got {num_val}.")
        super().__init__(
            task=source_name(path),  # type: ignore[arg-type]
            backbone=backbone,
            pool_size=pool_size,
            num_val=num_val if num_val is not None else max(1, len(items) // 10),
            max_test=max_test,
            batch_size=batch_size,
            seed=seed,
            padding_side=padding_side,
            num_workers=num_workers,
            statistic_token=statistic_token,
        )
        self.path = path
        self.source = source
        self.columns = columns
        self.prompt_template = prompt_template
        self.choice_template = choice_template
        self._file_items = items
        self.save_hyperparameters(ignore=inherited_hparams(self))  # this signature only

    @staticmethod
    def _item(
        fields: Columns, record: Record, prompt_template: str | None, choice_template: str
    ) -> ChoiceItem:
        question = fields.optional_text(record, "question")
        context = fields.optional_text(record, "context")
        if question is None and context is None and prompt_template is None:
            raise fields.error(
                record,
                f"has no prompt: the column {fields.column('question')!r} (the question) and "
                f"the column {fields.column('context')!r} (a passage) are both missing or "
                f"empty; the row has the columns {sorted(record.values)}. Rename with columns: "
                "{question: <column>}, or write the prompt with prompt_template.",
            )
        if prompt_template is None:
            prompt = "\n".join(t for t in (context, question) if t is not None)
        else:
            values = {k: v for k, v in record.values.items() if isinstance(k, str)}
            values.update(question=question or "", context=context or "")
            prompt = fields.format(record, prompt_template, "prompt_template", **values)
        choices = [
            fields.format(record, choice_template, "choice_template", choice=c)
            for c in _choices(fields, record)
        ]
        return ChoiceItem(prompt, tuple(choices), _label(fields, record, len(choices)))

    @property
    def task_file(self) -> Path:
        """The file (or dataset) read."""
        return Path(self.path)

    def prepare_data(self) -> None:
        """Nothing to fetch: the file was read when the data module was built."""

    def load_items(self) -> list[ChoiceItem]:
        """The file's items in file order (read when the data module was built)."""
        return list(self._file_items)
