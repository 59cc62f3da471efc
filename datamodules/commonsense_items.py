"""Commonsense multiple choice (BoolQ, COPA, WinoGrande) for steering with contrastive pairs.

A task is a list of :class:`ChoiceItem`: a prompt, its answer continuations and the index of the
correct one. The data module serves two kinds of batches:

* **contrastive pairs** (``train_dataloader``) for methods that read activations at the answer
  token of a positive text (prompt + correct answer) and of a negative one (prompt + a wrong
  answer), as in AUSteer's Appendix B.1 / SADI;
* **multiple-choice batches** (``val_dataloader`` / ``test_dataloader``) scored by the
  log-likelihood of each answer continuation (:mod:`interventions.evaluation.multiple_choice`).

**Files** (under ``data_dir``, or looked up as :mod:`datamodules.sources` says: the
``$LEARNED_INTERVENTIONS_DATA`` folder, the user cache, ``../shared/data``; see ``SOURCES.md``
section 3):

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

**Templates.** Two formats, chosen with ``template`` (:data:`TEMPLATE_NAMES`):

* ``cloze`` (:data:`TEMPLATES`, the default; answers are short, single-line continuations scored
  by their log-likelihood)::

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

* ``instruction`` (:data:`INSTRUCTION_TEMPLATES`): the format AUSteer's paper evaluates with
  (Appendix B.3: SADI's templates, which the paper does not print), written for this project
  from that description: an instruction, the question with its options labelled, and an answer
  of one token: the letter ``" A"`` / ``" B"`` (COPA, WinoGrande) or ``" Yes"`` / ``" No"``
  (BoolQ). The choices *are* those answer tokens, so the log-likelihood scoring of the
  multiple-choice evaluation is letter scoring, and a contrastive pair is prompt + correct letter
  vs prompt + wrong letter::

      boolq       "Read the passage and answer the question with Yes or No.\\n"
                  "Passage: {passage}\\nQuestion: {question}?\\nAnswer:"
                  choices " No", " Yes" (the file's order)
      copa        "Choose the more plausible {cause|effect} of the premise. Answer with A or B.\\n"
                  "Premise: {premise}\\nA. {alternative 1}\\nB. {alternative 2}\\nAnswer:"
                  choices " A", " B"
      winogrande  "Choose the option that fills the blank (_) in the sentence correctly. "
                  "Answer with A or B.\\n"
                  "Sentence: {sentence with _}\\nA. {option 1}\\nB. {option 2}\\nAnswer:"
                  choices " A", " B"

  The WinoGrande sentence and options are rebuilt from the file's two context options (their
  common prefix, cut at a word boundary, is the text before the blank; the rest of each is its
  option) and the continuation.

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
     "neg_input_ids": LongTensor[batch, seq], "neg_attention_mask": LongTensor[batch, seq],
     "pos_read_offset": LongTensor[batch], "neg_read_offset": LongTensor[batch]}

padded on ``padding_side`` (each of the two texts padded on its own).

**Where the statistic is read** (``statistic_token``, the ``*_read_offset`` of a pair batch:
how many real tokens of the text come after the read one, 0 = its last token). With
``"answer"`` (the default) it is the *answer token*: the last token at which the positive and
the negative differ, i.e. the last token before the longest token suffix the two texts share
(at least one token of each text stays before it). Where the answers end the texts and differ
in their last token (BoolQ, every ``instruction`` item: `` yes``/`` no``, the letter) that is the
last token; where both continuations end in the same ``"."`` (cloze COPA) it is the last word of
the answer; where the answers differ only in the blank (cloze WinoGrande, whose continuation is
shared) it is the last token of the option that fills the blank.  AUSteer's paper reads the
activations of its positive and negative samples at the answer, the last token of its
one-token answers; this rule gives that token in the paper's format and its counterpart in the
cloze format, instead of a final ``"."`` that both texts share.  ``"last"`` reads each text's
last token.

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

**Download.** ``python -m interventions data fetch boolq`` (or ``copa``, ``winogrande``) fetches
the files from the public repositories the shared copies come from (pinned commits, checked
against their SHA-256; :mod:`datamodules.fetch`); ``download=True`` does it for a missing task
file, see :func:`download_task_file`.
"""

from __future__ import annotations

import json
import os
import random
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from datamodules.fetch import fetch_file
from datamodules.sources import FILES, find_data_file

Task = Literal["boolq", "copa", "winogrande"]

TASKS: tuple[str, ...] = ("boolq", "copa", "winogrande")
"""The supported tasks."""

