"""Tests of MWEDataModule (MWE / CAA behaviours as A/B items) with SmolLM2's tokenizer and chat
template, read from the tiny SmolLM2-vocabulary backbone folder (no 135M weights are loaded)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from jinja2.exceptions import TemplateError

from datamodules import (
    BASE_SYSTEM_MESSAGE,
    BEHAVIOR_DESCRIPTIONS,
    VARIANTS,
    W2S_BEHAVIORS,
    MWEDataModule,
    available_behaviors,
    resolve_behavior,
)
from datamodules.base import ContrastiveExample, default_data_dir
from datamodules.mwe_items import CONTRAST_DESCRIPTIONS, render_prompt
from interventions.core.backbone import load_tokenizer

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(
    not (DATA / "mwe").is_dir() or not (DATA / "caa").is_dir(),
    reason="../shared/data (mwe/, caa/) is not available",
)

LM = DATA / "mwe" / "advanced-ai-risk" / "lm_generated_evals"
HUMAN = DATA / "mwe" / "advanced-ai-risk" / "human_generated_evals"
PERSONA = DATA / "mwe" / "persona"

SYS = "<|im_start|>system\n"
USER = "<|im_end|>\n<|im_start|>user\n"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n("


@pytest.fixture(scope="module")
def make(tiny_backbone_dir):
    """``make(**kwargs)``: an MWEDataModule on the tiny SmolLM2-vocabulary backbone.

    The tokenizer is loaded once and shared (datamodules only read it), which keeps the tests
    fast; ``test_tokenizer_merging_the_answer_is_a_clear_error`` loads its own by path.
    """
    shared = load_tokenizer(tiny_backbone_dir)

    def factory(**kwargs: Any) -> MWEDataModule:
        dm = MWEDataModule(backbone=tiny_backbone_dir, **kwargs)
        if dm.padding_side == shared.padding_side:
            dm._tokenizer = shared
        return dm

    return factory


def all_examples(dm: MWEDataModule) -> list[ContrastiveExample]:
    return dm.train_examples + dm.val_examples + dm.test_examples


def parts(prompt: str) -> tuple[str, str]:
    """(system, user) message texts of a prompt rendered with SmolLM2's chat template."""
    match = re.fullmatch(
        re.escape(SYS) + r"(.*)" + re.escape(USER) + r"(.*)" + re.escape(ASSISTANT),
        prompt,
        flags=re.DOTALL,
    )
    assert match is not None, prompt
    return match.group(1), match.group(2)


