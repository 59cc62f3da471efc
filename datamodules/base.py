"""Shared mechanics of the contrastive (correct vs wrong answer token) datamodules.

A task is a list of :class:`ContrastiveExample`: a prompt and two competing single-token answers
(``correct`` and ``wrong``, each with its leading space, e.g. ``" Mary"``), optionally with a
``corrupted_prompt`` of the same token length for patching-style methods. A subclass of
:class:`ContrastiveDataModule` only writes :meth:`ContrastiveDataModule.build_examples`; the base
class validates the answers, keeps the prompts of one token length (``fixed_length``), makes
deterministic seeded train/val/test splits and serves padded batches
(:class:`interventions.core.batch.ContrastiveBatch`, made by its ``ContrastiveCollator``).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules.sources import data_folders, find_data_file, shared_data_dir
from interventions.core.backbone import load_tokenizer
from interventions.core.batch import ContrastiveCollator, ContrastiveExample
from interventions.core.errors import ConfigError

__all__ = [
    "ContrastiveCollator",
    "ContrastiveDataModule",
    "ContrastiveExample",
    "default_data_dir",
    "find_data_file",
]


def default_data_dir() -> Path:
    """``../shared/data`` next to the repository checkout: the last folder of the lookup order
    (:func:`datamodules.sources.data_folders`)."""
    return shared_data_dir()


class ContrastiveDataModule(LightningDataModule):
    """Base datamodule for tasks of prompts with a correct and a wrong single-token answer.

    Subclasses implement :meth:`build_examples`. :meth:`setup` then (once):

    1. builds the examples and checks every answer (with its leading space) is exactly one token
       of the backbone's tokenizer, that ``correct != wrong`` and that a corrupted prompt has the
       same token length as its clean prompt;
    2. with ``fixed_length``, keeps only the prompts whose token length is the most common one
       (position-tied interventions need one length) and reports how many were dropped;
    3. makes deterministic train/val/test splits from a permutation seeded by ``seed``, of the
       sizes given by :meth:`split_sizes` (by default ``num_train``/``num_val``/``num_test``).

    Subclasses may read ``num_train + num_val + num_test`` (:attr:`num_requested`) to decide how
    many examples to generate.
    """

    def __init__(
        self,
        backbone: str = "smollm2-135m-instruct",
        batch_size: int = 32,
        num_train: int = 200,
        num_val: int = 50,
        num_test: int = 100,
        seed: int = 0,
        fixed_length: bool = True,
        padding_side: Literal["left", "right"] = "left",
        data_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        """Configure the datamodule (this signature is the YAML/CLI schema).

        Args:
            backbone: Name or path of the model whose tokenizer is used (passed to
                ``interventions.core.backbone.load_tokenizer``).
            batch_size: Examples per batch in every dataloader.
            num_train: Number of training examples.
            num_val: Number of validation examples.
            num_test: Number of test examples.
            seed: Seed of the example generation and of the train/val/test split.
            fixed_length: Keep only prompts of the most common token length, so that
                position-tied interventions apply to every prompt.
            padding_side: Side on which batches are padded.
            data_dir: Folder holding the task data; when given, the only folder searched.
                Default: each file is looked up in ``$LEARNED_INTERVENTIONS_DATA``, the user
                cache (where ``python -m interventions data fetch`` writes), then
                ``../shared/data`` next to the checkout (:mod:`datamodules.sources`).
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.save_hyperparameters()
        self.backbone = backbone
        self.batch_size = batch_size
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test
        self.seed = seed
        self.fixed_length = fixed_length
        self.padding_side = padding_side
        self.data_dir = data_dir
        self.num_workers = num_workers

        self._tokenizer: Any | None = None
        self._collator: ContrastiveCollator | None = None
        self._splits: dict[str, list[ContrastiveExample]] | None = None
        self._prompt_length: int | None = None
        self._num_available: int = 0

    # ------------------------------------------------------------------ to implement
    def build_examples(self) -> list[ContrastiveExample]:
        """Return the pool of candidate examples (before length filtering and splitting)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_examples()")

    def split_sizes(self, available: int) -> tuple[int, int, int]:
        """Sizes ``(train, val, test)`` of the splits, given the number of usable examples.

        The default is the fixed ``(num_train, num_val, num_test)``; subclasses may override it
        (e.g. to split by fractions of ``available``). :meth:`setup` raises a ``ValueError`` when
        the sizes sum to more than ``available``.

        Args:
            available: Number of usable examples after validation and length filtering.
        """
        return self.num_train, self.num_val, self.num_test

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def num_requested(self) -> int:
        """``num_train + num_val + num_test``."""
        return self.num_train + self.num_val + self.num_test

    @property
    def resolved_data_dir(self) -> Path:
        """``data_dir`` if given, else the first existing folder of the lookup order (else the
        last one, ``../shared/data``); files are looked up one by one (:meth:`data_file`)."""
        folders = data_folders(self.data_dir)
        return next((f.path for f in folders if f.path.is_dir()), folders[-1].path)

    def data_file(self, relative: str) -> Path:
        """Path of a task file: ``data_dir / relative`` when ``data_dir`` is given, else the
        first folder of the lookup order that has it.

        Raises:
            DataFileNotFoundError: (a ``FileNotFoundError``) no searched folder has it; the
                one-line message names the folders and the command that fetches it.
        """
        return find_data_file(relative, self.data_dir, who=f"{type(self).__name__}: ")

    def is_single_token(self, text: str) -> bool:
        """Whether ``text`` (with its leading space, if any) is exactly one token."""
        return len(self.tokenizer.encode(text, add_special_tokens=False)) == 1

    def token_length(self, text: str) -> int:
        """Number of tokens of a prompt, counted exactly as in the batches."""
        return len(self.tokenizer(text)["input_ids"])

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token lengths of many prompts at once (as :meth:`token_length`)."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts)["input_ids"]]

    # ------------------------------------------------------------------ public API
    @property
    def tokenizer(self) -> Any:
        """The backbone's tokenizer (loaded on first use, padded on ``padding_side``)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone, padding_side=self.padding_side)
        return self._tokenizer

    @property
    def collator(self) -> ContrastiveCollator:
        """The collate function used by every dataloader."""
        if self._collator is None:
            self._collator = ContrastiveCollator(self.tokenizer)
        return self._collator

    @property
    def prompt_length(self) -> int | None:
        """The token length shared by all available prompts, or ``None`` when lengths vary."""
        self._ensure_setup()
        return self._prompt_length

    @property
    def example_prompt(self) -> str:
        """The first training prompt (e.g. for the tick labels of a heatmap)."""
        splits = self._ensure_setup()
        for name in ("train", "val", "test"):
            if splits[name]:
                return splits[name][0].prompt
        raise RuntimeError(f"{type(self).__name__} has no examples (all split sizes are 0)")

    @property
    def num_available(self) -> int:
        """Number of usable examples after validation and length filtering."""
        self._ensure_setup()
        return self._num_available

    @property
    def train_examples(self) -> list[ContrastiveExample]:
        """The training split."""
        return list(self._ensure_setup()["train"])

    @property
    def val_examples(self) -> list[ContrastiveExample]:
        """The validation split."""
        return list(self._ensure_setup()["val"])

    @property
    def test_examples(self) -> list[ContrastiveExample]:
        """The test split."""
        return list(self._ensure_setup()["test"])

    def setup(self, stage: str | None = None) -> None:
        """Build, validate, filter and split the examples (only the first call does work).

        Raises:
            ConfigError: :meth:`build_examples` returned no examples, or ``stage`` is ``"fit"``
                and the training split is empty (e.g. ``num_train=0``, which only suits
                ``validate`` / ``test``).
        """
        if self._splits is None:
            self._build_splits()
        if stage == "fit":
            self._check_train_split()

    def _build_splits(self) -> None:
        name = type(self).__name__
        examples = self.build_examples()
        if not examples:
            raise ConfigError(
                f"{name}.build_examples() returned no examples, so there is nothing to split "
                f"into train/val/test. Check the task data it reads (looked up in "
                f"{', '.join(str(f.path) for f in data_folders(self.data_dir))}) and its filters; a subclass must return at least one "
                "ContrastiveExample."
            )
        self._validate(examples)
        lengths = self.token_lengths([ex.prompt for ex in examples])

        if self.fixed_length and examples:
            counts = Counter(lengths)
            # most common length; ties go to the shorter length (deterministic)
            keep_len = max(counts, key=lambda n: (counts[n], -n))
            kept = [ex for ex, n in zip(examples, lengths) if n == keep_len]
            dropped = {n: c for n, c in sorted(counts.items()) if n != keep_len}
            rank_zero_info(
                f"{name}: fixed_length kept {len(kept)} of {len(examples)} examples with prompts "
                f"of {keep_len} tokens; dropped {len(examples) - len(kept)} "
                f"(other lengths: {dropped or 'none'})"
            )
            examples, lengths = kept, [keep_len] * len(kept)

        self._num_available = len(examples)
        num_train, num_val, num_test = self.split_sizes(len(examples))
        total = num_train + num_val + num_test
        if min(num_train, num_val, num_test) < 0:
            raise ValueError(
                f"{name}: split_sizes() returned a negative size "
                f"({num_train}, {num_val}, {num_test})"
            )
        if total > len(examples):
            raise ValueError(
                f"{name}: requested num_train={num_train} + num_val={num_val} + "
                f"num_test={num_test} = {total} examples, but only "
                f"{len(examples)} are available after filtering"
                f"{' (fixed_length=True)' if self.fixed_length else ''}. "
                f"Lower the split sizes so they sum to at most {len(examples)}."
            )

        order = list(range(len(examples)))
        random.Random(f"split-{self.seed}").shuffle(order)
        bounds = {
            "train": (0, num_train),
            "val": (num_train, num_train + num_val),
            "test": (num_train + num_val, total),
        }
        self._splits = {
            split: [examples[i] for i in order[lo:hi]] for split, (lo, hi) in bounds.items()
        }
        distinct = set(lengths)  # over every available example, not only the ones used
        self._prompt_length = distinct.pop() if len(distinct) == 1 else None
        rank_zero_info(
            f"{name}: {len(examples)} examples available; using train={num_train}, "
            f"val={num_val}, test={num_test}; prompt length "
            f"{self._prompt_length if self._prompt_length is not None else 'varies'}"
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the shuffle order is seeded by ``seed``); a clear
        :class:`~interventions.core.errors.ConfigError` when the training split is empty."""
        self._check_train_split()
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader("train", shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in split order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in split order."""
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------------ internals
    def _check_train_split(self) -> None:
        """Refuse to fit on an empty training split, naming what to change."""
        if self._ensure_setup()["train"]:
            return
        name = type(self).__name__
        if type(self).split_sizes is ContrastiveDataModule.split_sizes:
            fix = (
                f"num_train={self.num_train} leaves no training examples: set num_train >= 1 "
                "(YAML: data.init_args.num_train, command line: --data.num_train N)"
            )
        else:
            fix = (
                f"{name}.split_sizes() gave 0 training examples of {self._num_available} "
                "available: raise its training share (e.g. train_fraction) or give it more data"
            )
        raise ConfigError(
            f"{name} has an empty training split, so there is nothing to fit on: {fix}. "
            "An empty training split only suits validate / test."
        )

    def _ensure_setup(self) -> dict[str, list[ContrastiveExample]]:
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    def _loader(
        self, split: str, shuffle: bool, generator: torch.Generator | None = None
    ) -> DataLoader:
        return DataLoader(
            self._ensure_setup()[split],  # a list is a map-style dataset
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=self.collator,
            num_workers=self.num_workers,
        )

    def _validate(self, examples: list[ContrastiveExample]) -> None:
        """Check single-token answers, distinct answers and corrupted prompt lengths."""
        name = type(self).__name__
        tok = self.tokenizer
        with_corrupted = [ex.corrupted_prompt is not None for ex in examples]
        if any(with_corrupted) and not all(with_corrupted):
            raise ValueError(
                f"{name}: either every example has a corrupted_prompt or none has "
                f"({sum(with_corrupted)} of {len(examples)} have one)"
            )
        answers = {a for ex in examples for a in (ex.correct, ex.wrong)}
        pieces = {
            a: tok.convert_ids_to_tokens(tok.encode(a, add_special_tokens=False)) for a in answers
        }
        for i, ex in enumerate(examples):
            for field in ("correct", "wrong"):
                answer = getattr(ex, field)
                if len(pieces[answer]) != 1:
                    raise ValueError(
                        f"{name}: example {i} ({ex.prompt!r}) has a {field} answer {answer!r} of "
                        f"{len(pieces[answer])} tokens {pieces[answer]}; every answer must be "
                        f"exactly one token (with its leading space) for the tokenizer of "
                        f"{self.backbone!r}. Filter such examples out in build_examples()."
                    )
            if pieces[ex.correct] == pieces[ex.wrong]:
                raise ValueError(
                    f"{name}: example {i} ({ex.prompt!r}) has the same token "
                    f"{pieces[ex.correct][0]!r} as correct and wrong answer"
                )
        if examples and all(with_corrupted):
            clean = self.token_lengths([ex.prompt for ex in examples])
            corrupt = self.token_lengths([ex.corrupted_prompt or "" for ex in examples])
            for i, (ex, n_clean, n_corrupt) in enumerate(zip(examples, clean, corrupt)):
                if n_clean != n_corrupt:
                    raise ValueError(
                        f"{name}: example {i} has a corrupted prompt of {n_corrupt} tokens but a "
                        f"clean prompt of {n_clean}; they must be equal for patching. "
                        f"clean={ex.prompt!r} corrupted={ex.corrupted_prompt!r}"
                    )
