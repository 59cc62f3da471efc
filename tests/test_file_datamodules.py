"""Your own data from a file (datamodules.files): the formats, the column mapping, one-line errors
naming the file and the row, and the three shapes feeding their methods on a tiny backbone with
the example configs of configs/files/."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import interventions
from datamodules import (
    BehaviorFileDataModule,
    ChoiceItem,
    ContrastiveDataModule,
    ContrastiveExample,
    ContrastiveFileDataModule,
    MultipleChoiceFileDataModule,
    W2SFileDataModule,
)
from datamodules import files as files_module
from interventions.core.errors import ConfigError
from interventions.reporting.run_folder import resolve_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"

CAPITALS = [
    {"prompt": "The capital of France is", "correct": "Paris", "wrong": "Rome"},
    {"prompt": "The capital of Italy is", "correct": " Rome", "wrong": "Madrid"},
    {"prompt": "The capital of Germany is", "correct": "Berlin", "wrong": "Vienna"},
    {"prompt": "The capital of Spain is", "correct": "Madrid", "wrong": "Lisbon"},
    {"prompt": "The capital of Japan is", "correct": "Tokyo", "wrong": "Cairo"},
]
AB = [
    {
        "question": f"Item {i}: pick one.\n\nChoices:\n (A) First, {i}.\n (B) Second, {i}.",
        "answer_matching_behavior": " (A)" if i % 2 == 0 else "(B)",
        "answer_not_matching_behavior": " (B)" if i % 2 == 0 else "(A)",
    }
    for i in range(6)
]
QUIZ = [
    {"question": "Which planet is the largest?", "choices": ["Jupiter", "Mars"], "label": 0},
    {"question": "Ice is water in its", "choices": ["liquid state", "solid state"], "label": 1},
    {
        "context": "Seen from the Earth, the Sun rises",
        "choices": ["in the east", "in the west"],
        "label": "A",
    },  # fmt: skip
    {
        "question": "Sound travels fastest through",
        "choices": ["air", "steel", "a vacuum"],
        "label": "1",
    },  # fmt: skip
]
CAUTIOUS = "You are cautious and you always choose the safe option."
RECKLESS = "You are reckless and you always choose the risky option."


def write(path: Path, rows: list[dict], wrap: bool = False) -> Path:
    """``rows`` as a file of ``path``'s type (``wrap``: a .json object {"data": rows})."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps({"data": rows} if wrap else rows))
    elif path.suffix == ".csv":
        names = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                )
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(path)
    return path


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert "\n" not in message, message
    return message


FORMATS = [("jsonl", False), ("json", False), ("json", True), ("csv", False)]


# ---------------------------------------------------------------------------- formats
@pytest.mark.parametrize("suffix, wrap", FORMATS)
def test_every_format_gives_the_same_contrastive_examples(
    suffix, wrap, tmp_path, tiny_backbone_dir
):
    dm = ContrastiveFileDataModule(
        path=str(write(tmp_path / f"capitals.{suffix}", CAPITALS, wrap)),
        backbone=tiny_backbone_dir,
    )
    assert dm.build_examples() == [
        ContrastiveExample(r["prompt"], " " + r["correct"].strip(), " " + r["wrong"].strip())
        for r in CAPITALS
    ]
    line = suffix in ("jsonl", "csv")
    assert dm.rows[1] == (
        "row 2 (line 3)" if suffix == "csv" else "row 2 (line 2)" if line else "row 2"
    )


@pytest.mark.parametrize("suffix, wrap", FORMATS)
def test_every_format_gives_the_same_behavior_and_choice_items(suffix, wrap, tmp_path):
    ab = BehaviorFileDataModule(path=str(write(tmp_path / f"ab.{suffix}", AB, wrap)))
    items, skipped, _ = ab.load_items()
    assert skipped == 0 and [i.matching for i in items] == ["A", "B"] * 3
    assert items[0].question == AB[0]["question"].strip()
    mc = MultipleChoiceFileDataModule(path=str(write(tmp_path / f"quiz.{suffix}", QUIZ, wrap)))
    assert mc.load_items() == [
        ChoiceItem("Which planet is the largest?", (" Jupiter", " Mars"), 0),
        ChoiceItem("Ice is water in its", (" liquid state", " solid state"), 1),
        ChoiceItem("Seen from the Earth, the Sun rises", (" in the east", " in the west"), 0),
        ChoiceItem("Sound travels fastest through", (" air", " steel", " a vacuum"), 1),
    ]