def read_jsonl(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def persona_line(statement: str = "I like tests", matching: str = " Yes") -> str:
    other = " No" if matching == " Yes" else " Yes"
    return json.dumps(
        {
            "question": f'Is the following statement something you would say?\n"{statement}"',
            "statement": statement,
            "answer_matching_behavior": matching,
            "answer_not_matching_behavior": other,
        }
    )


# ---------------------------------------------------------------------------- persona conversion
def test_persona_ab_conversion_puts_half_of_the_matching_answers_on_a(make):
    records = read_jsonl(PERSONA / "narcissism.jsonl")
    index_of = {r["question"]: i for i, r in enumerate(records)}
    assert len(records) == len(index_of) == 1000
    dm = make(behavior="narcissism")
    examples = all_examples(dm)
    assert len(examples) == dm.num_available == 1000
    assert sum(ex.correct == "A" for ex in examples) == 500
    for ex in examples:
        system, user = parts(ex.prompt)
        assert system == BASE_SYSTEM_MESSAGE
        question, choices = user.split("\n\nChoices:\n")
        line_a, line_b = choices.split("\n")
        assert line_a.startswith("(A): ") and line_b.startswith("(B): ")
        text = {"A": line_a.removeprefix("(A): "), "B": line_b.removeprefix("(B): ")}
        record = records[index_of[question]]
        assert text[ex.correct] == record["answer_matching_behavior"].strip()
        assert text[ex.wrong] == record["answer_not_matching_behavior"].strip()
        assert {ex.correct, ex.wrong} == {"A", "B"}
        assert ex.correct == ("A" if index_of[question] % 2 == 0 else "B")


# ---------------------------------------------------------------------------- x-risk files
def test_meta_tags_are_stripped(make):
    path = LM / "self-awareness-training-web-gpt.jsonl"
    records = read_jsonl(path)
    with_meta = [r for r in records if "<META_START>" in r["question"]]
    assert with_meta, "the test file should have META tags"
    dm = make(
        behavior="lm_generated/self-awareness-training-web-gpt", max_examples=20, deduplicate=False
    )
    examples = dm.build_examples()
    assert not any("META_" in ex.prompt for ex in examples)
    # "No,<META_START>pile-stackexchange<META_END> I only have access ..." loses its tag
    assert sum("(B) No, I only have access to the information" in ex.prompt for ex in examples)
    # every stripped question is in a prompt, in file order
    kept = [r for r in records if "(C)" not in r["question"]]
    assert len(examples) == len(kept) == len(records) - 1
    for record, ex in zip(kept, examples, strict=True):
        question = re.sub(r"<META_START>.*?<META_END>", "", record["question"], flags=re.DOTALL)
        assert parts(ex.prompt)[1] == question.strip()
        assert ex.correct == record["answer_matching_behavior"].strip(" ()")
        assert ex.wrong == record["answer_not_matching_behavior"].strip(" ()")


@pytest.mark.parametrize("name", ["power-seeking-inclination", "survival-instinct"])
def test_three_option_items_are_skipped(make, name):
    records = read_jsonl(HUMAN / f"{name}.jsonl")
    kept = [r for r in records if "(C)" not in r["question"]]
    n_three = len(records) - len(kept)
    assert n_three > 0
    dm = make(behavior=f"human_generated/{name}", max_examples=10)
    assert dm.num_skipped == n_three
    assert dm.num_available == len(kept)
    assert dm.behavior_file == HUMAN / f"{name}.jsonl"
    examples = dm.build_examples()
    for record, ex in zip(kept, examples, strict=True):
        assert "(C)" not in ex.prompt
        assert parts(ex.prompt)[1] == record["question"].strip()
        assert ex.correct == record["answer_matching_behavior"].strip(" ()")


# ---------------------------------------------------------------------------- splits
def test_split_sizes_are_40_10_50_and_disjoint(make):
    dm = make(behavior="openness")
    train, val, test = dm.train_examples, dm.val_examples, dm.test_examples
    assert (len(train), len(val), len(test)) == (400, 100, 500)
    prompts = [{ex.prompt for ex in split} for split in (train, val, test)]
    assert [len(p) for p in prompts] == [400, 100, 500]  # the persona questions are distinct
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    capped = make(behavior="openness", max_examples=100)
    assert [len(s) for s in (capped.train_examples, capped.val_examples, capped.test_examples)] == [
        40,
        10,
        50,
    ]
    assert capped.num_available == 1000  # the cap limits the splits, not the pool


def test_max_examples_takes_the_first_items_of_the_seeded_shuffle(make):
    full = make(behavior="corrigible-neutral-HHH")
    capped = make(behavior="corrigible-neutral-HHH", max_examples=50)
    assert capped.train_examples == full.train_examples[:20]
    assert capped.val_examples == full.train_examples[20:25]
    assert capped.test_examples == full.train_examples[25:50]


def test_split_sizes_from_fractions(make):
    dm = make(behavior="narcissism")
    assert dm.split_sizes(1000) == (400, 100, 500)
    assert dm.split_sizes(933) == (373, 93, 467)
    assert dm.split_sizes(7) == (2, 0, 5)
    other = make(train_fraction=0.29, val_fraction=0.71, max_examples=100)
    assert other.split_sizes(1000) == (29, 71, 0)
    assert other.split_sizes(30) == (8, 21, 1)
    assert make(train_fraction=0.7, val_fraction=0.2).split_sizes(10) == (7, 2, 1)
    assert make(train_fraction=0.0, val_fraction=0.29).split_sizes(100) == (0, 29, 71)


def test_same_seed_same_splits_other_seed_different(make):
    a, b, c = (make(seed=s, max_examples=60) for s in (0, 0, 1))
    assert all_examples(a) == all_examples(b)
    assert a.train_examples != c.train_examples
    assert sorted(ex.prompt for ex in all_examples(a)) != sorted(
        ex.prompt for ex in a.train_examples
    )


@pytest.mark.parametrize("behavior", ["corrigible-neutral-HHH", "narcissism"])
def test_variants_keep_the_same_items_in_every_split(make, behavior):
    base = make(behavior=behavior, max_examples=80)
    base_splits = [base.train_examples, base.val_examples, base.test_examples]
    positive, negative = (d + "." for d in BEHAVIOR_DESCRIPTIONS[behavior])
    prefix = {"user_pos": positive + "\n\n", "user_neg": negative + "\n\n"}
    for variant in VARIANTS[1:]:
        other = make(behavior=behavior, variant=variant, max_examples=80)
        other_splits = [other.train_examples, other.val_examples, other.test_examples]
        for base_split, other_split in zip(base_splits, other_splits, strict=True):
            assert len(base_split) == len(other_split)
            for b, o in zip(base_split, other_split, strict=True):
                assert (b.correct, b.wrong) == (o.correct, o.wrong)
                question = parts(b.prompt)[1]
                assert parts(o.prompt)[1] == prefix.get(variant, "") + question
                assert o.prompt != b.prompt


# ---------------------------------------------------------------------------- prompts, variants
def test_variant_text_placement(make):
    behavior = "corrigible-neutral-HHH"
    positive, negative = BEHAVIOR_DESCRIPTIONS[behavior]
    question = parts(make(behavior=behavior, max_examples=5).train_examples[0].prompt)[1]
    expected = {
        "base": SYS + BASE_SYSTEM_MESSAGE + USER + question + ASSISTANT,
        "sys_pos": SYS + positive + "." + USER + question + ASSISTANT,
        "sys_neg": SYS + negative + "." + USER + question + ASSISTANT,
        "user_pos": SYS + BASE_SYSTEM_MESSAGE + USER + positive + ".\n\n" + question + ASSISTANT,
        "user_neg": SYS + BASE_SYSTEM_MESSAGE + USER + negative + ".\n\n" + question + ASSISTANT,
    }
    for variant, prompt in expected.items():
        dm = make(behavior=behavior, variant=variant, max_examples=5)
        assert dm.train_examples[0].prompt == prompt, variant
        if variant.startswith("sys_"):
            assert BASE_SYSTEM_MESSAGE not in prompt
        # the other description never appears
        unused = negative if variant.endswith("_pos") else positive
        assert unused not in prompt


def test_description_overrides_and_final_period(make):
    dm = make(
        behavior="openness",
        variant="sys_pos",
        positive_description="You love new ideas!",
        max_examples=5,
    )
    assert parts(dm.train_examples[0].prompt)[0] == "You love new ideas!"
    dm = make(behavior="openness", variant="user_neg", negative_description="  Be dull ")
    assert parts(dm.format_prompt("Q?"))[1] == "Be dull.\n\nQ?"
    # the built-in positive text stays for the other side
    assert dm.descriptions == (BEHAVIOR_DESCRIPTIONS["openness"][0], "  Be dull ")


def test_prompts_end_with_paren_and_letters_are_one_token(make, smol_tokenizer):
    dm = make(behavior="caa/sycophancy", max_examples=40)
    ids = {letter: smol_tokenizer.encode(letter, add_special_tokens=False) for letter in "AB("}
    assert all(len(v) == 1 for v in ids.values())
    for ex in all_examples(dm):
        assert ex.prompt.endswith("(")
        assert not ex.prompt.startswith("<|im_start|><|im_start|>")
        prompt_ids = smol_tokenizer(ex.prompt)["input_ids"]
        assert prompt_ids[-1] == ids["("][0]
        for letter in "AB":
            assert smol_tokenizer(ex.prompt + letter)["input_ids"] == prompt_ids + ids[letter]


def test_train_batches_hold_the_letter_ids(make, smol_tokenizer):
    dm = make(behavior="myopic-reward", max_examples=50, batch_size=8)
    id_a, id_b, id_paren = (smol_tokenizer.convert_tokens_to_ids(t) for t in ("A", "B", "("))
    by_prompt = {ex.prompt: ex for ex in dm.train_examples}
    rows = 0
    for batch in dm.train_dataloader():
        assert set(batch["correct_id"].tolist()) <= {id_a, id_b}
        assert torch.equal(
            batch["correct_id"] + batch["wrong_id"],
            torch.full_like(batch["correct_id"], id_a + id_b),
        )
        assert bool((batch["input_ids"][:, -1] == id_paren).all())  # left padding
        assert bool(batch["attention_mask"][:, -1].all())
        for prompt, correct in zip(batch["prompts"], batch["correct_id"].tolist()):
            assert correct == {"A": id_a, "B": id_b}[by_prompt[prompt].correct]
            rows += 1
    assert rows == len(dm.train_examples) == 20


def test_render_prompt_without_chat_template(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    assert render_prompt(tok, "Sys.", "Q?") == "Sys.\n\nUser: Q?\n\nAssistant: ("


class StubTokenizer:
    """A tokenizer whose template writes a BOS and may reject the system role."""

    bos_token = "<s>"
    bos_token_id = 1
    chat_template = "stub"

    def __init__(self, adds_bos: bool, system_role: bool = True) -> None:
        self.adds_bos = adds_bos
        self.system_role = system_role

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": ([1] if self.adds_bos else []) + [5] * len(text)}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt) -> str:
        assert tokenize is False and add_generation_prompt is True
        if not self.system_role and messages[0]["role"] == "system":
            raise TemplateError("System role not supported")
        return "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


def test_render_prompt_bos_and_system_role():
    assert render_prompt(StubTokenizer(adds_bos=True), "S", "U") == "[system]S[user]U[assistant]("
    assert render_prompt(StubTokenizer(adds_bos=False), "S", "U") == (
        "<s>[system]S[user]U[assistant]("
    )
    no_system = StubTokenizer(adds_bos=False, system_role=False)
    assert render_prompt(no_system, "S", "U") == "<s>[user]S\n\nU[assistant]("


def test_tokenizer_merging_the_answer_is_a_clear_error(make):
    class Spaced(MWEDataModule):
        def format_prompt(self, question: str, adds_bos: bool | None = None) -> str:
            return super().format_prompt(question, adds_bos)[:-1] + " "  # " A" is one token

    dm = Spaced(backbone=make().backbone, max_examples=5)
    with pytest.raises(ValueError, match="merges"):
        dm.setup()


# ---------------------------------------------------------------------------- behaviours
def test_all_w2s_behaviours_resolve_and_build(make):
    assert len(W2S_BEHAVIORS) == 13 and set(W2S_BEHAVIORS) == set(BEHAVIOR_DESCRIPTIONS)
    for name in W2S_BEHAVIORS:
        path = resolve_behavior(name)
        assert path.is_file() and path.stem == name
        assert path.parent in (PERSONA, LM)  # lm_generated before human_generated
        dm = make(behavior=name, variant="sys_neg", deduplicate=False)
        examples = dm.build_examples()
        n_items = len(read_jsonl(path))
        n_three = sum("(C)" in r["question"] for r in read_jsonl(path))
        assert len(examples) == n_items - n_three > 900
        assert {ex.correct for ex in examples} == {"A", "B"}


@pytest.mark.parametrize(
    "name,files",
    [
        ("caa/sycophancy", ["generate_dataset.json", "test_dataset.json"]),
        ("caa/refusal", ["test_dataset_ab.json"]),
    ],
)
def test_caa_folders_load(make, name, files):
    folder = DATA / name
    records = [r for f in files for r in json.loads((folder / f).read_text(encoding="utf-8"))]
    dm = make(behavior=name, max_examples=10, deduplicate=False)
    assert dm.behavior_file == folder
    examples = dm.build_examples()
    assert len(examples) == len(records) == dm.num_available
    for record, ex in zip(records, examples, strict=True):
        assert parts(ex.prompt)[1] == record["question"].strip()
        assert ex.correct == record["answer_matching_behavior"].strip("()")


def test_available_behaviors_and_qualified_names():
    names = available_behaviors()
    assert list(names) == sorted(names)
    assert names["corrigible-neutral-HHH"] == LM / "corrigible-neutral-HHH.jsonl"
    assert names["self-awareness-web-gpt"] == HUMAN / "self-awareness-web-gpt.jsonl"
    assert names["narcissism"] == PERSONA / "narcissism.jsonl"
    assert names["sycophancy"] == DATA / "caa" / "sycophancy"
    assert resolve_behavior("human_generated/corrigible-neutral-HHH") == (
        HUMAN / "corrigible-neutral-HHH.jsonl"
    )
    assert resolve_behavior("caa/refusal") == DATA / "caa" / "refusal"


def test_hparams_hold_the_config(make):
    dm = make(behavior="openness", variant="user_pos", max_examples=7)
    assert dm.hparams["behavior"] == "openness"
    assert dm.hparams["variant"] == "user_pos" and dm.hparams["max_examples"] == 7


# ---------------------------------------------------------------------------- errors
def test_unknown_behaviour_lists_the_available_names(make):
    with pytest.raises(ValueError, match="unknown behavior 'nope'") as info:
        make(behavior="nope").setup()
    message = str(info.value)
    listed = message.split("Available behaviors: ")[1].split(". ")[0]
    assert listed == ", ".join(sorted(available_behaviors()))
    assert "--data.data_dir" in message
    with pytest.raises(ValueError, match="no behavior 'narcissism' in source 'lm_generated'"):
        resolve_behavior("lm_generated/narcissism")
    with pytest.raises(ValueError, match="unknown source 'foo'"):
        resolve_behavior("foo/narcissism")


def test_missing_data_folder_is_a_clear_error(make, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="data_dir") as info:
        make(data_dir=str(missing)).setup()
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match="has no mwe/ or caa/ folder"):
        available_behaviors(tmp_path)


@pytest.mark.parametrize(
    "third_line,message",
    [
        ('{"question": "broken', r"broken\.jsonl: line 3: not valid JSON"),
        ("[1, 2]", r"broken\.jsonl: line 3: expected a JSON object, got list"),
        (
            json.dumps({"question": "Q", "answer_matching_behavior": " Yes"}),
            r"broken\.jsonl: line 3: missing key 'answer_not_matching_behavior'",
        ),
        (persona_line(matching=" Maybe"), r"broken\.jsonl: line 3: answers must be 'Yes' and 'No'"),
    ],
)
def test_malformed_jsonl_names_file_and_line(make, tmp_path, third_line, message):
    write_jsonl(tmp_path / "mwe/persona/broken.jsonl", [persona_line(), persona_line(), third_line])
    with pytest.raises(ValueError, match=message):
        make(behavior="broken", data_dir=str(tmp_path)).setup()


def test_empty_lines_are_skipped_and_counted_in_line_numbers(make, tmp_path):
    good = [persona_line("one"), "", persona_line("two", " No"), "   ", persona_line("three")]
    write_jsonl(tmp_path / "mwe/persona/ok.jsonl", good)
    dm = make(behavior="ok", data_dir=str(tmp_path), train_fraction=1.0, val_fraction=0.0)
    examples = dm.build_examples()
    assert [ex.correct for ex in examples] == ["A", "B", "A"]
    assert "(A): Yes\n(B): No" in examples[1].prompt  # matching " No" on B for index 1
    write_jsonl(tmp_path / "mwe/persona/bad.jsonl", good + ["", "{"])
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 7: not valid JSON"):
        make(behavior="bad", data_dir=str(tmp_path)).setup()


def test_bad_ab_answers_and_json_list_items(make, tmp_path):
    item = {"question": "Q?\n\nChoices:\n (A) x\n (B) y", "answer_not_matching_behavior": " (A)"}
    write_jsonl(
        tmp_path / "mwe/advanced-ai-risk/lm_generated_evals/xr.jsonl",
        [json.dumps({**item, "answer_matching_behavior": " (D)"})],
    )
    with pytest.raises(ValueError, match=r"xr\.jsonl: line 1: answers must be 'A' and 'B'"):
        make(behavior="xr", data_dir=str(tmp_path)).setup()
    folder = tmp_path / "caa" / "mine"
    folder.mkdir(parents=True)
    good = {**item, "answer_matching_behavior": "(B)", "answer_not_matching_behavior": "(A)"}
    (folder / "test_dataset.json").write_text(json.dumps([good, {"question": "Q"}]))
    with pytest.raises(ValueError, match=r"test_dataset\.json: item index 1: missing key"):
        make(behavior="caa/mine", data_dir=str(tmp_path)).setup()
    (folder / "test_dataset.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match=r"expected a JSON list of items, got dict"):
        make(behavior="mine", data_dir=str(tmp_path)).setup()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(train_fraction=0.8, val_fraction=0.3), "at most 1"),
        (dict(train_fraction=-0.1), "train_fraction must be in"),
        (dict(val_fraction=1.5), "val_fraction must be in"),
        (dict(max_examples=0), "max_examples"),
        (dict(variant="sys"), "variant must be one of"),
        (dict(variant="user_pos", positive_description=" "), "must not be empty"),
    ],
)
def test_bad_arguments(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


@pytest.mark.parametrize("variant", ["sys_pos", "user_neg"])
def test_variant_without_description_needs_one(make, variant):
    with pytest.raises(ValueError, match="--data.positive_description/--data.negative_description"):
        make(behavior="coordinate-itself", variant=variant)
    with pytest.raises(ValueError, match="no built-in one"):
        make(behavior="caa/sycophancy", variant=variant)
    given = dict(positive_description="Be sycophantic", negative_description="Be honest")
    dm = make(behavior="caa/sycophancy", variant=variant, max_examples=5, **given)
    text = "Be sycophantic." if variant == "sys_pos" else "Be honest.\n\n"
    assert text in dm.train_examples[0].prompt


def test_repeated_questions_are_dropped_once(make):
    path = LM / "myopic-reward.jsonl"
    records = read_jsonl(path)
    distinct = {
        re.sub(r"<META_START>.*?<META_END>", "", r["question"], flags=re.DOTALL).strip()
        for r in records
    }
    assert len(distinct) < len(records)  # the file repeats questions
    kept = make(behavior="myopic-reward").build_examples()
    everything = make(behavior="myopic-reward", deduplicate=False).build_examples()
    assert len(everything) == len(records)
    assert len(kept) == len(distinct)
    assert len({ex.prompt for ex in kept}) == len(kept)


# ---------------------------------------------------------------------------- contrast pairs
@pytest.mark.parametrize("behavior", list(CONTRAST_DESCRIPTIONS))
def test_system_contrast_differs_only_in_the_system_message(make, smol_tokenizer, behavior):
    positive, negative = CONTRAST_DESCRIPTIONS[behavior]
    dm = make(behavior=behavior, contrast="system", max_examples=40, batch_size=8)
    examples = all_examples(dm)
    assert len(examples) == 40
    for ex in examples:
        system, question = parts(ex.prompt)
        assert system == positive
        assert ex.corrupted_prompt == SYS + negative + USER + question + ASSISTANT
        assert len(smol_tokenizer(ex.prompt)["input_ids"]) == len(
            smol_tokenizer(ex.corrupted_prompt)["input_ids"]
        )
    # the descriptions alone have one token length, and the batches align position by position
    n_pos, n_neg = (
        len(smol_tokenizer.encode(t, add_special_tokens=False)) for t in (positive, negative)
    )
    assert n_pos == n_neg
    base = make(behavior=behavior, max_examples=40)
    for b, ex in zip(all_examples(base), examples, strict=True):
        assert parts(b.prompt)[1] == parts(ex.prompt)[1]
        assert (b.correct, b.wrong) == (ex.correct, ex.wrong)
        assert b.corrupted_prompt is None
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["corrupted_attention_mask"], batch["attention_mask"])
    for ids, corrupted in zip(batch["input_ids"], batch["corrupted_input_ids"], strict=True):
        differ = (ids != corrupted).nonzero().flatten()  # inside one description-long span
        assert 0 < len(differ) and int(differ[-1] - differ[0]) < n_pos
    assert "corrupted_input_ids" not in next(iter(base.train_dataloader()))


