"""Tests of the commonsense multiple-choice data (BoolQ, COPA, WinoGrande) and of the batched
answer scoring in ``interventions.evaluation.multiple_choice``, on the tiny SmolLM2-vocabulary backbone (no
135M weights are loaded)."""

from __future__ import annotations

import bz2
import io
import json
import tarfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import datamodules.commonsense_items as commonsense
from datamodules.base import default_data_dir
from datamodules.commonsense import (
    TASK_FILES,
    TASKS,
    ChoiceCollator,
    ChoiceItem,
    CommonsenseDataModule,
    ContrastivePair,
    answer_read_offsets,
    contrastive_pairs,
    download_task_file,
    load_task_items,
)
from interventions.core.backbone import load_backbone, load_tokenizer
from interventions.core.sites import layers, model_dims
from interventions.edits import SteerVec
from interventions.evaluation.multiple_choice import (
    MultipleChoiceAccuracy,
    choice_logprobs,
    choice_scores,
    evaluate_accuracy,
    predict_choices,
)
from tests.conftest import random_batch

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(
    not all((DATA / f).is_file() for f in TASK_FILES.values()),
    reason="../shared/data (boolq/, copa/, winogrande/) is not available",
)

COUNTS = {"boolq": 3270, "copa": 500, "winogrande": 1267}
SPLITS = {"boolq": (1000, 100, 2170), "copa": (200, 100, 200), "winogrande": (583, 100, 584)}


@pytest.fixture(scope="module")
def items() -> dict[str, list[ChoiceItem]]:
    """Every item of every task, read once."""
    return {task: load_task_items(task) for task in TASKS}


@pytest.fixture(scope="module")
def instruction_items() -> dict[str, list[ChoiceItem]]:
    """Every item of every task in the instruction format, read once."""
    return {task: load_task_items(task, template="instruction") for task in TASKS}


@pytest.fixture(scope="module")
def tok(tiny_backbone_dir):
    return load_tokenizer(tiny_backbone_dir)


@pytest.fixture(scope="module")
def make(tiny_backbone_dir, tok):
    """``make(**kwargs)``: a CommonsenseDataModule on the tiny backbone, sharing one tokenizer."""

    def factory(**kwargs: Any) -> CommonsenseDataModule:
        dm = CommonsenseDataModule(backbone=tiny_backbone_dir, **kwargs)
        if dm.padding_side == tok.padding_side:
            dm._tokenizer = tok
        return dm

    return factory


@pytest.fixture(scope="module")
def model(tiny_backbone_dir):
    return load_backbone(tiny_backbone_dir)[0]


# ---------------------------------------------------------------------------- data
@pytest.mark.parametrize("task", TASKS)
def test_item_counts_and_split_sizes(task, make):
    dm = make(task=task)
    assert dm.num_items == COUNTS[task]
    assert (len(dm.pool_items), len(dm.val_items), len(dm.test_items)) == SPLITS[task]


def test_copa_uses_the_500_labelled_items(items):
    assert len(items["copa"]) == 500
    assert Counter(item.gold for item in items["copa"]) == {0: 243, 1: 257}


@pytest.mark.parametrize("task", TASKS)
def test_splits_partition_the_items_and_are_seeded(task, make, items):
    dm, again, other = make(task=task), make(task=task), make(task=task, seed=1)
    splits = (dm.pool_items, dm.val_items, dm.test_items)
    assert splits == (again.pool_items, again.val_items, again.test_items)
    assert dm.pool_items != other.pool_items
    assert Counter(item for split in splits for item in split) == Counter(items[task])


def test_max_test_and_pool_size_cap(make):
    dm = make(task="copa", pool_size=50, num_val=20, max_test=30)
    full = make(task="copa", pool_size=50, num_val=20)
    assert (len(dm.pool_items), len(dm.val_items), len(dm.test_items)) == (50, 20, 30)
    assert dm.test_items == full.test_items[:30]
    assert len(full.test_items) == 500 - 70


