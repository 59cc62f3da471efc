"""Indirect Object Identification (IOI; Wang et al. 2023), generated from templates.

Prompts are generated with the seed from BABA and ABBA templates: ``[A]`` is the indirect
object IO (the correct answer), ``[B]`` the subject S (named twice: S1, S2), ``[PLACE]`` and
``[OBJECT]`` are filled from lists. The prompt is the template without its final ``" [A]"``::

    template 0, BABA:  "Then John and Mary were sitting in the park when John handed a book to"
    template 0, ABBA:  "Then Mary and John were sitting in the park when John handed a book to"
    corrupted (ABC):   "Then John and Mary were sitting in the park when Lisa handed a book to"
                       -> correct " Mary", wrong " John"

Two sets of facts (``facts``):

* ``builtin`` (default): the 12 templates and the name, place and object lists in this module,
  written for this project (:data:`BUILTIN_TEMPLATES`, :data:`BUILTIN_NAMES`, ...). They need no
  data folder and no download, so the default job runs anywhere. The ABBA form of a template is
  its BABA form with the first two name mentions swapped.
* ``standard``: the 15 BABA / ABBA templates and the 99 names, 8 places and 8 objects of the IOI
  generator of Wang et al. (2023), read from ``ioi/ioi_templates_names.json`` in the data folder
  (the layout of ``../shared/data``; see ``python -m interventions data where``).

``correct = " " + IO`` and ``wrong = " " + S``. Only names whose ``" " + name`` is one token of
the backbone's tokenizer are used. The corrupted prompt replaces S2 by a third name C (not IO,
not S) with the same token count as S, so it has the same token length as the clean prompt.

Template choice and ``fixed_length``: names, places and objects are single tokens, so a
template's token length is the same for every filling and for both name orders. The default
(``templates=None`` with ``fixed_length=True``) therefore uses template 0 only: every prompt has
the same length (15 tokens with the SmolLM2 tokenizer, for both sets) and the same sentence
shape, which is what position-tied edits (ActivScalar, SteerVec) need, and the prompts mix BABA
and ABBA orders so that the position of IO varies. With ``fixed_length=False`` and
``templates=None`` all templates are used and prompt lengths vary (for DynScalar). An explicit
``templates`` list is used as given (with ``fixed_length``, only the templates of the most
common length survive the filter).
"""

from __future__ import annotations

import json
import random
from typing import Any, Literal

from datamodules.base import ContrastiveDataModule, ContrastiveExample

__all__ = [
    "BUILTIN_NAMES",
    "BUILTIN_OBJECTS",
    "BUILTIN_PLACES",
    "BUILTIN_TEMPLATES",
    "IOIDataModule",
    "abba_form",
]

IOI_FILE = "ioi/ioi_templates_names.json"

# Written for this project (not taken from any IOI code or data file). Each template names IO
# ([A]) once and S ([B]) twice before the final " [A]"; with the SmolLM2 tokenizer template 0 is
# 15 tokens long once filled (without the answer), like template 0 of the standard set.
BUILTIN_TEMPLATES: list[str] = [
    "Then [B] and [A] were sitting in the [PLACE] when [B] handed a [OBJECT] to [A]",
    "This morning [B] and [A] met outside the [PLACE]. [B] quickly gave a [OBJECT] to [A]",
    "Both [B] and [A] were waiting at the [PLACE]. Then [B] sent a [OBJECT] to [A]",
    "Yesterday [B] and [A] walked to the [PLACE], and [B] passed a [OBJECT] to [A]",
    "Later that evening, [B] and [A] returned to the [PLACE], and [B] lent a [OBJECT] to [A]",
    "On Sunday, [B] and [A] cleaned the [PLACE] together. Afterwards [B] brought a [OBJECT] to [A]",
    "Early in the day, [B] and [A] headed for the [PLACE]. There, [B] threw a [OBJECT] to [A]",
    "Because [B] and [A] were late for the [PLACE], [B] returned the [OBJECT] to [A]",
    "Once [B] and [A] reached the [PLACE], [B] showed a [OBJECT] to [A]",
    "Last week [B] and [A] visited the [PLACE], where [B] sold a [OBJECT] to [A]",
    "During a trip to the [PLACE], [B] and [A] got bored, so [B] tossed a [OBJECT] to [A]",
    "As soon as [B] and [A] left the [PLACE], [B] offered a [OBJECT] to [A]",
]

# Common English first names (facts; all 60 are one token with a leading space for the
# SmolLM2 tokenizer), places and objects (consonant-initial, after "a"; all one token for SmolLM2).
BUILTIN_NAMES: list[str] = (
    "Alice Anna Barbara Ben Bill Bob Carl Carol Charlie Chris Claire Dan Dave Diana Emma Eva "
    "Frank Fred George Grace Hannah Harry Helen Henry Ian Jack Jake Jane Jim Joe Julia Kate Ken "
    "Kim Leo Linda Lucy Luke Maria Mark Martin Max Molly Mike Nancy Nick Oliver Paul Peter "
    "Rachel Rose Ruth Sam Sophie Susan Tom Tony Victor Walter Will"
).split()
BUILTIN_PLACES: list[str] = [
    "park", "library", "market", "beach", "museum", "kitchen", "farm", "church", "bank", "hotel",
    "zoo", "gym",
]  # fmt: skip
BUILTIN_OBJECTS: list[str] = [
    "book", "key", "letter", "ball", "cup", "hat", "pen", "phone", "coin", "ticket", "map",
    "flower",
]  # fmt: skip


def abba_form(template: str) -> str:
    """The ABBA order of a BABA template: the first ``[B]`` and the first ``[A]`` swapped."""
    first_b, first_a = template.find("[B]"), template.find("[A]")
    if first_b < 0 or first_a < 0 or first_b > first_a:
        raise ValueError(f"not a BABA template (S before IO): {template!r}")
    return (
        template[:first_b] + "[A]" + template[first_b + 3 : first_a] + "[B]"
        + template[first_a + 3 :]
    )  # fmt: skip


def builtin_facts() -> dict[str, Any]:
    """The built-in facts in the layout of ``ioi/ioi_templates_names.json``."""
    return {
        "NAMES": list(BUILTIN_NAMES),
        "BABA_TEMPLATES": list(BUILTIN_TEMPLATES),
        "ABBA_TEMPLATES": [abba_form(t) for t in BUILTIN_TEMPLATES],
        "PLACES": list(BUILTIN_PLACES),
        "OBJECTS": list(BUILTIN_OBJECTS),
    }


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
        facts: Literal["builtin", "standard"] = "builtin",
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
            data_dir: Folder holding ``ioi/ioi_templates_names.json`` (only read with
                ``facts="standard"``; default: the data folders in lookup order, see
                ``python -m interventions data where``).
            num_workers: DataLoader worker processes.
            templates: Indices of the templates to use (0-11 for ``builtin``, 0-14 for
                ``standard``); each index gives one sentence in both its BABA and ABBA order.
                ``None``: template 0 when ``fixed_length`` is true, all templates otherwise.
            facts: ``builtin`` (templates and lists written for this project, no data folder
                needed) or ``standard`` (the templates and lists of Wang et al.'s generator, from
                ``ioi/ioi_templates_names.json`` in the data folder).
        """
        if facts not in ("builtin", "standard"):
            raise ValueError(f"IOIDataModule: facts must be 'builtin' or 'standard', got {facts!r}")
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
        self.facts = facts
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
            if self.facts == "builtin":
                self._facts_cache = builtin_facts()
            else:
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