def test_user_contrast_puts_the_descriptions_before_the_question(make):
    positive, negative = CONTRAST_DESCRIPTIONS["neuroticism"]
    dm = make(behavior="neuroticism", contrast="user", max_examples=10)
    for ex in all_examples(dm):
        system, user = parts(ex.prompt)
        question = user.removeprefix(positive + "\n\n")
        assert system == BASE_SYSTEM_MESSAGE and user == positive + "\n\n" + question
        assert parts(ex.corrupted_prompt) == (BASE_SYSTEM_MESSAGE, negative + "\n\n" + question)


def test_contrast_descriptions_of_unequal_token_length_are_a_clear_error(make):
    dm = make(
        behavior="extraversion",
        contrast="system",
        positive_description="You are an extravert",
        negative_description="You are an introvert who is reserved and quiet",
        max_examples=10,
    )
    message = (
        r"contrast='system' needs positive and negative descriptions of the same token length"
        r".* prompts have \d+ and \d+ tokens .*Reword one of them"
    )
    with pytest.raises(ValueError, match=message):
        dm.setup()


@pytest.mark.parametrize("variant", ["sys_pos", "user_neg"])
@pytest.mark.parametrize("contrast", ["system", "user"])
def test_contrast_needs_the_base_variant(make, contrast, variant):
    with pytest.raises(ValueError, match=f"contrast='{contrast}' .* needs variant='base'"):
        make(behavior="extraversion", contrast=contrast, variant=variant)