def test_copa_template_on_item_1(items):
    assert items["copa"][0] == ChoiceItem(
        prompt="My body cast a shadow over the grass because",
        choices=(" the sun was rising.", " the grass was cut."),
        gold=0,
    )
    # id 9 asks for the effect: "The physician misdiagnosed the patient." / alternative 2
    assert items["copa"][8] == ChoiceItem(
        prompt="The physician misdiagnosed the patient therefore",
        choices=(
            " the patient disclosed confidential information to the physician.",
            " the patient filed a malpractice lawsuit against the physician.",
        ),
        gold=1,
    )


def test_copa_matches_superglue_val_in_llm_foundry_format(items):
    """Ids 401..500 are SuperGLUE's val set, which copa.jsonl holds (with a comma before the
    connective and the choices possibly swapped)."""
    with open(DATA / "copa" / "copa.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert len(records) == 100
    for item, record in zip(items["copa"][400:], records):
        assert item.prompt == record["query"].replace(", because", " because").replace(
            ", therefore", " therefore"
        )
        assert sorted(item.choices) == sorted(" " + c for c in record["choices"])
        assert item.choices[item.gold] == " " + record["choices"][record["gold"]]


def test_boolq_template(items):
    first = items["boolq"][0]
    assert first.prompt.startswith("Passage: All biomass goes through at least some")
    assert first.prompt.endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert first.choices == (" no", " yes") and first.gold == 0
    assert all(item.prompt.count("?\nAnswer:") == 1 for item in items["boolq"])
    assert not any("??\nAnswer:" in item.prompt for item in items["boolq"])
    assert Counter(item.gold for item in items["boolq"]) == {1: 2033, 0: 1237}


def test_winogrande_template_scores_the_shared_continuation(items):
    first = items["winogrande"][0]
    assert first.prompts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert first.choices == (" always got the easier cases.",) * 2 and first.gold == 1
    assert first.prompt == "Sarah was a much better surgeon than Maria so _"
    assert (
        first.text(1)
        == "Sarah was a much better surgeon than Maria so Maria always got the easier cases."
    )
    period = next(item for item in items["winogrande"] if item.choices[0] == ".")
    assert period.text(0).endswith(period.prompts[0] + ".")
    assert any(item.choices[0].startswith("'s ") for item in items["winogrande"])


def test_instruction_templates(items, instruction_items):
    """The paper's format: an instruction, the options labelled, a one-token answer; the same
    items and gold answers as the cloze format."""
    for task in TASKS:
        cloze, letters = items[task], instruction_items[task]
        assert len(letters) == len(cloze)
        assert [i.gold for i in letters] == [i.gold for i in cloze]
        assert all(item.prompt.endswith("\nAnswer:") and item.prompts is None for item in letters)
    boolq = instruction_items["boolq"][0]
    assert boolq.prompt.startswith(
        "Read the passage and answer the question with Yes or No.\nPassage: All biomass goes"
    )
    assert boolq.prompt.endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert boolq.choices == (" No", " Yes") and boolq.gold == 0
    assert instruction_items["copa"][0] == ChoiceItem(
        prompt="Choose the more plausible cause of the premise. Answer with A or B.\n"
        "Premise: My body cast a shadow over the grass.\n"
        "A. The sun was rising.\nB. The grass was cut.\nAnswer:",
        choices=(" A", " B"),
        gold=0,
    )
    assert instruction_items["copa"][8].prompt.startswith(
        "Choose the more plausible effect of the premise."
    )
    assert instruction_items["winogrande"][0] == ChoiceItem(
        prompt="Choose the option that fills the blank (_) in the sentence correctly. "
        "Answer with A or B.\n"
        "Sentence: Sarah was a much better surgeon than Maria so _ always got the easier "
        "cases.\nA. Sarah\nB. Maria\nAnswer:",
        choices=(" A", " B"),
        gold=1,
    )
    # a continuation that attaches to the blank keeps no space: "_'s" / "_."
    attached = [i for i in instruction_items["winogrande"] if "Sentence: " in i.prompt]
    assert any("_'s " in i.prompt for i in attached) and any(
        "_.\nA. " in i.prompt for i in attached
    )
    with pytest.raises(ValueError, match="unknown template 'chat'"):
        load_task_items("copa", template="chat")
    with pytest.raises(ValueError, match="unknown template"):
        CommonsenseDataModule(task="copa", template="chat")  # type: ignore[arg-type]


def test_contrastive_pairs(make):
    for task in TASKS:
        dm = make(task=task, pool_size=40)
        pairs = dm.contrastive_pairs()
        assert len(pairs) == 40
        for item, pair in zip(dm.pool_items, pairs):
            wrong = 1 - item.gold
            assert pair == ContrastivePair(item.text(item.gold), item.text(wrong))
            assert pair.positive.endswith(item.choices[item.gold])
            if task == "winogrande":
                assert pair.positive.startswith(item.prompts[item.gold])
                assert pair.negative.startswith(item.prompts[wrong])
    # the wrong answer is drawn among several, seeded
    many = [ChoiceItem("Q:", (" a", " b", " c", " d"), gold=2)] * 50
    drawn = [p.negative for p in contrastive_pairs(many, seed=0)]
    assert drawn == [p.negative for p in contrastive_pairs(many, seed=0)]
    assert set(drawn) == {"Q: a", "Q: b", "Q: d"}


@pytest.mark.parametrize("side", ["left", "right"])
def test_pair_batches(make, tok, side):
    dm = make(task="copa", pool_size=6, batch_size=4, padding_side=side)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {
        "pos_input_ids",
        "pos_attention_mask",
        "neg_input_ids",
        "neg_attention_mask",
        "pos_read_offset",
        "neg_read_offset",
    }
    first = commonsense.longest_first(dm.contrastive_pairs())[:4]  # the loader's order
    for key, texts in (
        ("pos", [p.positive for p in first]),
        ("neg", [p.negative for p in first]),
    ):
        ids, mask = batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"]
        assert ids.shape == mask.shape and ids.shape[0] == 4
        for row, text in enumerate(texts):
            assert ids[row][mask[row].bool()].tolist() == tok(text)["input_ids"]
        edge = mask[:, -1] if side == "left" else mask[:, 0]
        assert bool(edge.all())


def test_answer_read_offsets_by_hand():
    assert answer_read_offsets([1, 2, 3], [4, 2, 3]) == 2  # shared "2 3": read at 1 and 4
    assert answer_read_offsets([1, 2], [3, 4]) == 0  # the texts differ in their last token
    assert answer_read_offsets([9, 1, 2], [7, 9, 1, 2]) == 2  # another length
    assert answer_read_offsets([1, 2], [1, 2]) == 1  # one token of each stays before it
    assert answer_read_offsets([5], [6, 5]) == 0
    with pytest.raises(ValueError, match="statistic_token must be"):
        CommonsenseDataModule(task="copa", statistic_token="first")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("task", "template", "statistic_token"),
    [
        ("copa", "cloze", "answer"),
        ("winogrande", "cloze", "answer"),
        ("boolq", "cloze", "answer"),
        ("copa", "instruction", "answer"),
        ("winogrande", "instruction", "answer"),
        ("copa", "cloze", "last"),
    ],
)
@pytest.mark.parametrize("side", ["left", "right"])
def test_pairs_are_read_at_the_answer_token(make, tok, task, template, statistic_token, side):
    """The read token is the last one where positive and negative differ: COPA's answer word
    before the shared ".", WinoGrande's option before the shared continuation, the answer itself
    when the texts end in it (BoolQ, letters); ``last`` reads the final token."""
    dm = make(
        task=task, pool_size=16, batch_size=8, padding_side=side, template=template,
        statistic_token=statistic_token,
    )  # fmt: skip
    pairs = commonsense.longest_first(dm.contrastive_pairs())[:8]
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["pos_read_offset"], batch["neg_read_offset"])
    for row, pair in enumerate(pairs):
        pos, neg = tok(pair.positive)["input_ids"], tok(pair.negative)["input_ids"]
        offset = int(batch["pos_read_offset"][row])
        if statistic_token == "last":
            assert offset == 0
            continue
        assert pos[len(pos) - 1 - offset] != neg[len(neg) - 1 - offset]  # the answer token
        assert pos[len(pos) - offset :] == neg[len(neg) - offset :]  # then what both share
        if task == "copa" and template == "cloze":
            assert offset >= 1 and tok.decode(pos[len(pos) - offset :]).endswith(".")
        elif task == "winogrande" and template == "cloze":  # the continuation is shared
            shared = tok.decode(pos[len(pos) - offset :])
            assert offset >= 2 and pair.positive.endswith(shared)
            assert pair.negative.endswith(shared)
        else:
            assert offset == 0  # the answer ends the text: " yes" / " no", " A" / " B"


