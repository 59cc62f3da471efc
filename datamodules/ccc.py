"""Country-Capital Conflicts (CCC; Du et al. 2024): in-context fact vs parametric memory.

Each prompt asserts a wrong capital in context and then asks for the capital. The correct answer
is the true capital (prior knowledge), the wrong one is the context city, which is the capital of
another country drawn with the seed. Three templates of the same token length (for the same
country and city, checked for every country of the data files with the SmolLM2 tokenizer)::

    default: "The capital of {country} is {context_city}. Q: What is the capital of {country}? A:"
    alt:     "The capital of {country} is {context_city}. Q: Which city is {country}'s capital? A:"
    moved:   "So {context_city} is capital of {country}. Q: What is the capital of {country}? A:"

    e.g. default: "The capital of Germany is Paris. Q: What is the capital of Germany? A:"
         correct " Berlin", wrong " Paris"

The default template is the measureLM one (``ccc/ccc_prompt_templates.json``); ``alt`` rewords
the question and ``moved`` rewords the context so that the context city and the country sit at
other token positions. Both are "different templates" for the paper's Table 2 generalisation test:
train on ``default``, evaluate on ``alt`` / ``moved``, with position-tied interventions still
applicable (same length) but, for ``moved``, tied to positions that now hold other tokens.

Only countries whose ``" " + capital`` is one token of the backbone's tokenizer are kept, and
countries whose capital shares its name with the country (e.g. Luxembourg) are left out since the
answer would be in the question. ``corrupted_prompt`` replaces the context city by yet another
single-token capital (not the true one, not the context city) of the same token length.

Facts: ``csv`` = ``ccc/country_capitals.csv`` (190 pairs), ``json`` = ``ccc/country-capital.json``
(197 pairs), both in the data folder (``python -m interventions data fetch ccc`` fetches them);
``builtin`` = a list of 60 pairs in this module, for users without the data folder. With the
SmolLM2 tokenizer, 44 (csv), 43 (json) and 41 (builtin) countries have a usable one-token
capital; with ``fixed_length=True`` (prompts of 18 tokens, i.e. one-token country names) 37, 37
and 36 remain. The default split sizes 20 / 6 / 10 fit all three. The same seed draws the same
cities and splits for both templates.
"""

from __future__ import annotations

import csv
import json
import random
from typing import Literal

from datamodules.base import ContrastiveDataModule, ContrastiveExample

__all__ = ["BUILTIN_CAPITALS", "CCC_TEMPLATES", "CCCDataModule"]

CCC_TEMPLATES: dict[str, str] = {
    "default": (
        "The capital of {country} is {context_city}. Q: What is the capital of {country}? A:"
    ),
    "alt": "The capital of {country} is {context_city}. Q: Which city is {country}'s capital? A:",
    "moved": "So {context_city} is capital of {country}. Q: What is the capital of {country}? A:",
}

CSV_FILE = "ccc/country_capitals.csv"
JSON_FILE = "ccc/country-capital.json"

