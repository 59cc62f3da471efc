"""Tests of the IOI and CCC datamodules with the real SmolLM2-135M-Instruct tokenizer."""

from __future__ import annotations

import pytest
import torch

from datamodules import CCCDataModule, ContrastiveDataModule, ContrastiveExample, IOIDataModule
from datamodules.base import default_data_dir
from datamodules.ccc import BUILTIN_CAPITALS, CCC_TEMPLATES
from datamodules.ioi import BUILTIN_NAMES, abba_form
from interventions.core.backbone import load_tokenizer
from interventions.core.errors import ConfigError

pytestmark = pytest.mark.skipif(
    not (default_data_dir() / "ioi").is_dir(), reason="../shared/data is not available"
)

SMALL = dict(num_train=40, num_val=10, num_test=20)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def ioi() -> IOIDataModule:
    dm = IOIDataModule(**SMALL)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def ccc() -> CCCDataModule:
    dm = CCCDataModule()
    dm.setup()
    return dm


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def splits(dm: ContrastiveDataModule) -> list[list[ContrastiveExample]]:
    return [dm.train_examples, dm.val_examples, dm.test_examples]


# ---------------------------------------------------------------------------- determinism, splits
@pytest.mark.parametrize(
    "make", [lambda s: IOIDataModule(seed=s, **SMALL), lambda s: CCCDataModule(seed=s)]
)
def test_same_seed_same_splits_other_seed_different(make):
    a, b, c = make(0), make(0), make(1)
    assert splits(a) == splits(b)
    assert a.train_examples != c.train_examples


@pytest.mark.parametrize("name", ["ioi", "ccc"])
def test_splits_disjoint_and_sized(name, request):
    dm = request.getfixturevalue(name)
    train, val, test = ({ex.prompt for ex in split} for split in splits(dm))
    assert (len(train), len(val), len(test)) == (dm.num_train, dm.num_val, dm.num_test)
    assert not (train & val or train & test or val & test)


@pytest.mark.parametrize("name", ["ioi", "ccc"])
def test_every_answer_is_one_token(name, request, tokenizer):
    dm = request.getfixturevalue(name)
    for ex in [ex for split in splits(dm) for ex in split]:
        for answer in (ex.correct, ex.wrong):
            assert answer.startswith(" ")
            assert len(tokenizer.encode(answer, add_special_tokens=False)) == 1, answer
        assert ex.correct != ex.wrong


# ---------------------------------------------------------------------------- batches and lengths
@pytest.mark.parametrize("name", ["ioi", "ccc"])
def test_fixed_length_batches(name, request, tokenizer):
    dm = request.getfixturevalue(name)
    assert dm.prompt_length == {"ioi": 15, "ccc": 18}[name]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            size = len(batch["prompts"])
            assert batch["input_ids"].shape == (size, dm.prompt_length)
            assert batch["input_ids"].dtype == torch.long
            assert batch["attention_mask"].dtype == torch.long
            assert bool(batch["attention_mask"].all())  # one length: no padding at all
            assert batch["correct_id"].shape == batch["wrong_id"].shape == (size,)
            assert batch["corrupted_input_ids"].shape == batch["input_ids"].shape
            assert bool((batch["corrupted_attention_mask"] == batch["attention_mask"]).all())
    batch = next(iter(dm.test_dataloader()))
    ex = dm.test_examples[0]
    assert batch["prompts"][0] == ex.prompt
    assert batch["correct_id"][0] == tokenizer.encode(ex.correct, add_special_tokens=False)[0]
    assert batch["wrong_id"][0] == tokenizer.encode(ex.wrong, add_special_tokens=False)[0]
    assert dm.example_prompt == dm.train_examples[0].prompt


@pytest.mark.parametrize("facts,n_templates", [("builtin", 12), ("standard", 15)])
def test_ioi_fixed_length_over_many_templates_keeps_one_length(facts, n_templates):
    dm = IOIDataModule(templates=list(range(n_templates)), facts=facts, **SMALL)
    lengths = {n_tokens(dm.tokenizer, ex.prompt) for split in splits(dm) for ex in split}
    assert lengths == {dm.prompt_length}
    varying = IOIDataModule(fixed_length=False, facts=facts, **SMALL)
    assert varying.prompt_length is None
    assert len({n_tokens(varying.tokenizer, ex.prompt) for ex in varying.train_examples}) > 1