# ---------------------------------------------------------------------------- collator
def test_choice_batch_layout(tok, items):
    batch_items = [
        items["copa"][0],
        items["winogrande"][0],
        ChoiceItem("Pick:", (" a", " bb c", " d"), 1),
    ]
    for side in ("left", "right"):
        batch = ChoiceCollator(tok, continuation_padding_side=side)(batch_items)
        assert batch["item"].tolist() == [0, 0, 1, 1, 2, 2, 2]
        assert batch["gold"].tolist() == [0, 1, 1] and batch["num_choices"].tolist() == [2, 2, 3]
        assert bool(batch["prompt_mask"][:, -1].all())  # prompts always left padded
        cont_edge = batch["continuation_mask"][:, -1 if side == "left" else 0]
        assert bool(cont_edge.all())
        texts = [item.text(c) for item in batch_items for c in range(item.num_choices)]
        for row, text in enumerate(texts):
            p = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()].tolist()
            c = batch["continuation_ids"][row][batch["continuation_mask"][row].bool()].tolist()
            assert p + c == tok(text)["input_ids"]


def test_answer_boundary_needs_no_fallback(tok, items):
    collator = ChoiceCollator(tok)
    collator.encode(items["copa"] + items["winogrande"] + items["boolq"][:100])
    assert collator.num_fallbacks == 0


