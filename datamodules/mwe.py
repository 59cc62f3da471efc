"""The MWE / CAA behaviour data module: :class:`MWEDataModule` (A/B items in the backbone's chat
format, prompt variants, contrastive pairs for attribution).

The behaviour files, descriptions, item readers and the prompt format are in
:mod:`datamodules.mwe_items`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info

from datamodules.base import ContrastiveDataModule, ContrastiveExample
from datamodules.mwe_items import (
    ANSWER_PREFIX,
    BASE_SYSTEM_MESSAGE,
    BEHAVIOR_DESCRIPTIONS,
    CAA_FILES,
    CONTRAST_DESCRIPTIONS,
    VARIANTS,
    W2S_BEHAVIORS,
    ABItem,
    as_sentence,
    available_behaviors,
    load_ab_items,
    render_prompt,
    resolve_behavior,
    resolve_source,
    tokenizer_adds_bos,
)

__all__ = [
    "ANSWER_PREFIX",
    "BASE_SYSTEM_MESSAGE",
    "BEHAVIOR_DESCRIPTIONS",
    "CAA_FILES",
    "CONTRAST_DESCRIPTIONS",
    "VARIANTS",
    "W2S_BEHAVIORS",
    "ABItem",
    "MWEDataModule",
    "available_behaviors",
    "load_ab_items",
    "render_prompt",
    "resolve_behavior",
    "tokenizer_adds_bos",
]


# ---------------------------------------------------------------------------- datamodule
class MWEDataModule(ContrastiveDataModule):
    """A/B behaviour items (MWE / CAA) in the backbone's chat format (see the module docstring).

    After :meth:`setup`, :attr:`behavior_file` is the file (or CAA folder) read and
    :attr:`num_skipped` the number of items skipped for having more than two options.
    """

    def __init__(
        self,
        behavior: str = "corrigible-neutral-HHH",
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
        data_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        """Configure the datamodule (this signature is the YAML/CLI schema).

        Args:
            behavior: Behaviour name, e.g. ``corrigible-neutral-HHH`` (file name without
                ``.jsonl``), looked up in persona, lm_generated, human_generated, then caa; or
                qualified as ``persona/<name>``, ``lm_generated/<name>``,
                ``human_generated/<name>`` or ``caa/<name>`` (e.g. ``caa/sycophancy``).
            variant: Prompt variant: ``base``; ``sys_pos`` / ``sys_neg`` (the positive /
                negative description replaces the system message); ``user_pos`` / ``user_neg``
                (the description precedes the question in the user message).
            contrast: Attribution pairs: ``"system"`` makes each example's prompt the item under
                the positive description as system message and its ``corrupted_prompt`` the same
                item under the negative one (``"user"``: the description precedes the question
                instead); the two descriptions must have the same token length. ``"none"``: no
                corrupted prompts. A contrast needs ``variant="base"``.
            target: Which answer is ``correct``: the behaviour-matching letter, or
                ``not_matching`` for the opposite (e.g. the jailbreak direction of ``refusal``).
            positive_description: Overrides the built-in positive description (required for the
                ``*_pos`` variants of behaviours not in ``BEHAVIOR_DESCRIPTIONS``).
            negative_description: Overrides the built-in negative description (required for the
                ``*_neg`` variants of behaviours not in ``BEHAVIOR_DESCRIPTIONS``).
            train_fraction: Fraction of the items used for training (rounded down).
            val_fraction: Fraction used for validation (rounded down); the rest is the test split.
            max_examples: Cap on the number of items used (the first ones of the seeded shuffle),
                for quick runs; ``None`` uses all.
            deduplicate: Keep only the first item of each repeated question (some files repeat
                questions, e.g. lm_generated myopic-reward has 823 distinct of 1000), so that no
                question is in two splits.
            backbone: Name or path of the model whose tokenizer and chat template are used
                (passed to ``interventions.core.backbone.load_tokenizer``).
            batch_size: Examples per batch in every dataloader.
            seed: Seed of the train/val/test split (the same items for every variant).
            padding_side: Side on which batches are padded.
            data_dir: Folder holding ``mwe/`` and ``caa/``; when given, the only folder searched.
                Default: ``$LEARNED_INTERVENTIONS_DATA``, the user cache (filled by ``python -m
                interventions data fetch mwe`` / ``caa``), then ``../shared/data`` next to the
                checkout, the first that has the behaviour's file winning.
            num_workers: DataLoader worker processes.
        """
        super().__init__(
            backbone=backbone,
            batch_size=batch_size,
            num_train=0,
            num_val=0,
            num_test=0,
            seed=seed,
            fixed_length=False,
            padding_side=padding_side,
            data_dir=data_dir,
            num_workers=num_workers,
        )
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
        for name, value in (("train_fraction", train_fraction), ("val_fraction", val_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if train_fraction + val_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"train_fraction + val_fraction must be at most 1 (the test split is the rest), "
                f"got {train_fraction} + {val_fraction} = {train_fraction + val_fraction}"
            )
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
        for name, value in (
            ("positive_description", positive_description),
            ("negative_description", negative_description),
        ):
            if value is not None and not value.strip():
                raise ValueError(f"{name} must not be empty")
        if contrast not in ("none", "system", "user"):
            raise ValueError(f"contrast must be 'none', 'system' or 'user', got {contrast!r}")
        if contrast != "none" and variant != "base":
            raise ValueError(
                f"MWEDataModule: contrast={contrast!r} writes both descriptions itself, so it "
                f"needs variant='base', got variant={variant!r}."
            )
        if target not in ("matching", "not_matching"):
            raise ValueError(f"target must be 'matching' or 'not_matching', got {target!r}")
        self.behavior = behavior
        self.variant = variant
        self.contrast = contrast
        self.target = target
        self.positive_description = positive_description
        self.negative_description = negative_description
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.max_examples = max_examples
        self.deduplicate = deduplicate
        self.num_duplicates = 0
        self._system, self._user_prefix = self._variant_texts(variant)
        if contrast != "none":
            side = "sys" if contrast == "system" else "user"
            self._contrast_texts = (
                self._variant_texts(f"{side}_pos"),
                self._variant_texts(f"{side}_neg"),
            )
        self._behavior_file: Path | None = None
        self._num_skipped = 0

    # ------------------------------------------------------------------ configuration
    @property
    def descriptions(self) -> tuple[str | None, str | None]:
        """The (positive, negative) descriptions in use, each ``None`` if there is none."""
        name = self.behavior.rpartition("/")[2]
        builtin = BEHAVIOR_DESCRIPTIONS.get(name) or CONTRAST_DESCRIPTIONS.get(name, (None, None))
        positive = self.positive_description or builtin[0]
        negative = self.negative_description or builtin[1]
        return positive, negative

    def _variant_texts(self, variant: str) -> tuple[str, str]:
        """The system message and the user-message prefix ('' or description + blank line)."""
        if variant == "base":
            return BASE_SYSTEM_MESSAGE, ""
        side = "positive" if variant.endswith("_pos") else "negative"
        description = self.descriptions[0 if side == "positive" else 1]
        if description is None:
            raise ValueError(
                f"MWEDataModule: variant/contrast {variant!r} needs a {side} description, but "
                f"behavior {self.behavior!r} has no built-in one (BEHAVIOR_DESCRIPTIONS covers "
                f"{', '.join(W2S_BEHAVIORS)}; CONTRAST_DESCRIPTIONS covers "
                f"{', '.join(CONTRAST_DESCRIPTIONS)}). Pass --data.positive_description/"
                f"--data.negative_description (YAML: data.init_args.{side}_description)."
            )
        description = as_sentence(description)
        if variant.startswith("sys_"):
            return description, ""
        return BASE_SYSTEM_MESSAGE, f"{description}\n\n"

    def messages(self, question: str) -> tuple[str, str]:
        """``(system, user)`` message texts of a question for this datamodule's variant."""
        return self._system, self._user_prefix + question

    def format_prompt(self, question: str, adds_bos: bool | None = None) -> str:
        """The rendered prompt of a question (ends with ``"("``; see :func:`render_prompt`)."""
        system, user = self.messages(question)
        return render_prompt(self.tokenizer, system, user, adds_bos=adds_bos)

    def split_sizes(self, available: int) -> tuple[int, int, int]:
        """``floor`` of the fractions of ``n = min(available, max_examples)``; test = the rest."""
        n = available if self.max_examples is None else min(available, self.max_examples)
        # the epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 at 29
        train = min(n, math.floor(n * self.train_fraction + 1e-9))
        val = min(n - train, math.floor(n * self.val_fraction + 1e-9))
        return train, val, n - train - val

    # ------------------------------------------------------------------ results of setup
    @property
    def behavior_file(self) -> Path:
        """The behaviour's file (a folder for CAA), read by :meth:`setup`."""
        self._ensure_setup()
        assert self._behavior_file is not None
        return self._behavior_file

    @property
    def num_skipped(self) -> int:
        """Items of the file skipped for having more than two options."""
        self._ensure_setup()
        return self._num_skipped

    # ------------------------------------------------------------------ examples
    def load_items(self) -> tuple[list[ABItem], int, Path]:
        """``(items, skipped, file)``: the behaviour's A/B items in file order, the number
        skipped for having more than two options, and the file (or CAA folder) read."""
        kind, path = resolve_source(self.behavior, self.data_dir)
        items, skipped = load_ab_items(path, kind)
        return items, skipped, path

    def build_examples(self) -> list[ContrastiveExample]:
        """One example per usable item, in file order: rendered prompt, matching vs other letter."""
        items, skipped, path = self.load_items()
        self._behavior_file = path
        self._num_skipped = skipped
        if skipped:
            rank_zero_info(
                f"{type(self).__name__}: {self.behavior} ({path}): skipped {skipped} items with "
                f"more than two options"
            )
        if not items:
            raise ValueError(f"{type(self).__name__}: {path} has no usable items")
        if self.deduplicate:
            seen: set[str] = set()
            unique = []
            for item in items:
                if item.question not in seen:
                    seen.add(item.question)
                    unique.append(item)
            self.num_duplicates = len(items) - len(unique)
            if self.num_duplicates:
                rank_zero_info(
                    f"MWEDataModule: {self.behavior}: dropped {self.num_duplicates} repeated "
                    f"questions (deduplicate=True)"
                )
            items = unique
        adds_bos = tokenizer_adds_bos(self.tokenizer)
        examples = []
        for item in items:
            other = "B" if item.matching == "A" else "A"
            correct, wrong = (
                (item.matching, other) if self.target == "matching" else (other, item.matching)
            )
            if self.contrast == "none":
                prompt, corrupted = self.format_prompt(item.question, adds_bos=adds_bos), None
            else:
                (pos_sys, pos_user), (neg_sys, neg_user) = self._contrast_texts
                q = item.question
                prompt = render_prompt(self.tokenizer, pos_sys, pos_user + q, adds_bos=adds_bos)
                corrupted = render_prompt(self.tokenizer, neg_sys, neg_user + q, adds_bos=adds_bos)
            examples.append(ContrastiveExample(prompt, correct, wrong, corrupted))
        self._check_answer_tokenization(examples[0].prompt)
        if self.contrast != "none":
            self._check_contrast_lengths(examples[0])
        return examples

    def _check_contrast_lengths(self, example: ContrastiveExample) -> None:
        """The two descriptions must give prompts of one token length (checked on one item)."""
        n_pos = self.token_length(example.prompt)
        n_neg = self.token_length(example.corrupted_prompt or "")
        if n_pos != n_neg:
            positive, negative = self.descriptions
            raise ValueError(
                f"MWEDataModule: contrast={self.contrast!r} needs positive and negative "
                f"descriptions of the same token length, so that the two prompts of an item "
                f"align position by position; with the tokenizer of {self.backbone!r} the "
                f"prompts have {n_pos} and {n_neg} tokens (positive={positive!r}, "
                f"negative={negative!r}). Reword one of them (--data.positive_description / "
                f"--data.negative_description) until their token counts match."
            )

    def _check_answer_tokenization(self, prompt: str) -> None:
        """Check that ``prompt + letter`` tokenizes as ``prompt`` then the letter's one token."""
        tok = self.tokenizer
        prompt_ids = list(tok(prompt)["input_ids"])
        for letter in ("A", "B"):
            letter_ids = list(tok.encode(letter, add_special_tokens=False))
            joined = list(tok(prompt + letter)["input_ids"])
            if len(letter_ids) != 1 or joined != prompt_ids + letter_ids:
                tail = tok.convert_ids_to_tokens(joined[-3:])
                raise ValueError(
                    f"MWEDataModule: with the tokenizer of {self.backbone!r}, the answer letter "
                    f"{letter!r} is not one separate token after the prompt (the prompt ends "
                    f"with {ANSWER_PREFIX!r}; the tokenizer merges {ANSWER_PREFIX!r} with the "
                    f"letter or splits the letter: the prompt + letter ends with tokens {tail}, "
                    f"the letter alone is {tok.convert_ids_to_tokens(letter_ids)}). This "
                    f"backbone cannot be scored on the next token after the prompt."
                )
