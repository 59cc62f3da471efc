"""Commonsense multiple choice (BoolQ, COPA, WinoGrande) for steering with contrastive pairs.

A task is a list of :class:`ChoiceItem`: a prompt, its answer continuations and the index of the
correct one. The data module serves two kinds of batches:

* **contrastive pairs** (``train_dataloader``) for methods that read activations at the last
  token of a positive text (prompt + correct answer) and of a negative one (prompt + a wrong
  answer), as in AUSteer's Appendix B.1 / SADI;
* **multiple-choice batches** (``val_dataloader`` / ``test_dataloader``) scored by the
  log-likelihood of each answer continuation (:mod:`interventions.multiple_choice`).

**Files** (under ``data_dir``, default ``../shared/data``; see ``SOURCES.md`` section 3):

* BoolQ ``boolq/boolq.jsonl`` (3270 validation items)::

      {"query": "Passage: <passage>\\nQuestion: <question>?", "choices": ["no", "yes"], "gold": 1}

* COPA ``copa/balacopa-dev-all.xml``: the 500 labelled items with ids 1..500 (SuperGLUE train =
  1..400, val = 401..500); the Balanced-COPA mirrored items (ids from 1001) are not used::

      <item id="1" asks-for="cause" most-plausible-alternative="1">
        <p>My body cast a shadow over the grass.</p><a1>The sun was rising.</a1>
        <a2>The grass was cut.</a2></item>

* WinoGrande ``winogrande/winogrande.jsonl`` (1267 dev items, v1.1)::

      {"context_options": ["... so Sarah", "... so Maria"],
       "continuation": "always got the easier cases.", "gold": 1}

**Templates** (:data:`TEMPLATES`, one per task; answers are short, single-line continuations)::

    boolq       prompt  "Passage: {passage}\\nQuestion: {question}?\\nAnswer:"
                choices " no", " yes"
    copa        prompt  "{premise} {connective}"   premise without its final period,
                        connective "because" (asks for the cause) / "therefore" (the effect)
                choices " {alternative}"           first letter lower-cased
    winogrande  prompts "{context}"                one prompt per choice: the two context options
                choices " {continuation}"          the same continuation for both choices (no
                                                   space when it starts with "." or "'")

e.g. COPA id 1 is ``"My body cast a shadow over the grass because"`` with choices
``" the sun was rising."`` (gold) and ``" the grass was cut."``. This is the SuperGLUE-style
language-model format (as in lm-evaluation-harness; llm-foundry's ``copa.jsonl`` writes a comma
before the connective). A BoolQ question keeps its lower case; its ``?`` is written once.

**WinoGrande (partial scoring).** The two answers differ in the *context* (which name fills the
blank), not in the text after it, so a :class:`ChoiceItem` may carry per-choice ``prompts``:
choice ``i`` is scored as ``prompts[i] + choices[i]``, and only the shared continuation's tokens
are scored (the standard "partial" evaluation). Its ``prompt`` is the original sentence up to the
blank, ``"... so _"``, kept for display only.

**Splits.** The items, in file order, are permuted by ``random.Random(f"split-{seed}")``; of
``n`` items the first ``min(pool_size, (n - num_val) // 2)`` are the contrastive pool, the next
``num_val`` the validation set (for hyperparameter search) and the rest the test set (the first
``max_test`` of it, if given). With the defaults: BoolQ 1000 / 100 / 2170, COPA 200 / 100 / 200,
WinoGrande 583 / 100 / 584. The pool never overlaps the test set.

**Contrastive pairs** (:func:`contrastive_pairs`): for each pool item, ``positive = prompt +
correct choice`` and ``negative = prompt + a wrong choice``, the wrong choice drawn by
``random.Random(f"pairs-{seed}")`` among the wrong ones (per-choice prompts are used for
WinoGrande). Pair batches::

    {"pos_input_ids": LongTensor[batch, seq], "pos_attention_mask": LongTensor[batch, seq],
     "neg_input_ids": LongTensor[batch, seq], "neg_attention_mask": LongTensor[batch, seq]}

padded on ``padding_side`` (each of the two texts padded on its own).

**Multiple-choice batches** (:class:`ChoiceCollator`): ``B`` items with ``C_b`` choices give
``R = sum(C_b)`` rows, item by item and choice by choice::

    {"prompt_ids": LongTensor[R, Tp], "prompt_mask": LongTensor[R, Tp],          # LEFT padded
     "continuation_ids": LongTensor[R, Tc], "continuation_mask": LongTensor[R, Tc],
     "item": LongTensor[R],          # row -> index of its item in the batch
     "gold": LongTensor[B], "num_choices": LongTensor[B]}

Continuations are right padded by default. The continuation tokens of a choice are the tokens
of ``prompt + choice`` after the tokens of ``prompt``, so they are exactly what the model sees
when reading the full text. If a tokenizer merges text across the boundary (the tokens of
``prompt + choice`` do not start with those of ``prompt``), the choice is tokenized alone instead
and appended to the prompt's tokens; :attr:`ChoiceCollator.num_fallbacks` counts such rows and a
warning is shown once. (With SmolLM2's tokenizer and these templates this never happens.)

**Download.** ``download=True`` fetches missing files from the public repositories the shared
copies come from (pinned commits; the files are checked against their SHA-256), see
:func:`download_task_file`.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import random
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.base import default_data_dir
from interventions.backbone import load_tokenizer

__all__ = [
    "COPA_CONNECTIVES",
    "TASKS",
    "TASK_FILES",
    "TEMPLATES",
    "ChoiceCollator",
    "ChoiceItem",
    "CommonsenseDataModule",
    "ContrastivePair",
    "PairCollator",
    "TaskTemplate",
    "contrastive_pairs",
    "download_task_file",
    "load_task_items",
]

Task = Literal["boolq", "copa", "winogrande"]

TASKS: tuple[str, ...] = ("boolq", "copa", "winogrande")
"""The supported tasks."""

TASK_FILES: dict[str, str] = {
    "boolq": "boolq/boolq.jsonl",
    "copa": "copa/balacopa-dev-all.xml",
    "winogrande": "winogrande/winogrande.jsonl",
}
"""The file of each task, relative to ``data_dir``."""


@dataclass(frozen=True)
class TaskTemplate:
    """How a task's records become text (``str.format`` patterns).

    Attributes:
        prompt: The prompt, ending where the answer starts.
        choice: One answer continuation (it carries the space that separates it from the prompt).
    """

    prompt: str
    choice: str


TEMPLATES: dict[str, TaskTemplate] = {
    "boolq": TaskTemplate("Passage: {passage}\nQuestion: {question}?\nAnswer:", " {answer}"),
    "copa": TaskTemplate("{premise} {connective}", " {alternative}"),
    "winogrande": TaskTemplate("{context}", " {continuation}"),
}
"""The prompt template of each task (see the module docstring for the fields)."""

COPA_CONNECTIVES: dict[str, str] = {"cause": "because", "effect": "therefore"}
"""COPA's connective for each value of ``asks-for``."""