def test_letter_answers_are_one_token(tok, instruction_items):
    """Letter scoring: every choice of the instruction format is one token after its prompt."""
    collator = ChoiceCollator(tok)
    chosen = instruction_items["copa"] + instruction_items["winogrande"]
    rows = collator.encode(chosen + instruction_items["boolq"][:100])
    assert collator.num_fallbacks == 0
    assert all(len(answer) == 1 for _, answer in rows)


def test_boundary_fallback_tokenizes_the_choice_alone(tok):
    collator = ChoiceCollator(tok)
    item = ChoiceItem("Answer: ", ("yes",), 0)  # the trailing space merges into " yes"
    with pytest.warns(UserWarning, match="tokenized alone"):
        [(prompt, cont)] = collator.encode([item])
    assert collator.num_fallbacks == 1
    assert prompt == tok("Answer: ")["input_ids"]
    assert cont == tok.encode("yes", add_special_tokens=False)


# ---------------------------------------------------------------------------- scoring
def scoring_items(items: dict[str, list[ChoiceItem]]) -> list[ChoiceItem]:
    """Items with prompts and answers of varied lengths, per-choice prompts and 1-3 choices."""
    return [
        items["copa"][0],
        items["winogrande"][0],
        items["copa"][7],
        ChoiceItem("The colour of the sky is", (" blue", " a deep shade of green", " red"), 2),
        items["winogrande"][2],
        ChoiceItem("Yes or no?\nAnswer:", (" yes",), 0),
    ]


def steer_edit(model) -> SteerVec:
    torch.manual_seed(1)
    edit = SteerVec(model_dims(model), ["resid_post"], positions="last")
    with torch.no_grad():
        edit.params["resid_post"].normal_(0.0, 1.0)
    return edit


def adding_hook(delta: torch.Tensor):
    """A forward hook adding ``delta`` (``[T, d_model]``) to a decoder layer's output."""

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    return hook