TASK_FILES: dict[str, str] = {
    "boolq": "boolq/boolq.jsonl",
    "copa": "copa/balacopa-dev-all.xml",
    "winogrande": "winogrande/winogrande.jsonl",
}
"""The file of each task, relative to the data folder."""


@dataclass(frozen=True)
class TaskTemplate:
    """How a task's records become text (``str.format`` patterns).

    Attributes:
        prompt: The prompt, ending where the answer starts.
        choice: One answer continuation (it carries the space that separates it from the prompt).
    """

    prompt: str
    choice: str


TemplateName = Literal["cloze", "instruction"]
"""The prompt formats of the tasks (see the module docstring)."""

TEMPLATE_NAMES: tuple[str, ...] = ("cloze", "instruction")
"""Every prompt format."""

TEMPLATES: dict[str, TaskTemplate] = {
    "boolq": TaskTemplate("Passage: {passage}\nQuestion: {question}?\nAnswer:", " {answer}"),
    "copa": TaskTemplate("{premise} {connective}", " {alternative}"),
    "winogrande": TaskTemplate("{context}", " {continuation}"),
}
"""The ``cloze`` prompt template of each task (see the module docstring for the fields)."""

INSTRUCTION_TEMPLATES: dict[str, TaskTemplate] = {
    "boolq": TaskTemplate(
        "Read the passage and answer the question with Yes or No.\n"
        "Passage: {passage}\nQuestion: {question}?\nAnswer:",
        " {answer}",
    ),
    "copa": TaskTemplate(
        "Choose the more plausible {relation} of the premise. Answer with A or B.\n"
        "Premise: {premise}\nA. {option_a}\nB. {option_b}\nAnswer:",
        " {letter}",
    ),
    "winogrande": TaskTemplate(
        "Choose the option that fills the blank (_) in the sentence correctly. "
        "Answer with A or B.\n"
        "Sentence: {sentence}\nA. {option_a}\nB. {option_b}\nAnswer:",
        " {letter}",
    ),
}
"""The ``instruction`` prompt template of each task, written for this project from the AUSteer
paper's description of its format (see the module docstring)."""

TASK_TEMPLATES: dict[str, dict[str, TaskTemplate]] = {
    "cloze": TEMPLATES,
    "instruction": INSTRUCTION_TEMPLATES,
}
"""The templates of each format, by task."""

LETTERS = "AB"
"""The option letters of the ``instruction`` format (COPA and WinoGrande have two options)."""

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


def _read_boolq(path: Path, style: str = "cloze") -> list[ChoiceItem]:
    template = TASK_TEMPLATES[style]["boolq"]
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
        answers = [str(c).strip() for c in choices]
        if style == "instruction":
            answers = [a.capitalize() for a in answers]  # "no" -> "No", "yes" -> "Yes"
        items.append(
            ChoiceItem(
                prompt=prompt,
                choices=tuple(template.choice.format(answer=a) for a in answers),
                gold=int(_field(path, line, record, "gold")),
            )
        )
    return items


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _read_copa(path: Path, style: str = "cloze") -> list[ChoiceItem]:
    template = TASK_TEMPLATES[style]["copa"]
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
        if style == "instruction":
            prompt = template.prompt.format(
                relation=asks_for, premise=texts["p"], option_a=texts["a1"], option_b=texts["a2"]
            )
            choices = tuple(template.choice.format(letter=letter) for letter in LETTERS)
        else:
            premise = texts["p"].removesuffix(".")
            connective = COPA_CONNECTIVES[asks_for]
            prompt = template.prompt.format(premise=premise, connective=connective)
            choices = tuple(
                template.choice.format(alternative=_lower_first(texts[tag])) for tag in ("a1", "a2")
            )
        by_id[item_id] = ChoiceItem(prompt=prompt, choices=choices, gold=int(answer) - 1)
    return [by_id[i] for i in sorted(by_id)]


def _before_blank(contexts: Sequence[str]) -> str:
    """The text before the blank: the contexts' common prefix cut at a word boundary."""
    prefix = os.path.commonprefix(list(contexts))
    if len(set(contexts)) > 1:
        prefix = prefix[: prefix.rfind(" ") + 1]  # "... but the b" -> "... but the "
    return prefix


def _blanked(contexts: Sequence[str]) -> str:
    """The sentence up to the blank: the contexts' common prefix cut at a word boundary + "_"."""
    return _before_blank(contexts) + "_"