_NO_SPACE_BEFORE = (".", "'")  # WinoGrande continuations that attach to the blank ("'s", ".")


T = TypeVar("T", "ChoiceItem", "ContrastivePair")


# ---------------------------------------------------------------------------- values
@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question.

    Attributes:
        prompt: The text before the answer (it ends where the answer starts; the templates put
            the separating space at the start of each choice). With per-choice ``prompts`` it is
            for display only.
        choices: The answer continuations.
        gold: Index of the correct choice.
        prompts: Optional per-choice prompts (WinoGrande): when set, choice ``i`` is scored as
            ``prompts[i] + choices[i]`` and only ``choices[i]`` is scored; ``None`` means every
            choice follows ``prompt``.
    """

    prompt: str
    choices: tuple[str, ...]
    gold: int
    prompts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"ChoiceItem needs at least one choice (prompt {self.prompt!r})")
        if any(not choice for choice in self.choices):
            raise ValueError(f"ChoiceItem has an empty choice: {self.choices!r}")
        if not 0 <= self.gold < len(self.choices):
            raise ValueError(
                f"ChoiceItem gold={self.gold} is out of range for {len(self.choices)} choices"
            )
        if self.prompts is not None and len(self.prompts) != len(self.choices):
            raise ValueError(
                f"ChoiceItem has {len(self.prompts)} per-choice prompts for "
                f"{len(self.choices)} choices; give one prompt per choice or prompts=None"
            )

    @property
    def num_choices(self) -> int:
        """Number of choices."""
        return len(self.choices)

    def prompt_of(self, choice: int) -> str:
        """The prompt that choice ``choice`` follows."""
        return self.prompt if self.prompts is None else self.prompts[choice]

    def text(self, choice: int) -> str:
        """The full text of choice ``choice``: its prompt followed by the choice."""
        return self.prompt_of(choice) + self.choices[choice]


@dataclass(frozen=True)
class ContrastivePair:
    """A positive text (prompt + correct answer) and a negative one (prompt + wrong answer)."""

    positive: str
    negative: str


def contrastive_pairs(items: Sequence[ChoiceItem], seed: int = 0) -> list[ContrastivePair]:
    """One pair per item: the correct choice vs a wrong one drawn with ``Random(f"pairs-{seed}")``.

    Args:
        items: The items, e.g. the contrastive pool.
        seed: Seed of the draw of the wrong choices.

    Raises:
        ValueError: An item has no wrong choice.
    """
    rng = random.Random(f"pairs-{seed}")
    pairs = []
    for index, item in enumerate(items):
        wrong = [c for c in range(item.num_choices) if c != item.gold]
        if not wrong:
            raise ValueError(f"item {index} ({item.prompt!r}) has no wrong choice")
        pairs.append(ContrastivePair(item.text(item.gold), item.text(rng.choice(wrong))))
    return pairs


def _text_length(entry: ChoiceItem | ContrastivePair) -> int:
    if isinstance(entry, ContrastivePair):
        return max(len(entry.positive), len(entry.negative))
    return max(len(entry.text(c)) for c in range(entry.num_choices))


def longest_first(entries: Sequence[T]) -> list[T]:
    """Items or pairs ordered by their longest text, longest first (ties keep their order).

    Batching neighbours of this order pads each batch to a length close to its rows' own: on
    BoolQ, whose passages vary from a few dozen to several hundred tokens, batches in data order
    spend most of their compute on padding.  Character length stands in for token length (no
    tokenization needed).
    """
    order = sorted(range(len(entries)), key=lambda i: -_text_length(entries[i]))  # stable
    return [entries[i] for i in order]


# ---------------------------------------------------------------------------- readers
def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append((line_number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_number}: not valid JSON ({err})") from err
    return records


def _field(path: Path, where: int | str, record: dict[str, Any], key: str) -> Any:
    if key not in record:
        raise ValueError(f"{path}:{where}: missing key {key!r} (keys: {sorted(record)})")
    return record[key]


def _read_boolq(path: Path) -> list[ChoiceItem]:
    template = TEMPLATES["boolq"]
    items = []
    for line, record in _read_jsonl(path):
        query = str(_field(path, line, record, "query")).strip()
        choices = _field(path, line, record, "choices")
        passage, sep, question = query.rpartition("\nQuestion: ")
        if not sep or not passage.startswith("Passage: "):
            raise ValueError(
                f"{path}:{line}: expected a query 'Passage: ...\\nQuestion: ...', got "
                f"{query[:80]!r}"
            )
        prompt = template.prompt.format(
            passage=passage.removeprefix("Passage: ").strip(),
            question=question.strip().rstrip("?").strip(),
        )
        items.append(
            ChoiceItem(
                prompt=prompt,
                choices=tuple(template.choice.format(answer=str(c).strip()) for c in choices),
                gold=int(_field(path, line, record, "gold")),
            )
        )
    return items


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _read_copa(path: Path) -> list[ChoiceItem]:
    template = TEMPLATES["copa"]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not valid XML ({err})") from err
    by_id: dict[int, ChoiceItem] = {}
    for element in root.iter("item"):
        item_id = int(element.get("id", "0"))
        if not 1 <= item_id <= 500:  # ids >= 1001 are Balanced-COPA's mirrored items
            continue
        where = f"item {item_id}"
        texts = {}
        for tag in ("p", "a1", "a2"):
            child = element.find(tag)
            if child is None or not (child.text or "").strip():
                raise ValueError(f"{path}: {where} has no <{tag}> text")
            texts[tag] = (child.text or "").strip()
        asks_for = element.get("asks-for")
        answer = element.get("most-plausible-alternative")
        if asks_for not in COPA_CONNECTIVES or answer not in ("1", "2"):
            raise ValueError(
                f"{path}: {where} has asks-for={asks_for!r} (expected cause or effect) and "
                f"most-plausible-alternative={answer!r} (expected 1 or 2)"
            )
        premise = texts["p"].removesuffix(".")
        by_id[item_id] = ChoiceItem(
            prompt=template.prompt.format(premise=premise, connective=COPA_CONNECTIVES[asks_for]),
            choices=tuple(
                template.choice.format(alternative=_lower_first(texts[tag])) for tag in ("a1", "a2")
            ),
            gold=int(answer) - 1,
        )
    return [by_id[i] for i in sorted(by_id)]


def _blanked(contexts: Sequence[str]) -> str:
    """The sentence up to the blank: the contexts' common prefix cut at a word boundary + "_"."""
    prefix = os.path.commonprefix(list(contexts))
    if len(set(contexts)) > 1:
        prefix = prefix[: prefix.rfind(" ") + 1]  # "... but the b" -> "... but the "
    return prefix + "_"