def reference_scores(
    model, tok, items: list[ChoiceItem], edit: SteerVec | None
) -> list[list[tuple[float, int]]]:
    """(log-prob sum, token count) of every choice, one unpadded full sequence at a time.

    With an edit, forward hooks on the decoder layers add ``v`` to the residual stream at the
    prompt's last token and at every later (answer) token: what a ``positions="last"`` SteerVec
    does during cached scoring.
    """
    out = []
    for item in items:
        scores = []
        for c in range(item.num_choices):
            prompt_len = len(tok(item.prompt_of(c))["input_ids"])
            ids = torch.tensor([tok(item.text(c))["input_ids"]])  # [1, T]
            handles = []
            if edit is not None:
                steer = torch.zeros(ids.shape[1], 1)  # [T, 1]
                steer[prompt_len - 1 :] = 1.0
                for row, layer in enumerate(edit.layers):
                    vec = edit.params["resid_post"][row, 0].detach()  # [d_model]
                    hook = adding_hook(steer * vec)
                    handles.append(layers(model)[layer].register_forward_hook(hook))
            try:
                with torch.no_grad():
                    logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # [T, V]
            finally:
                for h in handles:
                    h.remove()
            targets = ids[0, prompt_len:]
            total = logp[prompt_len - 1 : -1].gather(1, targets[:, None]).sum()
            scores.append((float(total), len(targets)))
        out.append(scores)
    return out


@pytest.fixture(scope="module")
def references(model, tok, items):
    chosen = scoring_items(items)
    edit = steer_edit(model)
    return (
        chosen,
        edit,
        {
            "none": reference_scores(model, tok, chosen, None),
            "steer": reference_scores(model, tok, chosen, edit),
        },
    )


