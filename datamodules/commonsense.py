"""The commonsense multiple-choice data module: :class:`CommonsenseDataModule` and its collators
(:class:`ChoiceCollator` for scoring items, :class:`PairCollator` for contrastive pairs).

The tasks, their files, prompt templates and readers are in :mod:`datamodules.commonsense_items`.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.commonsense_items import (
    COPA_CONNECTIVES,
    INSTRUCTION_TEMPLATES,
    TASK_FILES,
    TASK_TEMPLATES,
    TASKS,
    TEMPLATE_NAMES,
    TEMPLATES,
    ChoiceItem,
    ContrastivePair,
    Task,
    TaskTemplate,
    TemplateName,
    check_task,
    check_template,
    contrastive_pairs,
    download_task_file,
    load_task_items,
    longest_first,
)
from datamodules.fetch import fetch_file
from datamodules.sources import (
    FILES,
    DataFileNotFoundError,
    data_folders,
    default_fetch_dir,
    find_data_file,
)
from interventions.core.backbone import load_tokenizer

__all__ = [
    "COPA_CONNECTIVES",
    "INSTRUCTION_TEMPLATES",
    "STATISTIC_TOKENS",
    "TASKS",
    "TASK_FILES",
    "TASK_TEMPLATES",
    "TEMPLATES",
    "TEMPLATE_NAMES",
    "ChoiceCollator",
    "ChoiceItem",
    "CommonsenseDataModule",
    "ContrastivePair",
    "PairCollator",
    "StatisticToken",
    "TaskTemplate",
    "answer_read_offsets",
    "contrastive_pairs",
    "download_task_file",
    "load_task_items",
]


# ---------------------------------------------------------------------------- collators
def _pad(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[Tensor, Tensor]:
    """``(ids, mask)``, each ``[len(rows), longest row]``, padded on ``side``."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, cols] = torch.tensor(list(row), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def _check_side(name: str, side: str) -> None:
    if side not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")


StatisticToken = Literal["answer", "last"]
"""Where the statistic of a contrastive text is read (see :mod:`datamodules.commonsense_items`)."""

STATISTIC_TOKENS: tuple[str, ...] = ("answer", "last")
"""Every value of ``statistic_token``."""


def _check_statistic_token(value: str) -> None:
    if value not in STATISTIC_TOKENS:
        raise ValueError(
            f"statistic_token must be 'answer' (the last token where the positive and the "
            f"negative differ) or 'last' (each text's last token), got {value!r}"
        )


def answer_read_offsets(positive: Sequence[int], negative: Sequence[int]) -> int:
    """How many tokens after the answer token both texts have: the length of the longest token
    suffix they share, capped so that at least one token of each text comes before it.

    ``positive`` and ``negative`` are the token ids of the two texts of a pair; the answer token
    of each is its last token before that shared suffix (0: the texts differ in their last
    token, which is then the answer token).
    """
    cap = min(len(positive), len(negative)) - 1
    shared = 0
    while shared < cap and positive[-1 - shared] == negative[-1 - shared]:
        shared += 1
    return max(shared, 0)


class PairCollator:
    """Tokenizes a list of :class:`ContrastivePair` into padded positive and negative batches,
    with the token each text's statistic is read at (``pos_read_offset`` / ``neg_read_offset``:
    real tokens after it, 0 = the last one; see ``statistic_token``)."""

    def __init__(
        self,
        tokenizer: Any,
        padding_side: Literal["left", "right"] = "left",
        statistic_token: StatisticToken = "answer",
    ) -> None:
        """Wrap a tokenizer.

        Args:
            tokenizer: A Hugging Face tokenizer with a pad token.
            padding_side: Side on which the texts are padded.
            statistic_token: ``"answer"``: read each text at its answer token, the last token
                before the token suffix the positive and the negative share
                (:func:`answer_read_offsets`); ``"last"``: at its last token.
        """
        _check_side("padding_side", padding_side)
        _check_statistic_token(statistic_token)
        self.tokenizer = tokenizer
        self.padding_side = padding_side
        self.statistic_token = statistic_token

    def __call__(self, pairs: list[ContrastivePair]) -> dict[str, Tensor]:
        """Pad the positives and the negatives (see the module docstring for the keys)."""
        batch: dict[str, Tensor] = {}
        encoded = {
            "pos": self.tokenizer([p.positive for p in pairs])["input_ids"],
            "neg": self.tokenizer([p.negative for p in pairs])["input_ids"],
        }
        for key, rows in encoded.items():
            ids, mask = _pad(rows, self.tokenizer.pad_token_id, self.padding_side)
            batch[f"{key}_input_ids"] = ids  # [batch, seq]
            batch[f"{key}_attention_mask"] = mask  # [batch, seq]
        if self.statistic_token == "answer":
            offsets = [answer_read_offsets(p, n) for p, n in zip(*encoded.values(), strict=True)]
        else:
            offsets = [0] * len(pairs)
        for key in encoded:  # the same count of shared tokens follows both answer tokens
            batch[f"{key}_read_offset"] = torch.tensor(offsets, dtype=torch.long)  # [batch]
        return batch


