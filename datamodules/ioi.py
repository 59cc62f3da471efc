"""Indirect Object Identification (IOI; Wang et al. 2023), generated from templates.

Prompts are generated with the seed from the BABA and ABBA templates of
``ioi/ioi_templates_names.json`` (under ``data_dir``). ``[A]`` is the indirect object IO (the
correct answer), ``[B]`` the subject S (named twice: S1, S2), ``[PLACE]`` and ``[OBJECT]`` are
filled from the lists in the same file. The prompt is the template without its final ``" [A]"``::

    template 0, BABA:  "Then, John and Mary went to the store. John gave a drink to"  -> " Mary"
    template 0, ABBA:  "Then, Mary and John went to the store. John gave a drink to"  -> " Mary"
    corrupted (ABC):   "Then, John and Mary went to the store. Lisa gave a drink to"

``correct = " " + IO`` and ``wrong = " " + S``. Only names whose ``" " + name`` is one token of
the backbone's tokenizer are used. The corrupted prompt replaces S2 by a third name C (not IO,
not S) with the same token count as S, so it has the same token length as the clean prompt.

Template choice and ``fixed_length``: names, places and objects are single tokens, so a
template's token length is the same for every filling and for both name orders. The default
(``templates=None`` with ``fixed_length=True``) therefore uses template 0 only: every prompt has
the same length and the same sentence shape, which is what position-tied edits (ActivScalar,
SteerVec) need, and the prompts mix BABA and ABBA orders so that the position of IO varies.
With ``fixed_length=False`` and ``templates=None`` all 15 templates are used and prompt lengths
vary (for DynScalar). An explicit ``templates`` list is used as given (with ``fixed_length``,
only the templates of the most common length survive the filter).
"""

from __future__ import annotations

import json
import random
from typing import Any, Literal

from datamodules.base import ContrastiveDataModule, ContrastiveExample

__all__ = ["IOIDataModule"]

IOI_FILE = "ioi/ioi_templates_names.json"


class IOIDataModule(ContrastiveDataModule):
    """IOI prompts with a correct indirect object and a wrong subject answer (see module doc)."""

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
        templates: list[int] | None = None,
    ) -> None:
        """Configure the datamodule (this signature is the YAML/CLI schema).

        Args:
            backbone: Name or path of the model whose tokenizer is used (passed to
                ``interventions.core.backbone.load_tokenizer``).
            batch_size: Examples per batch in every dataloader.
            num_train: Number of training examples.
            num_val: Number of validation examples.
            num_test: Number of test examples.
            seed: Seed of the prompt generation and of the train/val/test split.
            fixed_length: Keep only prompts of the most common token length, so that
                position-tied interventions apply to every prompt.
            padding_side: Side on which batches are padded.
            data_dir: Folder holding ``ioi/ioi_templates_names.json`` (default: ``../shared/data``
                next to the checkout).
            num_workers: DataLoader worker processes.
            templates: Indices (0-14) of the templates to use; each index gives one sentence in
                both its BABA and ABBA order. ``None``: template 0 when ``fixed_length`` is true,
                all templates otherwise.
        """
        super().__init__(
            backbone=backbone,
            batch_size=batch_size,
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
            seed=seed,
            fixed_length=fixed_length,
            padding_side=padding_side,
            data_dir=data_dir,
            num_workers=num_workers,
        )
        self.templates = None if templates is None else [int(t) for t in templates]
        self._names: list[str] | None = None
        self._facts_cache: dict[str, Any] | None = None

    @property
    def names(self) -> list[str]:
        """The names used: those whose ``" " + name`` is one token of the tokenizer."""
        if self._names is None:
            self._names = [n for n in self._facts()["NAMES"] if self.is_single_token(" " + n)]
        return list(self._names)

    @property
    def template_indices(self) -> list[int]:
        """The template indices in use (``templates`` resolved as in the module docstring)."""
        n_templates = len(self._facts()["BABA_TEMPLATES"])
        if self.templates is None:
            return [0] if self.fixed_length else list(range(n_templates))
        bad = [t for t in self.templates if not 0 <= t < n_templates]
        if bad or not self.templates:
            raise ValueError(
                f"IOIDataModule: templates must be a non-empty list of indices in "
                f"[0, {n_templates - 1}], got {self.templates}"
            )
        return sorted(set(self.templates))

    def build_examples(self) -> list[ContrastiveExample]:
        """Generate ``num_requested`` distinct prompts per selected template (half BABA order)."""
        facts = self._facts()
        names = self.names
        if len(names) < 3:
            raise ValueError(
                f"IOIDataModule: only {len(names)} names are single tokens for {self.backbone!r}; "
                "at least 3 are needed (IO, S and the corrupting name C)"
            )
        places, objects = facts["PLACES"], facts["OBJECTS"]
        rng = random.Random(f"ioi-{self.seed}")
        n_names = len(names)
        # every distinct filling of one template: order x IO x S (!= IO) x place x object
        n_fillings = 2 * n_names * (n_names - 1) * len(places) * len(objects)
        examples: list[ContrastiveExample] = []
        for t in self.template_indices:
            orders = {"BABA": facts["BABA_TEMPLATES"][t], "ABBA": facts["ABBA_TEMPLATES"][t]}
            prompts = {order: self._prompt_template(tmpl, t) for order, tmpl in orders.items()}
            # sampling indices of the filling space gives distinct prompts without rejection
            for code in rng.sample(range(n_fillings), min(self.num_requested, n_fillings)):
                code, order_i = divmod(code, 2)
                code, io_i = divmod(code, n_names)
                code, s_off = divmod(code, n_names - 1)
                obj_i, place_i = divmod(code, len(places))
                io = names[io_i]
                s = names[(io_i + 1 + s_off) % n_names]
                c = rng.choice([n for n in names if n not in (io, s)])
                text = prompts["BABA" if order_i == 0 else "ABBA"]
                fill = {"[A]": io, "[PLACE]": places[place_i], "[OBJECT]": objects[obj_i]}
                for key, value in fill.items():
                    text = text.replace(key, value)
                examples.append(
                    ContrastiveExample(
                        prompt=text.replace("[S2]", s).replace("[B]", s),
                        correct=" " + io,
                        wrong=" " + s,
                        corrupted_prompt=text.replace("[S2]", c).replace("[B]", s),
                    )
                )
        return examples

    # ------------------------------------------------------------------ internals
    def _facts(self) -> dict[str, Any]:
        if self._facts_cache is None:
            with open(self.data_file(IOI_FILE), encoding="utf-8") as f:
                self._facts_cache = json.load(f)
        return self._facts_cache

    @staticmethod
    def _prompt_template(template: str, index: int) -> str:
        """Strip the final ``" [A]"`` and mark the second subject mention as ``[S2]``."""
        if not template.endswith(" [A]"):
            raise ValueError(f"IOI template {index} does not end in ' [A]': {template!r}")
        prompt = template[: -len(" [A]")]
        first = prompt.find("[B]")
        second = prompt.find("[B]", first + 1)
        if first < 0 or second < 0 or prompt.count("[B]") != 2 or prompt.count("[A]") != 1:
            raise ValueError(
                f"IOI template {index} must name [A] once and [B] twice before the answer: "
                f"{template!r}"
            )
        return prompt[:second] + "[S2]" + prompt[second + len("[B]") :]