@pytest.mark.parametrize("edited", [False, True], ids=["clean", "steervec_last"])
@pytest.mark.parametrize("normalize", ["sum", "mean"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_scores_equal_one_sequence_at_a_time(
    model, tok, references, edited, normalize, side
):
    chosen, edit, refs = references
    ref = refs["steer" if edited else "none"]
    batch = ChoiceCollator(tok, continuation_padding_side=side)(chosen)
    with torch.no_grad():
        scores = choice_scores(model, batch, normalize=normalize, edit=edit if edited else None)
    expected = torch.full_like(scores, float("-inf"))
    for b, per_choice in enumerate(ref):
        for c, (total, count) in enumerate(per_choice):
            expected[b, c] = total / count if normalize == "mean" else total
    assert scores.shape == (len(chosen), 3)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


def test_edit_changes_scores_and_token_counts(model, tok, references):
    chosen, edit, refs = references
    batch = ChoiceCollator(tok)(chosen)
    with torch.no_grad():
        clean, count = choice_logprobs(model, batch)
        steered, _ = choice_logprobs(model, batch, edit=edit, beta=1.0)
    assert count.tolist() == [n for per in refs["none"] for _, n in per]
    assert float((clean - steered).abs().min()) > 1e-3


def test_accuracy_equals_hand_count(model, tok, references):
    chosen, edit, refs = references
    loader = DataLoader(chosen, batch_size=4, collate_fn=ChoiceCollator(tok))
    for name, used in (("none", None), ("steer", edit)):
        for normalize in ("sum", "mean"):
            hits = 0
            for item, per_choice in zip(chosen, refs[name]):
                values = [t / n if normalize == "mean" else t for t, n in per_choice]
                hits += int(max(range(len(values)), key=values.__getitem__) == item.gold)
            accuracy = evaluate_accuracy(model, loader, normalize=normalize, edit=used)
            assert accuracy == pytest.approx(hits / len(chosen))


def test_predict_and_metric(model, tok, references):
    chosen, _, _ = references
    batch = ChoiceCollator(tok)(chosen)
    with torch.no_grad():
        scores = choice_scores(model, batch, normalize="sum")
        pred = predict_choices(model, batch, normalize="sum")
    assert torch.isinf(scores[0, 2]) and torch.isinf(scores[5, 1:]).all()
    assert pred.tolist() == scores.argmax(1).tolist()
    metric = MultipleChoiceAccuracy()
    metric.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    metric.update(torch.tensor([2]), torch.tensor([2]))
    assert float(metric.compute()) == pytest.approx(0.75)


def test_scoring_rejects_right_padded_prompts(model, tok, items):
    batch = ChoiceCollator(tok)([items["copa"][0], items["copa"][1]])
    mask = batch["prompt_mask"]
    if bool(mask.all()):
        batch["prompt_mask"] = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)
    else:
        batch["prompt_mask"] = mask.flip(1)
    with pytest.raises(ValueError, match="left padded"):
        choice_logprobs(model, batch)


# ---------------------------------------------------------------------------- bad input
def test_unknown_task():
    with pytest.raises(ValueError, match="boolq, copa, winogrande"):
        CommonsenseDataModule(task="hellaswag")  # type: ignore[arg-type]


def test_empty_pool():
    with pytest.raises(ValueError, match="the contrastive pool is empty: pool_size=0"):
        CommonsenseDataModule(task="copa", pool_size=0)


def test_num_val_too_large(make):
    with pytest.raises(ValueError, match="num_val=500 is too large"):
        make(task="copa", num_val=500).setup()
    with pytest.raises(ValueError, match="the contrastive pool is empty"):
        make(task="copa", num_val=499).setup()


def test_missing_files_name_the_expected_files(make, tmp_path):
    dm = make(task="winogrande", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    for relative in TASK_FILES.values():
        assert relative in message
    assert str(tmp_path / "winogrande" / "winogrande.jsonl") in message
    assert "--data.download true" in message


# ---------------------------------------------------------------------------- download (no network)
class _Response(io.BytesIO):
    """What ``urllib.request.urlopen`` returns, for a whole body (status 200)."""

    status = 200

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copa_archive() -> bytes:
    data = (DATA / TASK_FILES["copa"]).read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("balanced_copa/balacopa-dev-all.xml")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return bz2.compress(buffer.getvalue())


def test_download_writes_checked_files(monkeypatch, make, tmp_path):
    payloads = {
        "boolq.jsonl": (DATA / TASK_FILES["boolq"]).read_bytes(),
        "balanced_copa.tar.bz2": _copa_archive(),
    }
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda request, timeout: _Response(payloads[request.full_url.rsplit("/", 1)[1]]),
    )
    for task in ("boolq", "copa"):
        path = download_task_file(task, tmp_path)
        assert path.read_bytes() == (DATA / TASK_FILES[task]).read_bytes()
    dm = make(task="copa", data_dir=str(tmp_path / "fresh"), download=True)
    assert dm.num_items == 500
    payloads["boolq.jsonl"] = b'{"query": "tampered"}\n'
    with pytest.raises(ValueError, match="SHA-256"):
        download_task_file("boolq", tmp_path / "other")
    assert not (tmp_path / "other" / TASK_FILES["boolq"]).exists()


def test_download_offline_is_a_clear_error(monkeypatch, tmp_path: Path):
    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match="could not download winogrande"):
        download_task_file("winogrande", tmp_path)


def test_batches_without_shared_prompts_score_as_one_at_a_time(model, tok, items):
    """Every row has its own prompt (WinoGrande): no cache sharing, rows keep their order."""
    chosen = [items["winogrande"][i] for i in (0, 2, 5)]
    edit = steer_edit(model)
    ref = reference_scores(model, tok, chosen, edit)
    batch = ChoiceCollator(tok)(chosen)
    with torch.no_grad():
        scores = choice_scores(model, batch, normalize="sum", edit=edit)
    expected = torch.tensor([[total for total, _ in per] for per in ref])
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- prefix reuse
def _mc_batch(cont_side: str) -> dict[str, torch.Tensor]:
    """Five items, nine rows: items 0, 1 and 3 share one prompt over their choices, item 2 has
    per-choice prompts (WinoGrande-like), item 4 one choice; prompt and answer lengths vary."""
    prompt_len = [7, 7, 5, 5, 5, 9, 11, 4, 4]  # rows; item of each row below
    item = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3])
    prompt_ids, prompt_mask, _ = random_batch(9, prompt_len, "left", seed=3)
    for a, b in ((0, 1), (2, 3), (2, 4), (7, 8)):  # choices of one item: the same prompt
        prompt_ids[b] = prompt_ids[a]
    cont_ids, cont_mask, _ = random_batch(9, [1, 3, 2, 2, 4, 1, 2, 3, 1], cont_side, seed=4)
    prompt_ids = torch.cat([prompt_ids, prompt_ids[:1]])  # item 4: one choice
    prompt_mask = torch.cat([prompt_mask, prompt_mask[:1]])
    cont_ids = torch.cat([cont_ids, cont_ids[1:2]])
    cont_mask = torch.cat([cont_mask, cont_mask[1:2]])
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "continuation_ids": cont_ids, "continuation_mask": cont_mask,
        "item": torch.cat([item, torch.tensor([4])]), "gold": torch.tensor([1, 2, 0, 1, 0]),
        "num_choices": torch.tensor([2, 3, 2, 2, 1]),
    }  # fmt: skip


