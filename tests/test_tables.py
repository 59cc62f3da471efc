"""The result tables of the drivers: a table run in parts is merged, and a previous table that a
new one would lose is kept (``runner.write_table``, ``austeer_table.merge_previous``)."""

from __future__ import annotations

import json

from interventions.experiments.austeer_table import markdown, merge_previous
from interventions.experiments.runner import write_table


def _cell(acc: float, steered: int = 3) -> dict:
    return {"accuracy": acc, "steered": steered}


def test_austeer_table_in_parts_is_merged(tmp_path):
    first = {"vanilla": {"winogrande": _cell(0.5, 0)}, "AUSteer-FFN": {"winogrande": _cell(0.52)}}
    first, tasks = merge_previous(tmp_path / "table.json", first, ["winogrande"])
    write_table(tmp_path, first, markdown(first, tasks))
    # the second part: another task, and the Head row first in this call's dict
    second = {
        "vanilla": {"boolq": _cell(0.41, 0)},
        "AUSteer-Head": {"boolq": _cell(0.40)},
        "AUSteer-FFN": {"boolq": _cell(0.56), "winogrande": _cell(0.53)},
    }
    merged, tasks = merge_previous(tmp_path / "table.json", second, ["boolq"])
    assert tasks == ["boolq", "winogrande"]
    assert list(merged) == ["vanilla", "AUSteer-Head", "AUSteer-FFN"]  # the table's row order
    assert merged["vanilla"] == {"winogrande": _cell(0.5, 0), "boolq": _cell(0.41, 0)}
    assert merged["AUSteer-FFN"]["winogrande"] == _cell(0.53)  # this call's cell wins
    assert merged["AUSteer-Head"] == {"boolq": _cell(0.40)}
    text = markdown(merged, tasks)
    assert "| AUSteer-Head | 0.400 (3) |  |" in text
    assert "| vanilla | 0.410 (0) | 0.500 (0) |" in text


def test_write_table_keeps_a_previous_table_it_would_lose(tmp_path):
    write_table(tmp_path, {"a": {"x": 1}}, "one\n")
    write_table(tmp_path, {"a": {"x": 1, "y": 2}}, "two\n")  # adds only: replaces
    assert not list(tmp_path.glob("*.prev*"))
    write_table(tmp_path, {"a": {"x": 3}}, "three\n")  # changes x, drops y: the old is kept
    assert json.loads((tmp_path / "table.prev1.json").read_text()) == {"a": {"x": 1, "y": 2}}
    assert (tmp_path / "table.prev1.md").read_text() == "two\n"
    write_table(tmp_path, {"b": 1}, "four\n")
    assert json.loads((tmp_path / "table.prev2.json").read_text()) == {"a": {"x": 3}}
    assert json.loads((tmp_path / "table.json").read_text()) == {"b": 1}
    assert (tmp_path / "table.md").read_text() == "four\n"
    write_table(tmp_path, {"b": 1}, "four\n")  # the same table again (a resumed driver)
    assert len(list(tmp_path.glob("table.prev*.json"))) == 2