def _read_winogrande(path: Path, style: str = "cloze") -> list[ChoiceItem]:
    template = TASK_TEMPLATES[style]["winogrande"]
    items = []
    for line, record in _read_jsonl(path):
        contexts = tuple(str(c).strip() for c in _field(path, line, record, "context_options"))
        continuation = str(_field(path, line, record, "continuation")).strip()
        if not continuation:
            raise ValueError(f"{path}:{line}: empty continuation")
        gold = int(_field(path, line, record, "gold"))
        if style == "instruction":
            items.append(
                _winogrande_instruction(path, line, template, contexts, continuation, gold)
            )
            continue
        choice = template.choice.format(continuation=continuation)
        if continuation.startswith(_NO_SPACE_BEFORE):
            choice = choice.lstrip(" ")  # "... the factory" + "." / "Sarah" + "'s face."
        items.append(
            ChoiceItem(
                prompt=_blanked(contexts),
                choices=(choice,) * len(contexts),
                gold=gold,
                prompts=tuple(template.prompt.format(context=c) for c in contexts),
            )
        )
    return items


def _winogrande_instruction(
    path: Path,
    line: int,
    template: TaskTemplate,
    contexts: Sequence[str],
    continuation: str,
    gold: int,
) -> ChoiceItem:
    """A WinoGrande record in the ``instruction`` format: the sentence with its blank, the two
    options labelled A and B, answered with the letter."""
    before = _before_blank(contexts)
    options = [c[len(before) :].strip() for c in contexts]
    if len(options) != len(LETTERS) or not all(options):
        raise ValueError(
            f"{path}:{line}: the instruction template needs two context options that differ "
            f"at the blank, got {list(contexts)!r}"
        )
    space = "" if continuation.startswith(_NO_SPACE_BEFORE) else " "
    sentence = f"{before}_{space}{continuation}"
    prompt = template.prompt.format(sentence=sentence, option_a=options[0], option_b=options[1])
    return ChoiceItem(
        prompt=prompt,
        choices=tuple(template.choice.format(letter=letter) for letter in LETTERS),
        gold=gold,
    )


_READERS = {"boolq": _read_boolq, "copa": _read_copa, "winogrande": _read_winogrande}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def check_template(template: str) -> None:
    """A clear error for an unknown prompt format."""
    if template not in TEMPLATE_NAMES:
        raise ValueError(
            f"unknown template {template!r}; expected one of {', '.join(TEMPLATE_NAMES)} "
            "(cloze: the answer continues the text; instruction: options labelled, answered "
            "with a letter or Yes/No)"
        )


def load_task_items(
    task: str, data_dir: str | Path | None = None, template: str = "cloze"
) -> list[ChoiceItem]:
    """All items of a task, in file order (COPA: by id), rendered in one prompt format.

    Args:
        task: ``"boolq"``, ``"copa"`` or ``"winogrande"``.
        data_dir: Folder holding :data:`TASK_FILES` (default: the lookup order of
            :mod:`datamodules.sources`, ending with ``../shared/data``).
        template: ``"cloze"`` (:data:`TEMPLATES`) or ``"instruction"``
            (:data:`INSTRUCTION_TEMPLATES`); see the module docstring.

    Raises:
        ValueError: Unknown task or template, or malformed record (the message names file and
            line / id).
        FileNotFoundError: The task's file is missing (a ``DataFileNotFoundError``).
    """
    check_task(task)
    check_template(template)
    path = find_data_file(TASK_FILES[task], data_dir, who=f"{task}: ")
    return _READERS[task](path, template)


# ---------------------------------------------------------------------------- download
def download_task_file(
    task: str,
    data_dir: str | Path | None = None,
    timeout: float = 60.0,
    base_url: str | None = None,
) -> Path:
    """Download a task's file into ``data_dir`` (needs internet access).

    The files are the ones ``../shared/data`` holds: BoolQ and WinoGrande in MosaicML
    llm-foundry's format, COPA from the Balanced-COPA archive, all at pinned commits and checked
    against their SHA-256 (:data:`datamodules.sources.SETS`), so a download gives the same items
    and splits as the shared copy. The file is written atomically (no half-written file on
    failure); one already there and verified is kept.

    Args:
        task: ``"boolq"``, ``"copa"`` or ``"winogrande"``.
        data_dir: Destination folder; the file goes to ``data_dir / TASK_FILES[task]``
            (default: ``$LEARNED_INTERVENTIONS_DATA``, else the user cache).
        timeout: Seconds to wait for the server.
        base_url: A mirror of ``https://raw.githubusercontent.com`` (same layout).

    Returns:
        The path of the downloaded file.

    Raises:
        ConnectionError: The download failed (e.g. no internet access; a
            :class:`datamodules.fetch.DownloadError`).
        ValueError: The downloaded file has an unexpected checksum (a
            :class:`datamodules.fetch.ChecksumError`).
    """
    check_task(task)
    return fetch_file(FILES[TASK_FILES[task]], data_dir, base_url=base_url, timeout=timeout).path