@pytest.mark.parametrize("cont_side", ["left", "right"])
def test_prefix_reuse_equals_full_scoring(arch_model, cont_side):
    """Scores from a reused prompt prefix (last prompt token + answer re-run) equal the full
    two-call scoring, with no edit and with positions='last' AUScale / SteerVec edits; the
    stored prefix is not changed by a use; a positions='all' edit ignores the prefix."""
    from interventions.evaluation.multiple_choice import leaves_prefix_alone, prompt_prefix
    from interventions.methods.austeer.units import build_edit

    dims = model_dims(arch_model)
    batch = _mc_batch(cont_side)
    torch.manual_seed(0)
    scale = torch.zeros(dims.num_layers, dims.width("mlp_act"))
    scale.view(-1)[torch.randperm(scale.numel())[:6]] = torch.randn(6) * 3
    auscale = build_edit(dims, {"mlp_act": scale}, "auscale", "last")
    steer = SteerVec(dims, ["resid_post"], positions="last")
    everywhere = build_edit(dims, {"mlp_act": scale}, "auscale", "all")
    with torch.no_grad():
        steer.params["resid_post"].normal_(0.0, 1.0)
        prefix = prompt_prefix(arch_model, batch)
        assert prefix is not None
        for edit in (None, auscale, steer, everywhere):
            full, count = choice_logprobs(arch_model, batch, edit=edit)
            reused, count2 = choice_logprobs(arch_model, batch, edit=edit, prefix=prefix)
            again, _ = choice_logprobs(arch_model, batch, edit=edit, prefix=prefix)
            torch.testing.assert_close(reused, full, atol=1e-4, rtol=0)
            assert torch.equal(again, reused) and torch.equal(count2, count)
        assert not leaves_prefix_alone(everywhere) and leaves_prefix_alone(auscale)
        # the edits really change the scores (so the equality above is not vacuous)
        clean, _ = choice_logprobs(arch_model, batch)
        steered, _ = choice_logprobs(arch_model, batch, edit=steer, prefix=prefix)
        assert float((clean - steered).abs().max()) > 1e-3


def test_prefix_needs_two_prompt_tokens(llama):
    batch = _mc_batch("right")
    from interventions.evaluation.multiple_choice import prompt_prefix

    batch["prompt_ids"], batch["prompt_mask"] = (
        batch["prompt_ids"][:, -1:],
        batch["prompt_mask"][:, -1:],
    )
    assert prompt_prefix(llama, batch) is None  # nothing to reuse: scored in full instead
    full, _ = choice_logprobs(llama, batch)
    assert torch.isfinite(full).all()


def test_evaluate_many_equals_one_setting_at_a_time(model, tok, items):
    """One pass over the loader with a shared prefix gives each candidate's own accuracy."""
    from interventions.evaluation.multiple_choice import evaluate_many
    from interventions.methods.austeer.units import build_edit

    chosen = items["boolq"][:6] + items["copa"][:6] + items["winogrande"][:6]
    loader = DataLoader(chosen, batch_size=4, collate_fn=ChoiceCollator(tok))
    dims = model_dims(model)
    torch.manual_seed(2)
    candidates: list[Any] = [None]
    for strength in (0.0, 5.0, 50.0):
        values = torch.zeros(dims.num_layers, dims.width("mlp_act"))
        values.view(-1)[torch.randperm(values.numel())[:20]] = strength
        candidates.append((build_edit(dims, {"mlp_act": values}, "auscale", "last"), 1.0))
    candidates.append((steer_edit(model), 2.0))
    for normalize in ("sum", "mean"):
        many = evaluate_many(model, loader, candidates, normalize)
        single = [
            evaluate_accuracy(model, loader, normalize, *(c if c is not None else (None, 1.0)))
            for c in candidates
        ]
        assert many == single
    assert many[0] == many[1]  # a zero edit changes nothing
    with pytest.raises(ValueError, match="at least one candidate"):
        evaluate_many(model, loader, [])