class ChoiceCollator:
    """Turns a list of :class:`ChoiceItem` into a multiple-choice batch (one row per choice).

    Prompts are always left padded (so the last column is every prompt's last token);
    continuations are padded on ``continuation_padding_side``. See the module docstring for the
    keys and for how the tokens at the prompt/answer boundary are split.
    """

    def __init__(
        self, tokenizer: Any, continuation_padding_side: Literal["left", "right"] = "right"
    ) -> None:
        """Wrap a tokenizer.

        Args:
            tokenizer: A Hugging Face tokenizer with a pad token.
            continuation_padding_side: Side on which the continuations are padded (the scoring
                in :mod:`interventions.evaluation.multiple_choice` accepts both).
        """
        _check_side("continuation_padding_side", continuation_padding_side)
        self.tokenizer = tokenizer
        self.continuation_padding_side = continuation_padding_side
        self.num_fallbacks = 0

    def encode(self, items: Sequence[ChoiceItem]) -> list[tuple[list[int], list[int]]]:
        """``(prompt tokens, continuation tokens)`` of every choice of every item, in row order."""
        prompts = [item.prompt_of(c) for item in items for c in range(item.num_choices)]
        choices = [choice for item in items for choice in item.choices]
        tok = self.tokenizer
        unique = list(dict.fromkeys(prompts))  # choices of one item usually share the prompt
        unique_ids = dict(zip(unique, tok(unique)["input_ids"]))
        prompt_ids = [unique_ids[p] for p in prompts]
        full_ids = tok([p + c for p, c in zip(prompts, choices)])["input_ids"]
        rows = []
        for prompt, choice, p_ids, f_ids in zip(prompts, choices, prompt_ids, full_ids):
            p_ids, f_ids = list(p_ids), list(f_ids)
            if len(f_ids) > len(p_ids) and f_ids[: len(p_ids)] == p_ids:
                rows.append((p_ids, f_ids[len(p_ids) :]))
                continue
            # the tokenizer merged text across the boundary: score the choice's own tokens
            if self.num_fallbacks == 0:
                warnings.warn(
                    f"ChoiceCollator: the tokens of prompt + choice do not start with the "
                    f"prompt's tokens (prompt ends {prompt[-20:]!r}, choice {choice!r}); the "
                    f"choice is tokenized alone. num_fallbacks counts such rows.",
                    stacklevel=2,
                )
            self.num_fallbacks += 1
            c_ids = list(tok.encode(choice, add_special_tokens=False))
            if not c_ids:
                raise ValueError(f"choice {choice!r} has no tokens")
            rows.append((p_ids, c_ids))
        return rows

    def __call__(self, items: list[ChoiceItem]) -> dict[str, Tensor]:
        """Tokenize and pad the items (see the module docstring for the keys)."""
        rows = self.encode(items)
        pad_id = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = _pad([p for p, _ in rows], pad_id, "left")
        cont_ids, cont_mask = _pad([c for _, c in rows], pad_id, self.continuation_padding_side)
        num_choices = torch.tensor([item.num_choices for item in items], dtype=torch.long)
        return {
            "prompt_ids": prompt_ids,  # [R, Tp]
            "prompt_mask": prompt_mask,  # [R, Tp]
            "continuation_ids": cont_ids,  # [R, Tc]
            "continuation_mask": cont_mask,  # [R, Tc]
            "item": torch.repeat_interleave(torch.arange(len(items)), num_choices),  # [R]
            "gold": torch.tensor([item.gold for item in items], dtype=torch.long),  # [B]
            "num_choices": num_choices,  # [B]
        }