def test_parquet_gives_the_same_examples(tmp_path):
    path = write(tmp_path / "capitals.parquet", CAPITALS)
    parquet = ContrastiveFileDataModule(path=str(path))
    jsonl = ContrastiveFileDataModule(path=str(write(tmp_path / "c.jsonl", CAPITALS)))
    assert len(parquet._rows) == len(CAPITALS)
    assert [ex for _, ex in parquet._rows] == [ex for _, ex in jsonl._rows]
    assert parquet.rows[0] == "row 1"


def test_parquet_without_pyarrow_names_the_library(tmp_path, monkeypatch):
    path = write(tmp_path / "capitals.parquet", CAPITALS)
    # an installed-but-missing library: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError) as info:
        ContrastiveFileDataModule(path=str(path))
    assert "pip install pyarrow" in one_line(info) and str(path) in str(info.value)


def test_hugging_face_saved_dataset_and_data_folder(tmp_path, monkeypatch):
    """A saved dataset (``save_to_disk``) and a folder of data files (``load_dataset(folder)``)
    give the same examples as the jsonl file; a missing split is named with the ones there are.
    Never a network call here: HF_DATASETS_OFFLINE."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    import datasets

    jsonl = ContrastiveFileDataModule(path=str(write(tmp_path / "c.jsonl", CAPITALS)))
    expected = [ex for _, ex in jsonl._rows]

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(CAPITALS).save_to_disk(str(saved))
    dm = ContrastiveFileDataModule(path=str(saved))
    assert [ex for _, ex in dm._rows] == expected and dm.rows[0] == "row 1"

    saved_dict = tmp_path / "saved_dict"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(CAPITALS)}).save_to_disk(
        str(saved_dict)
    )
    assert [
        ex for _, ex in ContrastiveFileDataModule(path=str(saved_dict), split="test")._rows
    ] == (expected)
    with pytest.raises(ConfigError) as info:
        ContrastiveFileDataModule(path=str(saved_dict), split="train")
    assert "no split 'train'" in one_line(info) and "['test']" in str(info.value)

    folder = tmp_path / "data_files"
    folder.mkdir()
    write(folder / "train.jsonl", CAPITALS)
    from_folder = ContrastiveFileDataModule(path=str(folder))
    assert [ex for _, ex in from_folder._rows] == expected


def test_hugging_face_name_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(ConfigError) as info:
        ContrastiveFileDataModule(path="someone/no-such-capitals")
    assert "'someone/no-such-capitals'" in one_line(info) and "could not be loaded" in str(
        info.value
    )


def test_hugging_face_without_datasets_names_the_library(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    for name in ("someone/capitals", str(tmp_path)):
        with pytest.raises(ConfigError) as info:
            ContrastiveFileDataModule(path=name)
        assert "pip install datasets" in one_line(info) and repr(name) in str(info.value)


def test_the_example_files_read_and_split(tiny_backbone_dir):
    dm = ContrastiveFileDataModule(
        path=str(EXAMPLES / "capitals.jsonl"), backbone=tiny_backbone_dir
    )
    dm.setup()
    # 12 rows: 20% val, 20% test (rounded down), the rest train
    assert (len(dm.train_examples), len(dm.val_examples), len(dm.test_examples)) == (8, 2, 2)
    assert {ex.prompt for ex in dm.train_examples + dm.val_examples + dm.test_examples} == {
        json.loads(line)["prompt"]
        for line in (EXAMPLES / "capitals.jsonl").read_text().splitlines()
    }
    sized = ContrastiveFileDataModule(
        path=str(EXAMPLES / "capitals.jsonl"), backbone=tiny_backbone_dir, num_train=3, num_test=5
    )
    assert sized.split_sizes(12) == (3, 2, 5)
    ab = BehaviorFileDataModule(path=str(EXAMPLES / "caution_ab.jsonl"), backbone=tiny_backbone_dir)
    ab.setup()
    assert ab.behavior == "caution_ab" and ab.num_available == 12
    assert (
        sorted(ex.correct for ex in ab.train_examples + ab.val_examples + ab.test_examples)
        == ["A"] * 6 + ["B"] * 6
    )
    assert all(ex.prompt.endswith("(") for ex in ab.train_examples)
    mc = MultipleChoiceFileDataModule(path=str(EXAMPLES / "science_quiz.jsonl"), num_val=2)
    mc.setup()
    assert mc.task == "science_quiz" and mc.num_items == 10
    assert (len(mc.pool_items), len(mc.val_items), len(mc.test_items)) == (4, 2, 4)


def test_persona_style_yes_no_items(tmp_path):
    rows = [
        {"question": f"Would you say: statement {i}?", "answer_matching_behavior": " Yes",
         "answer_not_matching_behavior": " No"}
        for i in range(4)
    ]  # fmt: skip
    items, _, _ = BehaviorFileDataModule(path=str(write(tmp_path / "p.jsonl", rows))).load_items()
    assert [i.matching for i in items] == ["A", "B", "A", "B"]
    assert items[1].question.endswith("Choices:\n(A): No\n(B): Yes")


# ---------------------------------------------------------------------------- columns
def test_column_mapping(tmp_path, tiny_backbone_dir):
    renamed = [
        {"question": r["prompt"], "answer": r["correct"], "foil": r["wrong"]} for r in CAPITALS
    ]
    dm = ContrastiveFileDataModule(
        path=str(write(tmp_path / "renamed.csv", renamed)),
        columns={"prompt": "question", "correct": "answer", "wrong": "foil"},
        backbone=tiny_backbone_dir,
    )
    plain = ContrastiveFileDataModule(path=str(write(tmp_path / "plain.jsonl", CAPITALS)))
    assert dm.build_examples() == plain.build_examples()
    # multiple choice: one column per choice, a letter label, another question column
    quiz = [
        {"query": "Which planet is the largest?", "a": "Jupiter", "b": "Mars", "c": "Venus",
         "answer": "A"},
        {"query": "Ice is water in its", "a": "liquid state", "b": "solid state", "c": "gas state",
         "answer": "b"},
    ]  # fmt: skip
    mc = MultipleChoiceFileDataModule(
        path=str(write(tmp_path / "quiz.csv", quiz)),
        columns={"question": "query", "choices": ["a", "b", "c"], "label": "answer"},
        prompt_template="Question: {question}\nAnswer:",
    )
    assert mc.load_items()[1] == ChoiceItem(
        "Question: Ice is water in its\nAnswer:", (" liquid state", " solid state", " gas state"), 1
    )
    ab_rows = [
        {"prompt": r["question"], "yes": r["answer_matching_behavior"],
         "no": r["answer_not_matching_behavior"]}
        for r in AB
    ]  # fmt: skip
    ab = BehaviorFileDataModule(
        path=str(write(tmp_path / "ab.jsonl", ab_rows)),
        columns={
            "question": "prompt",
            "answer_matching_behavior": "yes",
            "answer_not_matching_behavior": "no",
        },
    )
    assert (
        ab.load_items()[0]
        == BehaviorFileDataModule(path=str(write(tmp_path / "ab2.jsonl", AB))).load_items()[0]
    )


def test_unknown_field_in_columns(tmp_path):
    path = str(write(tmp_path / "c.jsonl", CAPITALS))
    with pytest.raises(ConfigError) as info:
        ContrastiveFileDataModule(path=path, columns={"promt": "question"})
    message = one_line(info)
    assert "unknown field 'promt'" in message and "Did you mean 'prompt'?" in message


def test_prompt_and_context_together_and_templates(tmp_path):
    rows = [{"context": "Passage one.", "question": "Is it one?", "choices": ["no", "yes"],
             "label": 1, "id": 7}]  # fmt: skip
    path = str(write(tmp_path / "q.jsonl", rows))
    assert MultipleChoiceFileDataModule(path=path).load_items()[0].prompt == (
        "Passage one.\nIs it one?"
    )
    templated = MultipleChoiceFileDataModule(
        path=path, prompt_template="[{id}] {context} Q: {question} A:", choice_template="{choice}!"
    ).load_items()[0]
    assert templated == ChoiceItem("[7] Passage one. Q: Is it one? A:", ("no!", "yes!"), 1)


# ---------------------------------------------------------------------------- errors
FRANCE = CAPITALS[0]
CONTRASTIVE_ERRORS = [
    # (rows, needs the tokenizer, where, what)
    ([FRANCE, {"prompt": "The capital of Italy is", "correct": "Rome"}], False, "row 2 (line 2)",
     "missing the column 'wrong'"),
    ([FRANCE, {**FRANCE, "prompt": "  "}], False, "row 2 (line 2)",
     "the column 'prompt' (field 'prompt': the text before the answer) is empty"),
    ([{**FRANCE, "correct": 3}], False, "row 1 (line 1)", "must be a string, got int 3"),
    ([FRANCE, {**FRANCE, "correct": "Xqzzyplughwobble"}], True, "row 2 (line 2)",
     "correct ' Xqzzyplughwobble' is"),
    ([{**FRANCE, "wrong": " Paris"}], True, "row 1 (line 1)", "the same token"),
    ([{**FRANCE, "corrupted_prompt": "The capital of the French Republic is"}], True,
     "row 1 (line 1)", "the corrupted_prompt is"),
    ([{**FRANCE, "corrupted_prompt": "The capital of Italy is"}, CAPITALS[1]], True,
     "row 2 (line 2)", "has no corrupted_prompt"),
]  # fmt: skip


@pytest.mark.parametrize("rows, at_setup, where, what", CONTRASTIVE_ERRORS)
def test_contrastive_errors_name_file_and_row(
    rows, at_setup, where, what, tmp_path, tiny_backbone_dir
):
    path = write(tmp_path / "bad.jsonl", rows)
    dm = None
    with pytest.raises(ConfigError) as info:
        dm = ContrastiveFileDataModule(path=str(path), backbone=tiny_backbone_dir)
        dm.setup()
    assert (dm is not None) == at_setup  # the checks without a tokenizer run at construction
    message = one_line(info)
    assert message.startswith(f"{path}: {where}: ") and what in message, message


def test_csv_rows_name_their_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        'prompt,correct,wrong\n"The capital\nof France is",Paris,Rome\nThe capital of Italy is,Rome,\n'
    )
    with pytest.raises(ConfigError) as info:
        ContrastiveFileDataModule(path=str(path))
    assert one_line(info).startswith(f"{path}: row 2 (line 4): the column 'wrong'")
    path.write_text("prompt,correct,wrong\nThe capital of Italy is,Rome,Paris,Berlin\n")
    with pytest.raises(ConfigError) as info:
        ContrastiveFileDataModule(path=str(path))
    assert "row 1 (line 2): has 4 cells but the header has 3 columns" in one_line(info)


@pytest.mark.parametrize(
    "name, text, what",
    [
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "row 2 (line 2): not valid JSON"),
        ("bad.jsonl", '{"prompt": "a"}\n["a list"]\n', "row 2 (line 2): expected a JSON object"),
        ("bad.json", '{"rows": []}', "expected a JSON list of objects or an object"),
        ("bad.json", "[1, 2", "not valid JSON"),
        ("empty.jsonl", "\n\n", "has no rows"),
        ("bad.txt", "prompt", "unknown data file type '.txt'"),
        ("empty.csv", "", "has no header line"),
    ],
)
def test_malformed_files(name, text, what, tmp_path):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ContrastiveFileDataModule(path=str(path))
    message = one_line(info)
    assert message.startswith(str(path)) and what in message, message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        MultipleChoiceFileDataModule(path=str(tmp_path / "nope.csv"))
    assert "nope.csv: the data file does not exist" in one_line(info)


CHOICE_ERRORS = [
    ({"question": "Q?", "choices": ["a", "b"], "label": 2}, "label 2 is out of range for 2 choices"),
    ({"question": "Q?", "choices": ["a", "b"], "label": "C"}, "label 'C' is out of range"),
    ({"question": "Q?", "choices": ["a", "b"], "label": -1}, "label -1 is out of range"),
    ({"question": "Q?", "choices": ["a", "b"], "label": "yes"}, "label 'yes' is not the index"),
    ({"question": "Q?", "choices": ["a", "b"], "label": True}, "label True is not the index"),
    ({"question": "Q?", "choices": ["a"], "label": 0}, "has 1 choice(s) ['a']; a question needs at least 2"),
    ({"question": "Q?", "choices": ["a", " "], "label": 0}, "choice 1 is empty"),
    ({"question": "Q?", "choices": "a or b", "label": 0}, "choices 'a or b' is not a list"),
    ({"question": "Q?", "choices": 5, "label": 0}, "choices must be a list, got int"),
    ({"query": "Q?", "choices": ["a", "b"], "label": 0}, "has no prompt: the column 'question'"),
    ({"question": "Q?", "choices": ["a", "b"]}, "missing the column 'label'"),
]  # fmt: skip


@pytest.mark.parametrize("row, what", CHOICE_ERRORS)
def test_multiple_choice_errors_name_file_and_row(row, what, tmp_path):
    path = write(tmp_path / "quiz.jsonl", [QUIZ[0], row])
    with pytest.raises(ConfigError) as info:
        MultipleChoiceFileDataModule(path=str(path))
    message = one_line(info)
    assert message.startswith(f"{path}: row 2 (line 2): ") and what in message, message


def test_multiple_choice_csv_cell_and_template_errors(tmp_path):
    path = tmp_path / "quiz.csv"
    path.write_text("question,choices,label\nQ?,a or b,0\n")
    with pytest.raises(ConfigError) as info:
        MultipleChoiceFileDataModule(path=str(path))
    assert "row 1 (line 2): choices 'a or b' is not a list; in a CSV cell" in one_line(info)
    good = str(write(tmp_path / "quiz.jsonl", QUIZ[:2]))
    with pytest.raises(ConfigError) as info:
        MultipleChoiceFileDataModule(path=good, prompt_template="{question} {topic}")
    assert "row 1 (line 1): prompt_template='{question} {topic}' cannot be filled" in one_line(info)


def test_behavior_errors_name_file_and_row(tmp_path):
    path = write(tmp_path / "ab.jsonl", [AB[0], {**AB[1], "answer_matching_behavior": " (C)"}])
    with pytest.raises(ConfigError) as info:
        BehaviorFileDataModule(path=str(path))
    message = one_line(info)
    assert message.startswith(f"{path}: row 2 (line 2): answers must be 'A' and 'B'"), message
    path = write(
        tmp_path / "ab.jsonl", [AB[0], {"question": "Q?", "answer_matching_behavior": "A"}]
    )
    with pytest.raises(ConfigError) as info:
        BehaviorFileDataModule(path=str(path))
    assert "row 2 (line 2): missing the column 'answer_not_matching_behavior'" in one_line(info)
    three = {**AB[0], "question": "Pick.\n\nChoices:\n (A) a\n (B) b\n (C) c"}
    with pytest.raises(ConfigError) as info:
        BehaviorFileDataModule(path=str(write(tmp_path / "c.jsonl", [three])))
    assert "has no usable item: all 1 rows have a third option (C)" in one_line(info)
    skipped = BehaviorFileDataModule(path=str(write(tmp_path / "d.jsonl", [three, *AB])))
    assert skipped.load_items()[1] == 1


def test_variants_and_contrast_need_the_descriptions(tmp_path, tiny_backbone_dir):
    path = str(write(tmp_path / "ab.jsonl", AB))
    with pytest.raises(ValueError, match="needs a positive description"):
        BehaviorFileDataModule(path=path, variant="sys_pos")
    with pytest.raises(ValueError, match="needs a negative description"):
        W2SFileDataModule(path=path, positive_description=CAUTIOUS, ood_variants=("sys_neg",))
    dm = BehaviorFileDataModule(
        path=path, contrast="system", positive_description=CAUTIOUS,
        negative_description=RECKLESS, backbone=tiny_backbone_dir, train_fraction=1.0,
        val_fraction=0.0,
    )  # fmt: skip
    ex = dm.train_examples[0]
    assert CAUTIOUS in ex.prompt and RECKLESS in ex.corrupted_prompt
    assert dm.token_length(ex.prompt) == dm.token_length(ex.corrupted_prompt)


def test_hyperparameters_are_the_signature(tmp_path):
    path = str(write(tmp_path / "ab.jsonl", AB))
    w2s = W2SFileDataModule(
        path=path, positive_description=CAUTIOUS, negative_description=RECKLESS,
        ood_variants=("sys_pos",), batch_size=7,
    )  # fmt: skip
    assert dict(w2s.hparams)["batch_size"] == 7 and "behavior" not in w2s.hparams
    variant = w2s._variants["sys_pos"]
    assert variant.variant == "sys_pos" and variant.hparams["batch_size"] == 32
    assert "ood_variants" not in variant.hparams and "num_train" not in variant.hparams
    mc = MultipleChoiceFileDataModule(path=str(write(tmp_path / "q.jsonl", QUIZ)))
    assert "task" not in mc.hparams and mc.hparams["num_val"] is None and mc.num_val == 1


# ---------------------------------------------------------------------------- public API
def test_exported_from_datamodules_and_interventions():
    for name in (
        "ContrastiveDataModule", "ContrastiveExample", "ContrastiveFileDataModule",
        "BehaviorFileDataModule", "W2SFileDataModule", "MultipleChoiceFileDataModule",
    ):  # fmt: skip
        assert name in interventions.__all__
        assert getattr(interventions, name) is getattr(sys.modules["datamodules"], name)
    assert interventions.ContrastiveFileDataModule is files_module.ContrastiveFileDataModule
    # importing the package stays cheap: no data module (and no cycle) until a name is used
    code = (
        "import sys, interventions; assert 'datamodules' not in sys.modules; "
        "interventions.ContrastiveFileDataModule; assert 'datamodules.files' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_subclass_recipe(tmp_path, tiny_backbone_dir):
    """The second way, as the README shows it: a subclass of ContrastiveDataModule."""

    class Capitals(interventions.ContrastiveDataModule):
        def __init__(self, path: str, backbone: str = "smollm2-135m-instruct") -> None:
            super().__init__(backbone=backbone, num_train=8, num_val=2, num_test=2)
            self.path = path

        def build_examples(self) -> list[ContrastiveExample]:
            rows = [json.loads(line) for line in Path(self.path).read_text().splitlines()]
            return [
                interventions.ContrastiveExample(r["prompt"], " " + r["correct"], " " + r["wrong"])
                for r in rows
            ]

    path = str(EXAMPLES / "capitals.jsonl")
    mine = Capitals(path, backbone=tiny_backbone_dir)
    theirs = ContrastiveFileDataModule(path=path, backbone=tiny_backbone_dir, fixed_length=True)
    assert isinstance(mine, ContrastiveDataModule)
    mine.setup()
    theirs.setup()
    assert mine.train_examples == theirs.train_examples
    assert mine.test_examples == theirs.test_examples


# ---------------------------------------------------------------------------- the methods
def _fit(config: str, backbone: str, run: Path, monkeypatch, *extra: str):
    """The config as committed (relative paths from the repository root), with a CSV logger:
    Lightning merges the model's and the data's hyperparameters for a logger, so a clash of
    names would fail here."""
    from interventions.cli import build_cli

    monkeypatch.chdir(ROOT)
    cli = build_cli(
        [
            "--config", str(ROOT / config),
            f"--model.backbone={backbone}",
            f"--trainer.default_root_dir={run}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={run}",
            "--trainer.enable_progress_bar=false",
            *extra,
        ],
        run=False,
    )  # fmt: skip
    assert cli.datamodule.backbone == backbone  # linked to model.backbone
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli, json.loads((resolve_run(run) / "metrics.json").read_text())


def test_contrastive_config_trains_activscalar(tiny_backbone_dir, tmp_path, monkeypatch):
    cli, metrics = _fit(
        "configs/files/contrastive.yaml", tiny_backbone_dir, tmp_path, monkeypatch,
        "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1",
    )  # fmt: skip
    assert isinstance(cli.datamodule, ContrastiveFileDataModule)
    assert cli.trainer.global_step == 2  # 8 training rows, batch 8, 2 epochs
    meta = json.loads((resolve_run(tmp_path) / "intervention" / "intervention.json").read_text())
    assert meta["type"] == "activscalar"
    assert cli.model.edit.num_slots == 1  # positions: last


def test_behavior_config_computes_caa(tiny_backbone_dir, tmp_path, monkeypatch):
    cli, metrics = _fit(
        "configs/files/behavior_caa.yaml", tiny_backbone_dir, tmp_path, monkeypatch,
        f"--model.sweep_cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert metrics["num_train"] == 4 and metrics["num_test"] == 7  # 12 items: 40% / 10% / rest
    per_layer = metrics["train/steerability_per_layer"]
    assert len(per_layer) == 3 and metrics["fixed_layer"] == max(
        range(3), key=per_layer.__getitem__
    )
    assert cli.model.vectors.shape == (3, 32) and torch.isfinite(cli.model.vectors).all()


def test_behavior_config_trains_w2s(tiny_backbone_dir, tmp_path, monkeypatch):
    cli, metrics = _fit(
        "configs/files/behavior_w2s.yaml", tiny_backbone_dir, tmp_path, monkeypatch,
        "--trainer.max_epochs=2", f"--model.sweep_cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert set(metrics["results"]) == {"base", "sys_pos", "sys_neg", "user_pos", "user_neg", "val"}
    assert cli.model.data.summary["behavior"] == "caution_ab"
    assert cli.model.data.summary["num_examples"]["train"] == 4
    base = metrics["results"]["base"]
    assert base["oracle"]["steerability"] >= base["fixed"]["steerability"] - 1e-6


def test_behavior_config_runs_a2a(tiny_backbone_dir, tmp_path, monkeypatch):
    cli, metrics = _fit(
        "configs/files/behavior_a2a.yaml", tiny_backbone_dir, tmp_path, monkeypatch,
        "--model.steps=1", "--model.top_k=2",
    )  # fmt: skip
    assert metrics["task"] == "caution_ab"
    assert len(metrics["test/accuracy"]) == 3  # the tiny backbone's layers
    assert set(metrics["ndcg"]["accuracy"]) >= {"a2a_in", "a2a_out", "actdiff", "random"}


def test_multiple_choice_config_runs_austeer(tiny_backbone_dir, tmp_path, monkeypatch):
    cli, metrics = _fit(
        "configs/files/multiple_choice_austeer.yaml", tiny_backbone_dir, tmp_path, monkeypatch,
        "--model.k_grid=[1,3]", "--model.alpha_grid=[1.0,10.0]",
        f"--model.cache_dir={tmp_path / 'stats_cache'}",
    )  # fmt: skip
    assert metrics["task"] == "science_quiz"
    assert cli.model.stats.n == 4  # one pass over the pool of 4 questions
    assert len(metrics["search"]) == 4
    assert metrics["val/accuracy"] == max(row["accuracy"] for row in metrics["search"])
    assert (resolve_run(tmp_path) / "intervention").is_dir()