@pytest.mark.parametrize("site", ["mlp_out", "attn_z"])
def test_all_position_edits_score_as_full_forward_passes(model, tok, items, site):
    """With ``positions="all"`` an edit changes every prompt token, so no prompt prefix is reused:
    the scores equal one unpadded forward pass over each prompt + choice with the edit attached,
    in a search (evaluate_many, next to a "last" edit that does reuse it) as in one setting."""
    from interventions.core.hooks import attach
    from interventions.evaluation.multiple_choice import (
        evaluate_many,
        leaves_prefix_alone,
        prompt_prefix,
    )
    from interventions.methods.austeer.units import build_edit

    chosen = scoring_items(items)
    dims = model_dims(model)
    values = torch.zeros(dims.num_layers, dims.width(site))
    values[0, :6] = 3.0
    values[1, 4:9] = -2.0
    edit = build_edit(dims, {site: values}, "auscale", "all")
    last = build_edit(dims, {site: values}, "auscale", "last")
    assert not leaves_prefix_alone(edit) and leaves_prefix_alone(last)
    expected = []
    for item in chosen:
        row = []
        for c in range(item.num_choices):
            prompt_len = len(tok(item.prompt_of(c))["input_ids"])
            ids = torch.tensor([tok(item.text(c))["input_ids"]])  # [1, T]
            with torch.no_grad(), attach(model, edit):
                logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # [T, V]
            targets = ids[0, prompt_len:]
            row.append(float(logp[prompt_len - 1 : -1].gather(1, targets[:, None]).sum()))
        row += [float("-inf")] * (3 - len(row))
        expected.append(row)
    batch = ChoiceCollator(tok)(chosen)
    with torch.no_grad():
        prefix = prompt_prefix(model, batch)  # offered, but an "all" edit must not use it
        scores = choice_scores(model, batch, "sum", edit, prefix=prefix)
        last_scores = choice_scores(model, batch, "sum", last, prefix=prefix)
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-4, rtol=0)
    assert not torch.allclose(scores, last_scores, atol=1e-3)  # the prompt tokens were steered
    loader = DataLoader(chosen, batch_size=4, collate_fn=ChoiceCollator(tok))
    candidates = [None, (last, 1.0), (edit, 1.0)]
    many = evaluate_many(model, loader, candidates, "sum")
    single = [evaluate_accuracy(model, loader, "sum", e, b) for e, b in candidates[1:]]
    assert many[1:] == single
    hits = sum(
        int(max(range(3), key=row.__getitem__) == item.gold) for row, item in zip(expected, chosen)
    )
    assert many[2] == pytest.approx(hits / len(chosen))


def test_loaders_batch_longest_first(make):
    """Val/test/train loaders visit every entry once, longest text first; the statistics and the
    accuracy are order-free, so only the padding changes."""
    from datamodules.commonsense_items import longest_first

    dm = make(task="boolq", max_test=40)
    for entries, loader_items in (
        (dm.test_items, dm.test_dataloader().dataset),
        (dm.val_items, dm.val_dataloader().dataset),
        (dm.contrastive_pairs(), dm.train_dataloader().dataset),
    ):
        assert sorted(map(repr, loader_items)) == sorted(map(repr, entries))
        lengths = [commonsense._text_length(e) for e in loader_items]
        assert lengths == sorted(lengths, reverse=True)
    same = [ChoiceItem("ab", (" c",), 0), ChoiceItem("xy", (" z",), 0), ChoiceItem("a", ("b",), 0)]
    assert longest_first(same) == same  # ties keep their order