def _read_winogrande(path: Path) -> list[ChoiceItem]:
    template = TEMPLATES["winogrande"]
    items = []
    for line, record in _read_jsonl(path):
        contexts = tuple(str(c).strip() for c in _field(path, line, record, "context_options"))
        continuation = str(_field(path, line, record, "continuation")).strip()
        if not continuation:
            raise ValueError(f"{path}:{line}: empty continuation")
        choice = template.choice.format(continuation=continuation)
        if continuation.startswith(_NO_SPACE_BEFORE):
            choice = choice.lstrip(" ")  # "... the factory" + "." / "Sarah" + "'s face."
        items.append(
            ChoiceItem(
                prompt=_blanked(contexts),
                choices=(choice,) * len(contexts),
                gold=int(_field(path, line, record, "gold")),
                prompts=tuple(template.prompt.format(context=c) for c in contexts),
            )
        )
    return items


_READERS = {"boolq": _read_boolq, "copa": _read_copa, "winogrande": _read_winogrande}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def load_task_items(task: str, data_dir: str | Path | None = None) -> list[ChoiceItem]:
    """All items of a task, in file order (COPA: by id), rendered with :data:`TEMPLATES`.

    Args:
        task: ``"boolq"``, ``"copa"`` or ``"winogrande"``.
        data_dir: Folder holding :data:`TASK_FILES` (default: ``../shared/data``).

    Raises:
        ValueError: Unknown task or malformed record (the message names file and line / id).
        FileNotFoundError: The task's file is missing.
    """
    _check_task(task)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / TASK_FILES[task]
    if not path.is_file():
        raise FileNotFoundError(f"{task}: expected the data file {path}")
    return _READERS[task](path)