@pytest.mark.parametrize("name", ["ioi", "ccc"])
def test_corrupted_prompt_same_length_one_token_changed(name, request, tokenizer):
    dm = request.getfixturevalue(name)
    for ex in dm.train_examples:
        clean = tokenizer(ex.prompt)["input_ids"]
        corrupted = tokenizer(ex.corrupted_prompt)["input_ids"]
        assert len(clean) == len(corrupted)
        changed = [i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b]
        assert len(changed) == 1
        new_token = tokenizer.decode([corrupted[changed[0]]])
        assert new_token not in (ex.correct, ex.wrong)


def test_ioi_prompt_structure(ioi):
    orders = set()
    for ex in ioi.train_examples:
        io, s = ex.correct.strip(), ex.wrong.strip()
        assert ex.prompt.split().count(io) == 1
        assert ex.prompt.replace(",", " ").replace(".", " ").split().count(s) == 2
        assert ex.prompt.endswith(" to")
        orders.add(ex.prompt.index(io) < ex.prompt.index(s))
    assert orders == {True, False}  # both ABBA and BABA


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side(side):
    dm = IOIDataModule(fixed_length=False, padding_side=side, batch_size=64, **SMALL)
    batch = next(iter(dm.val_dataloader()))
    mask, ids = batch["attention_mask"], batch["input_ids"]
    assert not bool(mask.all()), "lengths should vary with fixed_length=False"
    real = mask[:, -1] if side == "left" else mask[:, 0]
    assert bool(real.all())
    assert bool((ids[mask == 0] == dm.tokenizer.pad_token_id).all())
    # padding is contiguous on the chosen side
    for row in mask:
        n = int(row.sum())
        expect = torch.zeros_like(row)
        if side == "left":
            expect[len(row) - n :] = 1
        else:
            expect[:n] = 1
        assert torch.equal(row, expect)
    assert torch.equal(batch["corrupted_attention_mask"], mask)


# ---------------------------------------------------------------------------- CCC templates
@pytest.mark.parametrize("facts", ["csv", "json", "builtin"])
def test_ccc_alt_template_same_length_for_every_country(facts, tokenizer):
    pairs = CCCDataModule(facts=facts).load_facts()
    assert len(pairs) >= len(BUILTIN_CAPITALS)
    assert set(CCC_TEMPLATES) == {"default", "alt", "moved"}
    for country, _ in pairs:
        for city in ("Paris", "Berlin", "Lima"):
            lengths = {
                name: n_tokens(tokenizer, t.format(country=country, context_city=city))
                for name, t in CCC_TEMPLATES.items()
            }
            assert len(set(lengths.values())) == 1, (country, city, lengths)


@pytest.mark.parametrize("template,marker", [("alt", "Which city is"), ("moved", "So ")])
def test_ccc_alt_datamodule_matches_default(ccc, template, marker):
    alt = CCCDataModule(template=template)
    assert alt.prompt_length == ccc.prompt_length
    for a, d in zip(alt.test_examples, ccc.test_examples, strict=True):
        assert (a.correct, a.wrong) == (d.correct, d.wrong)
        assert marker in a.prompt and a.prompt != d.prompt


def test_ccc_prompt_format(ccc):
    ex = ccc.train_examples[0]
    country = ex.prompt.removeprefix("The capital of ").split(" is ")[0]
    expected = CCC_TEMPLATES["default"].format(country=country, context_city=ex.wrong.strip())
    assert ex.prompt == expected
    assert ex.correct != ex.wrong


@pytest.mark.parametrize("facts", ["csv", "json", "builtin"])
def test_ccc_default_sizes_fit_every_facts_source(facts, tmp_path):
    data_dir = str(tmp_path) if facts == "builtin" else None  # builtin needs no data folder
    dm = CCCDataModule(facts=facts, data_dir=data_dir)
    assert dm.num_available >= dm.num_requested
    assert dm.prompt_length == 18


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "make",
    [lambda d: IOIDataModule(data_dir=d, facts="standard"), lambda d: CCCDataModule(data_dir=d)],
)
def test_missing_data_dir_is_a_clear_error(make, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="data_dir") as info:
        make(str(missing)).setup()
    assert str(missing) in str(info.value)


def test_too_many_examples_requested():
    with pytest.raises(ValueError, match=r"only 37 are available"):
        CCCDataModule(num_train=100).setup()