BUILTIN_CAPITALS: list[tuple[str, str]] = [
    ("Afghanistan", "Kabul"),
    ("Argentina", "Buenos Aires"),
    ("Australia", "Canberra"),
    ("Austria", "Vienna"),
    ("Belgium", "Brussels"),
    ("Brazil", "Brasilia"),
    ("Bulgaria", "Sofia"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("China", "Beijing"),
    ("Colombia", "Bogota"),
    ("Croatia", "Zagreb"),
    ("Cuba", "Havana"),
    ("Czech Republic", "Prague"),
    ("Denmark", "Copenhagen"),
    ("Egypt", "Cairo"),
    ("Ethiopia", "Addis Ababa"),
    ("Finland", "Helsinki"),
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Greece", "Athens"),
    ("Hungary", "Budapest"),
    ("India", "New Delhi"),
    ("Indonesia", "Jakarta"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Ireland", "Dublin"),
    ("Israel", "Jerusalem"),
    ("Italy", "Rome"),
    ("Jamaica", "Kingston"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Lebanon", "Beirut"),
    ("Mexico", "Mexico City"),
    ("Morocco", "Rabat"),
    ("Netherlands", "Amsterdam"),
    ("New Zealand", "Wellington"),
    ("Nigeria", "Abuja"),
    ("Norway", "Oslo"),
    ("Pakistan", "Islamabad"),
    ("Peru", "Lima"),
    ("Philippines", "Manila"),
    ("Poland", "Warsaw"),
    ("Portugal", "Lisbon"),
    ("Romania", "Bucharest"),
    ("Russia", "Moscow"),
    ("Serbia", "Belgrade"),
    ("South Korea", "Seoul"),
    ("Spain", "Madrid"),
    ("Sweden", "Stockholm"),
    ("Switzerland", "Bern"),
    ("Syria", "Damascus"),
    ("Thailand", "Bangkok"),
    ("Tunisia", "Tunis"),
    ("Turkey", "Ankara"),
    ("Ukraine", "Kyiv"),
    ("United Kingdom", "London"),
    ("United States", "Washington"),
    ("Venezuela", "Caracas"),
    ("Vietnam", "Hanoi"),
]


class CCCDataModule(ContrastiveDataModule):
    """Country-capital conflict prompts: true capital (correct) vs in-context city (wrong)."""

    def __init__(
        self,
        backbone: str = "smollm2-135m-instruct",
        batch_size: int = 32,
        num_train: int = 20,
        num_val: int = 6,
        num_test: int = 10,
        seed: int = 0,
        fixed_length: bool = True,
        padding_side: Literal["left", "right"] = "left",
        data_dir: str | None = None,
        num_workers: int = 0,
        facts: Literal["csv", "json", "builtin"] = "csv",
        template: Literal["default", "alt", "moved"] = "default",
    ) -> None:
        """Configure the datamodule (this signature is the YAML/CLI schema).

        Args:
            backbone: Name or path of the model whose tokenizer is used (passed to
                ``interventions.core.backbone.load_tokenizer``).
            batch_size: Examples per batch in every dataloader.
            num_train: Number of training examples (one per country).
            num_val: Number of validation examples.
            num_test: Number of test examples.
            seed: Seed of the context-city draw and of the train/val/test split.
            fixed_length: Keep only prompts of the most common token length, so that
                position-tied interventions apply to every prompt.
            padding_side: Side on which batches are padded.
            data_dir: Folder holding ``ccc/country_capitals.csv`` / ``ccc/country-capital.json``;
                when given, the only folder searched. Default: ``$LEARNED_INTERVENTIONS_DATA``, the
                user cache (``python -m interventions data fetch ccc``), then ``../shared/data``
                next to the checkout. Unused with ``facts="builtin"``.
            num_workers: DataLoader worker processes.
            facts: Source of the country-capital pairs: ``csv`` (190 pairs), ``json`` (197 pairs)
                or ``builtin`` (60 pairs written in this module, no data folder needed).
            template: Prompt template, ``default``, ``alt`` or ``moved`` (same token length; see the
                module docstring). The same seed gives the same countries, cities and splits for all.
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
        if facts not in ("csv", "json", "builtin"):
            raise ValueError(f"facts must be 'csv', 'json' or 'builtin', got {facts!r}")
        if template not in CCC_TEMPLATES:
            raise ValueError(f"template must be one of {sorted(CCC_TEMPLATES)}, got {template!r}")
        self.facts = facts
        self.template = template

    def load_facts(self) -> list[tuple[str, str]]:
        """All (country, capital) pairs of the chosen ``facts`` source, in file order."""
        if self.facts == "builtin":
            return list(BUILTIN_CAPITALS)
        if self.facts == "csv":
            with open(self.data_file(CSV_FILE), encoding="utf-8-sig", newline="") as f:
                rows = [(r["country"], r["capital"]) for r in csv.DictReader(f)]
        else:
            with open(self.data_file(JSON_FILE), encoding="utf-8") as f:
                rows = [(r["input"], r["output"]) for r in json.load(f)]
        return [(country.strip(), capital.strip()) for country, capital in rows]

    def usable_facts(self) -> list[tuple[str, str]]:
        """Pairs whose capital is one token and is not the country's own name (deduplicated)."""
        seen: set[str] = set()
        kept = []
        for country, capital in self.load_facts():
            if country in seen or capital.lower() == country.lower():
                continue
            if not self.is_single_token(" " + capital):
                continue
            seen.add(country)
            kept.append((country, capital))
        return kept

    def build_examples(self) -> list[ContrastiveExample]:
        """One conflict prompt per usable country, with a seeded context and corrupting city."""
        pairs = self.usable_facts()
        capitals = sorted({capital for _, capital in pairs})
        if len(capitals) < 3:
            raise ValueError(
                f"CCCDataModule: only {len(capitals)} single-token capitals in facts="
                f"{self.facts!r} for {self.backbone!r}; at least 3 are needed"
            )
        n_tokens = {
            c: len(self.tokenizer.encode(" " + c, add_special_tokens=False)) for c in capitals
        }
        template = CCC_TEMPLATES[self.template]
        rng = random.Random(f"ccc-{self.seed}")
        examples = []
        for country, capital in pairs:
            context_city = rng.choice([c for c in capitals if c != capital])
            corrupt_city = rng.choice(
                [
                    c
                    for c in capitals
                    if c not in (capital, context_city) and n_tokens[c] == n_tokens[context_city]
                ]
            )
            examples.append(
                ContrastiveExample(
                    prompt=template.format(country=country, context_city=context_city),
                    correct=" " + capital,
                    wrong=" " + context_city,
                    corrupted_prompt=template.format(country=country, context_city=corrupt_city),
                )
            )
        return examples