# ---------------------------------------------------------------------------- download
@dataclass(frozen=True)
class _Source:
    url: str
    sha256: str  # of the task file (for an archive: of the extracted member)
    member: str | None = None  # path inside a .tar.bz2 archive


_LLM_FOUNDRY = (
    "https://raw.githubusercontent.com/mosaicml/llm-foundry/"
    "8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data/"
)
_SOURCES: dict[str, _Source] = {
    "boolq": _Source(
        _LLM_FOUNDRY + "reading_comprehension/boolq.jsonl",
        "454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8",
    ),
    "copa": _Source(
        "https://raw.githubusercontent.com/Balanced-COPA/Balanced-COPA.github.io/"
        "6e031959f0df0620059cb03d708bfbefd38ee0ba/downloads/balanced_copa.tar.bz2",
        "2091dce8a2923b8530804644780ebe01fd1ae30342eb2562a3821786274b5b25",
        member="balanced_copa/balacopa-dev-all.xml",
    ),
    "winogrande": _Source(
        _LLM_FOUNDRY + "language_understanding/winogrande.jsonl",
        "ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7",
    ),
}


def download_task_file(task: str, data_dir: str | Path, timeout: float = 60.0) -> Path:
    """Download a task's file into ``data_dir`` (needs internet access).

    The files are the ones ``../shared/data`` holds: BoolQ and WinoGrande in MosaicML
    llm-foundry's format, COPA from the Balanced-COPA archive, all at pinned commits and checked
    against their SHA-256, so a download gives the same items and splits as the shared copy.

    Args:
        task: ``"boolq"``, ``"copa"`` or ``"winogrande"``.
        data_dir: Destination folder; the file goes to ``data_dir / TASK_FILES[task]``.
        timeout: Seconds to wait for the server.

    Returns:
        The path of the downloaded file.

    Raises:
        ConnectionError: The download failed (e.g. no internet access).
        ValueError: The downloaded file has an unexpected checksum.
    """
    _check_task(task)
    source = _SOURCES[task]
    target = Path(data_dir) / TASK_FILES[task]
    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise ConnectionError(
            f"could not download {task} from {source.url} ({err}). Without internet access, "
            f"copy the file to {target} (see ../shared/data/SOURCES.md)."
        ) from err
    if source.member is not None:
        with tarfile.open(fileobj=io.BytesIO(bz2.decompress(payload))) as archive:
            try:
                extracted = archive.extractfile(source.member)
            except KeyError:
                extracted = None
            if extracted is None:
                raise ValueError(f"{source.url} has no file {source.member}")
            payload = extracted.read()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != source.sha256:
        raise ValueError(
            f"the {task} file from {source.url} has SHA-256 {digest}, expected {source.sha256}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(payload)
    os.replace(tmp.name, target)  # atomic: no half-written file on failure
    return target


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


class PairCollator:
    """Tokenizes a list of :class:`ContrastivePair` into padded positive and negative batches."""

    def __init__(self, tokenizer: Any, padding_side: Literal["left", "right"] = "left") -> None:
        """Wrap a tokenizer.

        Args:
            tokenizer: A Hugging Face tokenizer with a pad token.
            padding_side: Side on which the texts are padded.
        """
        _check_side("padding_side", padding_side)
        self.tokenizer = tokenizer
        self.padding_side = padding_side

    def __call__(self, pairs: list[ContrastivePair]) -> dict[str, Tensor]:
        """Pad the positives and the negatives (see the module docstring for the keys)."""
        batch: dict[str, Tensor] = {}
        for key, texts in (
            ("pos", [p.positive for p in pairs]),
            ("neg", [p.negative for p in pairs]),
        ):
            encoded = self.tokenizer(texts)["input_ids"]
            ids, mask = _pad(encoded, self.tokenizer.pad_token_id, self.padding_side)
            batch[f"{key}_input_ids"] = ids  # [batch, seq]
            batch[f"{key}_attention_mask"] = mask  # [batch, seq]
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
                in :mod:`interventions.multiple_choice` accepts both).
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
    ) -> None:
        """Configure the datamodule (this signature is the YAML/CLI schema).

        Args:
            task: ``boolq``, ``copa`` or ``winogrande``.
            backbone: Name or path of the model whose tokenizer is used (passed to
                ``interventions.backbone.load_tokenizer``).
            pool_size: At most this many items form the contrastive pool (paper: 1000); the pool
                is also capped at half of the items left after the validation set.
            num_val: Size of the validation set (small, for hyperparameter search).
            max_test: Cap on the test set (quick runs); ``None`` uses every remaining item.
            batch_size: Pairs or items per batch in every dataloader.
            seed: Seed of the split and of the wrong answers of the contrastive pairs.
            data_dir: Folder holding ``boolq/``, ``copa/`` and ``winogrande/`` (default:
                ``../shared/data`` next to the checkout).
            download: Download the task's file into ``data_dir`` when it is missing (needs
                internet access).
            padding_side: Side on which the contrastive pair batches are padded (multiple-choice
                batches pad prompts on the left and continuations on the right).
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        _check_task(task)
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

        self._tokenizer: Any | None = None
        self._splits: dict[str, list[ChoiceItem]] | None = None
        self._num_items = 0

    # ------------------------------------------------------------------ files
    @property
    def resolved_data_dir(self) -> Path:
        """``data_dir`` if given, else the default ``../shared/data`` next to the checkout."""
        return Path(self.data_dir) if self.data_dir is not None else default_data_dir()

    @property
    def task_file(self) -> Path:
        """The task's data file (it may not exist yet)."""
        return self.resolved_data_dir / TASK_FILES[self.task]

    def prepare_data(self) -> None:
        """Download the task's file if it is missing and ``download`` is on; else check it."""
        path = self.task_file
        if path.is_file():
            return
        if self.download:
            rank_zero_info(f"CommonsenseDataModule: downloading {self.task} to {path}")
            download_task_file(self.task, self.resolved_data_dir)
            return
        root = self.resolved_data_dir
        where = (
            f"data_dir={self.data_dir!r}"
            if self.data_dir is not None
            else f"the default data folder {root} (../shared/data next to the checkout)"
        )
        problem = "does not exist" if not root.is_dir() else f"has no file {TASK_FILES[self.task]}"
        raise FileNotFoundError(
            f"CommonsenseDataModule: task {self.task!r} expects the data file {path}, but "
            f"{where} {problem}. The expected files in data_dir are "
            f"{', '.join(TASK_FILES.values())}. Pass data_dir=<folder that contains them> "
            f"(command line: --data.data_dir /path/to/shared/data), or download them with "
            f"--data.download true (needs internet access)."
        )

    # ------------------------------------------------------------------ splits
    def setup(self, stage: str | None = None) -> None:
        """Read the items and split them (only the first call does work)."""
        if self._splits is not None:
            return
        self.prepare_data()
        items = load_task_items(self.task, self.resolved_data_dir)
        n = len(items)
        name = f"CommonsenseDataModule ({self.task})"
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
        return PairCollator(self.tokenizer, padding_side=self.padding_side)

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