# ---------------------------------------------------------------------------- datamodule
class CommonsenseDataModule(LightningDataModule):
    """BoolQ, COPA or WinoGrande: contrastive pairs for steering, multiple choice for evaluation.

    See the module docstring for the files, templates, splits and batch layouts.
    """

    def __init__(
        self,
        task: Task = "boolq",
        backbone: str = "smollm2-135m-instruct",
        pool_size: int = 1000,
        num_val: int = 100,
        max_test: int | None = None,
        batch_size: int = 16,
        seed: int = 0,
        data_dir: str | None = None,
        download: bool = False,
        padding_side: Literal["left", "right"] = "left",
        num_workers: int = 0,
        template: TemplateName = "cloze",
        statistic_token: StatisticToken = "answer",
    ) -> None:
        """Configure the datamodule (this signature is the YAML/CLI schema).

        Args:
            task: ``boolq``, ``copa`` or ``winogrande``.
            backbone: Name or path of the model whose tokenizer is used (passed to
                ``interventions.core.backbone.load_tokenizer``).
            pool_size: At most this many items form the contrastive pool (paper: 1000); the pool
                is also capped at half of the items left after the validation set.
            num_val: Size of the validation set (small, for hyperparameter search).
            max_test: Cap on the test set (quick runs); ``None`` uses every remaining item.
            batch_size: Pairs or items per batch in every dataloader.
            seed: Seed of the split and of the wrong answers of the contrastive pairs.
            data_dir: Folder holding ``boolq/``, ``copa/`` and ``winogrande/``; when given, the
                only folder searched. Default: the file is looked up in
                ``$LEARNED_INTERVENTIONS_DATA``, the user cache, then ``../shared/data`` next to
                the checkout (:mod:`datamodules.sources`).
            download: Download the task's file when no searched folder has it (needs internet
                access): into ``data_dir`` if given, else into ``$LEARNED_INTERVENTIONS_DATA`` or
                the user cache (as ``python -m interventions data fetch <task>`` does).
            padding_side: Side on which the contrastive pair batches are padded (multiple-choice
                batches pad prompts on the left and continuations on the right).
            num_workers: DataLoader worker processes.
            template: The prompt format: ``cloze`` (the answer continues the text, scored by
                its log-likelihood) or ``instruction`` (AUSteer's paper's format: an
                instruction with the options labelled, answered with a letter, ``" A"`` /
                ``" B"``, or ``" Yes"`` / ``" No"``; the letters are the choices); see
                :mod:`datamodules.commonsense_items`.
            statistic_token: Where the statistic of each contrastive text is read:
                ``answer`` (the last token where the positive and the negative differ: the
                answer, not a final ``"."`` both share) or ``last`` (each text's last token).
        """
        super().__init__()
        if type(self).load_items is CommonsenseDataModule.load_items:
            check_task(task)  # a subclass that reads its own items names its task itself
        check_template(template)
        _check_statistic_token(statistic_token)
        if pool_size < 1:
            raise ValueError(
                f"CommonsenseDataModule: the contrastive pool is empty: pool_size={pool_size}. "
                f"Pass pool_size >= 1 (the paper uses up to 1000 pairs)."
            )
        if num_val < 0:
            raise ValueError(f"num_val must be >= 0, got {num_val}")
        if max_test is not None and max_test < 1:
            raise ValueError(f"max_test must be >= 1 or None, got {max_test}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_side("padding_side", padding_side)
        self.save_hyperparameters()
        self.task = task
        self.backbone = backbone
        self.pool_size = pool_size
        self.num_val = num_val
        self.max_test = max_test
        self.batch_size = batch_size
        self.seed = seed
        self.data_dir = data_dir
        self.download = download
        self.padding_side = padding_side
        self.num_workers = num_workers
        self.template = template
        self.statistic_token = statistic_token

        self._tokenizer: Any | None = None
        self._splits: dict[str, list[ChoiceItem]] | None = None
        self._num_items = 0

    # ------------------------------------------------------------------ files
    @property
    def resolved_data_dir(self) -> Path:
        """The folder that has the task's file (the first of the lookup order; ``data_dir`` when
        given), else the folder a download writes to."""
        relative = TASK_FILES[self.task]
        for folder in data_folders(self.data_dir):
            if (folder.path / relative).is_file():
                return folder.path
        return self._download_dir

    @property
    def task_file(self) -> Path:
        """The task's data file: where the lookup finds it, else where ``download`` would write
        it (it may not exist yet)."""
        return self.resolved_data_dir / TASK_FILES[self.task]

    @property
    def _download_dir(self) -> Path:
        return (
            Path(self.data_dir).expanduser() if self.data_dir is not None else default_fetch_dir()
        )

    def prepare_data(self) -> None:
        """Download the task's file if it is missing and ``download`` is on; else check it."""
        relative = TASK_FILES[self.task]
        try:
            find_data_file(relative, self.data_dir)
            return
        except DataFileNotFoundError as err:
            if not self.download:
                raise DataFileNotFoundError(
                    f"CommonsenseDataModule: task {self.task!r}: {err} The expected files are "
                    f"{', '.join(TASK_FILES.values())}; --data.download true downloads a "
                    "missing one (needs internet access)."
                ) from None
        path = self._download_dir / relative
        rank_zero_info(f"CommonsenseDataModule: downloading {self.task} to {path}")
        fetched = fetch_file(FILES[relative], self._download_dir)
        if fetched.note:
            rank_zero_warn(fetched.note)

    # ------------------------------------------------------------------ splits
    def setup(self, stage: str | None = None) -> None:
        """Read the items and split them (only the first call does work)."""
        if self._splits is not None:
            return
        self.prepare_data()
        items = self.load_items()
        n = len(items)
        name = f"{type(self).__name__} ({self.task})"
        if self.num_val >= n:
            raise ValueError(
                f"{name}: num_val={self.num_val} is too large: the task has {n} items and the "
                f"contrastive pool and the test set need the rest. Use num_val <= {n - 2}."
            )
        num_pool = min(self.pool_size, (n - self.num_val) // 2)
        if num_pool < 1:
            raise ValueError(
                f"{name}: the contrastive pool is empty: {n} items with num_val={self.num_val} "
                f"leave {n - self.num_val}, and the pool takes at most half of them. Lower "
                f"num_val."
            )
        order = list(range(n))
        random.Random(f"split-{self.seed}").shuffle(order)
        shuffled = [items[i] for i in order]
        test = shuffled[num_pool + self.num_val :]
        if self.max_test is not None:
            test = test[: self.max_test]
        self._splits = {
            "pool": shuffled[:num_pool],
            "val": shuffled[num_pool : num_pool + self.num_val],
            "test": test,
        }
        self._num_items = n
        rank_zero_info(f"{name}: {n} items; pool={num_pool}, val={self.num_val}, test={len(test)}")

    def load_items(self) -> list[ChoiceItem]:
        """All items of the task, in file order (a subclass may read them from elsewhere)."""
        return load_task_items(self.task, self.data_dir, self.template)

    def _ensure_setup(self) -> dict[str, list[ChoiceItem]]:
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    @property
    def num_items(self) -> int:
        """Number of items of the task (before splitting)."""
        self._ensure_setup()
        return self._num_items

    @property
    def pool_items(self) -> list[ChoiceItem]:
        """The contrastive pool."""
        return list(self._ensure_setup()["pool"])

    @property
    def val_items(self) -> list[ChoiceItem]:
        """The validation set."""
        return list(self._ensure_setup()["val"])

    @property
    def test_items(self) -> list[ChoiceItem]:
        """The test set."""
        return list(self._ensure_setup()["test"])

    def contrastive_pairs(self) -> list[ContrastivePair]:
        """The pool's contrastive pairs (see :func:`contrastive_pairs`), in pool order."""
        return contrastive_pairs(self.pool_items, seed=self.seed)

    # ------------------------------------------------------------------ tokenizer, loaders
    @property
    def tokenizer(self) -> Any:
        """The backbone's tokenizer (loaded on first use, padded on ``padding_side``)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone, padding_side=self.padding_side)
        return self._tokenizer

    @property
    def pair_collator(self) -> PairCollator:
        """The collate function of the contrastive pair batches."""
        return PairCollator(self.tokenizer, self.padding_side, self.statistic_token)

    @property
    def choice_collator(self) -> ChoiceCollator:
        """The collate function of the multiple-choice batches."""
        return ChoiceCollator(self.tokenizer)

    def _loader(self, data: list[Any], collate: Any) -> DataLoader:
        return DataLoader(
            data,  # a list is a map-style dataset
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Contrastive pair batches, longest first (:func:`longest_first`): the statistics they
        feed are sums over pairs, so the order only decides how little padding each batch has."""
        return self._loader(longest_first(self.contrastive_pairs()), self.pair_collator)

    def val_dataloader(self) -> DataLoader:
        """Multiple-choice batches of the validation set, longest first (accuracy does not
        depend on the order; similar lengths in a batch waste little compute on padding)."""
        return self._loader(longest_first(self.val_items), self.choice_collator)

    def test_dataloader(self) -> DataLoader:
        """Multiple-choice batches of the test set, longest first (see :meth:`val_dataloader`)."""
        return self._loader(longest_first(self.test_items), self.choice_collator)
