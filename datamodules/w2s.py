"""The items of one MWE behaviour for W2S: :class:`W2SDataModule`.

W2S needs, for one behaviour, the base prompts split into train / val / test and the test split
of each OOD prompt variant (``sys_pos``, ``sys_neg``, ``user_pos``, ``user_neg``, the same items
under another system or user message).  This data module only reads and splits them; it runs no
model.  Everything that needs the backbone (steering vectors, the layer sweep, labels, prompt
embeddings) is the W2S method's (:class:`interventions.methods.w2s.W2SModule` computes it once
at setup from :attr:`W2SDataModule.items`).

Batches are item indices, ``{"index": LongTensor[B]}``, into the item set of the loader
(``train``, ``val``, then one test loader per name in :attr:`test_names`): the module looks up
what it computed for those items.  Indices shard across processes like any map-style dataset.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.base import ContrastiveCollator, ContrastiveExample
from datamodules.mwe import VARIANTS, MWEDataModule

__all__ = ["W2SDataModule"]


class W2SDataModule(LightningDataModule):
    """Base train / val / test items of one MWE behaviour and the test items of OOD variants.

    Args:
        behavior: MWE/CAA behaviour file name (see :class:`datamodules.mwe.MWEDataModule`).
        backbone: model name or path whose tokenizer formats the prompts (linked to
            ``model.backbone``).
        ood_variants: prompt variants evaluated as extra test sets (the predictor is trained on
            ``base`` only).
        max_examples: cap on the behaviour's items (``None``: all).
        train_fraction: fraction of items for training.
        val_fraction: fraction of items for validation (test = the rest).
        batch_size: W2S training batch size (paper: 128).
        seed: seed of the split and of the training shuffle.
        data_dir: data folder (default ``../shared/data``).
    """

    def __init__(
        self,
        behavior: str = "corrigible-neutral-HHH",
        backbone: str = "smollm2-135m-instruct",
        ood_variants: tuple[str, ...] = ("sys_pos", "sys_neg", "user_pos", "user_neg"),
        max_examples: int | None = None,
        train_fraction: float = 0.4,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        seed: int = 0,
        data_dir: str | None = None,
    ) -> None:
        super().__init__()
        for v in ood_variants:
            if v not in VARIANTS or v == "base":
                raise ValueError(
                    f"Unknown OOD variant {v!r}; choose from {[x for x in VARIANTS if x != 'base']}."
                )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.save_hyperparameters()
        self.behavior = behavior
        self.backbone = backbone
        self.ood_variants = list(ood_variants)
        self.max_examples = max_examples
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed
        self.data_dir = data_dir
        self._items: dict[str, list[ContrastiveExample]] | None = None
        self._base: MWEDataModule | None = None

    @property
    def test_names(self) -> list[str]:
        """Names of the test sets: ``"base"`` then the OOD variants."""
        return ["base", *self.ood_variants]

    @property
    def items(self) -> dict[str, list[ContrastiveExample]]:
        """``train``, ``val``, ``test/base`` and ``test/<variant>`` item lists."""
        if self._items is None:
            self.setup()
        assert self._items is not None
        return self._items

    @property
    def collator(self) -> ContrastiveCollator:
        """Tokenizes items into contrastive batches (for the method's passes over them)."""
        if self._base is None:
            self.setup()
        assert self._base is not None
        return self._base.collator

    @property
    def tokenizer(self) -> Any:
        return self.collator.tokenizer

    def cache_tags(self) -> dict[str, Any]:
        """What identifies these items in a sweep cache key (besides variant, split, method)."""
        return dict(
            behavior=self.behavior,
            seed=self.seed,
            max_examples=self.max_examples,
            fractions=[self.train_fraction, self.val_fraction],
        )

    def _mwe(self, variant: str) -> MWEDataModule:
        dm = MWEDataModule(
            behavior=self.behavior,
            variant=variant,
            train_fraction=self.train_fraction,
            val_fraction=self.val_fraction,
            max_examples=self.max_examples,
            backbone=self.backbone,
            seed=self.seed,
            data_dir=self.data_dir,
        )
        dm.setup()
        return dm

    def setup(self, stage: str | None = None) -> None:
        """Read and split the items (only the first call does work)."""
        if self._items is not None:
            return
        base = self._mwe("base")
        items = {
            "train": base.train_examples,
            "val": base.val_examples,
            "test/base": base.test_examples,
        }
        if not items["train"]:
            raise ValueError(f"W2S: the training split of {self.behavior!r} is empty.")
        for variant in self.ood_variants:
            items[f"test/{variant}"] = self._mwe(variant).test_examples
        self._base, self._items = base, items

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        rows = [{"index": i} for i in range(len(self.items[name]))]
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(rows, batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(f"test/{name}", shuffle=False) for name in self.test_names]