def test_contrast_and_target_bad_values(make):
    with pytest.raises(ValueError, match="contrast must be 'none', 'system' or 'user'"):
        make(contrast="sys")
    with pytest.raises(ValueError, match="target must be 'matching' or 'not_matching'"):
        make(target="opposite")
    with pytest.raises(ValueError, match="needs a positive description"):
        make(behavior="caa/sycophancy", contrast="system")


@pytest.mark.parametrize("contrast", ["none", "system"])
def test_target_not_matching_swaps_the_answers(make, contrast):
    kw = dict(behavior="refusal", contrast=contrast, max_examples=30)
    matching, swapped = make(**kw), make(target="not_matching", **kw)
    records = json.loads((DATA / "caa" / "refusal" / "test_dataset_ab.json").read_text())
    by_question = {r["question"].strip(): r for r in records}
    assert len(by_question) >= 30
    for a, b in zip(all_examples(matching), all_examples(swapped), strict=True):
        assert (a.prompt, a.corrupted_prompt) == (b.prompt, b.corrupted_prompt)
        assert (b.correct, b.wrong) == (a.wrong, a.correct)
        record = by_question[parts(a.prompt)[1]]
        assert a.correct == record["answer_matching_behavior"].strip(" ()")
        assert b.correct == record["answer_not_matching_behavior"].strip(" ()")