def test_multi_token_answer_is_a_clear_error():
    class Capitals(ContrastiveDataModule):
        def build_examples(self) -> list[ContrastiveExample]:
            return [
                ContrastiveExample("The capital of France is", " Paris", " Rome"),
                ContrastiveExample("The capital of Andorra is", " Andorra la Vella", " Rome"),
            ]

    with pytest.raises(ValueError, match=r"example 1 .*' Andorra la Vella' of \d tokens \["):
        Capitals(num_train=1, num_val=0, num_test=0).setup()


def test_corrupted_prompt_of_other_length_is_an_error():
    class Bad(ContrastiveDataModule):
        def build_examples(self) -> list[ContrastiveExample]:
            return [ContrastiveExample("Hello there my", " friend", " dear", "Hello")]

    with pytest.raises(ValueError, match="corrupted prompt"):
        Bad(num_train=1, num_val=0, num_test=0).setup()


def test_ioi_builtin_facts_need_no_data_folder(tmp_path):
    """The default facts are shipped with the project: an empty data_dir is never read, every
    prompt of template 0 is 15 tokens (as the standard set's template 0), and BABA / ABBA are
    the same sentence with the first two name mentions swapped."""
    dm = IOIDataModule(data_dir=str(tmp_path / "nothing-here"), **SMALL)
    dm.setup()
    assert dm.facts == "builtin" and dm.prompt_length == 15
    assert len(dm.names) == len(BUILTIN_NAMES) == 60  # all one token for SmolLM2
    first = {ex.prompt.split()[1] for ex in dm.train_examples}
    assert {ex.correct.strip() for ex in dm.train_examples} & first  # ABBA: IO named first
    assert {ex.wrong.strip() for ex in dm.train_examples} & first  # BABA: S named first
    assert abba_form("So [B] met [A]; [B] gave a [OBJECT] to [A]") == (
        "So [A] met [B]; [B] gave a [OBJECT] to [A]"
    )
    standard = IOIDataModule(facts="standard", **SMALL)
    assert standard.prompt_length == 15
    assert {ex.prompt for ex in dm.train_examples}.isdisjoint(
        ex.prompt for ex in standard.train_examples
    )
    with pytest.raises(ValueError, match="facts must be 'builtin' or 'standard'"):
        IOIDataModule(facts="wang")


def test_bad_template_index():
    with pytest.raises(ValueError, match="templates"):
        IOIDataModule(templates=[99]).setup()


def test_hparams_hold_the_config():
    dm = IOIDataModule(templates=[0, 11], seed=3)
    assert dm.hparams["templates"] == [0, 11] and dm.hparams["seed"] == 3
    assert CCCDataModule(template="alt").hparams["template"] == "alt"


def test_empty_training_split_is_refused_clearly_when_fitting():
    """num_train=0 is fine for validate / test, but fitting (setup("fit") or the train
    dataloader) gets a one-line ConfigError naming the datamodule and what to set, not
    torch's num_samples=0 error from the sampler."""
    dm = IOIDataModule(num_train=0, num_val=4, num_test=4)
    dm.setup("test")
    assert len(dm.test_examples) == 4 and len(dm.val_examples) == 4
    assert len(dm.test_dataloader()) == 1
    for fit in (dm.train_dataloader, lambda: dm.setup("fit")):
        with pytest.raises(ConfigError) as info:
            fit()
        message = str(info.value)
        assert "\n" not in message and "num_samples" not in message
        assert "IOIDataModule" in message and "num_train=0" in message
        assert "num_train >= 1" in message and "--data.num_train" in message


def test_build_examples_that_returns_nothing_is_a_clear_error():
    class Nothing(ContrastiveDataModule):
        def build_examples(self) -> list[ContrastiveExample]:
            return []

    with pytest.raises(ConfigError) as info:
        Nothing(num_train=1, num_val=0, num_test=0).setup("fit")
    message = str(info.value)
    assert "\n" not in message and "Nothing.build_examples() returned no examples" in message


def test_split_sizes_override_with_no_training_share_names_it():
    class NoTrain(ContrastiveDataModule):
        def build_examples(self) -> list[ContrastiveExample]:
            return [ContrastiveExample("The capital of France is", " Paris", " Rome")]

        def split_sizes(self, available: int) -> tuple[int, int, int]:
            return 0, 0, available

    with pytest.raises(ConfigError, match=r"NoTrain.split_sizes\(\) gave 0 training examples"):
        NoTrain().train_dataloader()
