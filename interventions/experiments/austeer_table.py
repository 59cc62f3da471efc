"""The AUSteer results table: tasks x (vanilla, CAA, AUSteer-Head, AUSteer-FFN, four ablations).

One command trains every run from the ``configs/commonsense`` configs and aggregates their
``metrics.json`` (test accuracy and the number of steered activations)::

    python -m interventions.experiments.austeer_table --out runs/commonsense/table -- --data.max_test 500

Everything after ``--`` is passed to ``train.py fit`` for every run; a run whose
``metrics.json`` exists is not trained again, so an interrupted table continues where it stopped.
The ablations (random and activation-difference localisation, fixed vector, fixed strength) use
the ``--ablation_site`` variant (default FFN).  ``--methods`` trains some rows only (e.g.
``--methods head ffn``); ``--template instruction`` runs the paper's protocol (options labelled,
answered with a letter / Yes-No) instead of the cloze one, into run folders and a table of its
own (``<run>_instruction``, ``table_instruction``), so both protocols can share ``--out``.
Results: ``<out>/table.json`` and ``<out>/table.md`` (``table_<template>`` for a template other
than cloze). A table run in parts (``--tasks copa winogrande``, then ``--tasks boolq``; or some
``--methods`` at a time) is merged into one: the cells of the previous ``table.json`` that a call
does not produce are kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from interventions.experiments.runner import fit_run, markdown_table, parse_args, write_table

ROWS = [
    ("CAA", "caa", None),
    ("AUSteer-Head", "austeer_head", None),
    ("AUSteer-FFN", "austeer_ffn", None),
    ("random localisation", None, "random"),
    ("activation-difference localisation", None, "actdiff"),
    ("fixed vector", None, "fixed_vector"),
    ("fixed strength", None, "fixed_strength"),
]
"""(row name, config stem or ``None`` for an ablation, ablation method or ``None``)."""

ROW_KEYS = {
    "caa": "CAA",
    "head": "AUSteer-Head",
    "ffn": "AUSteer-FFN",
    "random": "random localisation",
    "actdiff": "activation-difference localisation",
    "fixed_vector": "fixed vector",
    "fixed_strength": "fixed strength",
}
"""The ``--methods`` name of each row."""

TEMPLATES = ("cloze", "instruction")
TASK_ORDER = ("boolq", "copa", "winogrande")


def markdown(table: dict[str, dict[str, dict]], tasks: list[str]) -> str:
    """Rows = methods, columns = tasks: test accuracy (steered activations)."""

    def cell(r: dict | None) -> str:
        return "" if r is None else f"{r['accuracy']:.3f} ({r['steered']})"

    rows = [[name, *(cell(table[name].get(task)) for task in tasks)] for name in table]
    return markdown_table(["method", *tasks], rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Train AUSteer, CAA and the ablations on commonsense tasks; aggregate.",
        epilog="Arguments after -- are passed to train.py fit for every run.",
    )
    parser.add_argument("--tasks", nargs="+", default=["boolq", "copa", "winogrande"])
    parser.add_argument("--ablation_site", choices=["head", "ffn"], default="ffn")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(ROW_KEYS),
        default=list(ROW_KEYS),
        help="rows to train (default: all): "
        + ", ".join(f"{k} = {v}" for k, v in ROW_KEYS.items()),
    )
    parser.add_argument(
        "--template",
        choices=TEMPLATES,
        default="cloze",
        help="prompt format (--data.template of every run): cloze (the answer continues the "
        "text) or instruction (the paper's: options labelled, answered with a letter / Yes-No)",
    )
    parser.add_argument("--configs", default="configs/commonsense")
    parser.add_argument("--out", default="runs/commonsense/table")
    args, extra = parse_args(parser, argv)
    if any(arg.startswith("--data.template") for arg in extra):
        parser.error(
            "pass the prompt format as --template (before --), not --data.template after --: "
            "the runs of each format go to folders and a table of their own."
        )
    out = Path(args.out)
    wanted = {ROW_KEYS[key] for key in args.methods}
    suffix = "" if args.template == "cloze" else f"_{args.template}"
    table: dict[str, dict[str, dict]] = {"vanilla": {}}
    for task in args.tasks:
        for name, config, method in ROWS:
            if name not in wanted:
                continue
            stem = config or f"austeer_{args.ablation_site}"
            run_extra = [f"--data.template={args.template}", *extra]
            folder = f"{stem}_{task}"
            if method is not None:
                run_extra.append(f"--model.method={method}")
                folder = f"{method}_{args.ablation_site}_{task}"
            folder += suffix
            config = Path(args.configs) / f"{stem}_{task}.yaml"
            metrics = fit_run(["--config", str(config), *run_extra], out / folder)
            table.setdefault(name, {})[task] = {
                "accuracy": metrics["test/accuracy"],
                "steered": metrics["num_steered_activations"],
                "choice": metrics["choice"],
            }
            table["vanilla"][task] = {"accuracy": metrics["test/accuracy_vanilla"], "steered": 0}
    table, tasks = merge_previous(out / f"table{suffix}.json", table, args.tasks)
    write_table(out, table, markdown(table, tasks), name=f"table{suffix}")
    return table


def merge_previous(
    path: Path, table: dict[str, dict[str, dict]], tasks: list[str]
) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """The table of this call plus the cells of the previous ``table.json`` at ``path`` that
    this call did not produce (other tasks or rows), and the merged task columns.

    A table run in parts (``--tasks copa winogrande``, then ``--tasks boolq``) ends as one table
    of every task; a cell this call produced replaces the previous one.
    """
    previous = json.loads(path.read_text()) if path.is_file() else {}
    merged = {row: dict(previous.get(row, {})) for row in previous}
    for row, cells in table.items():
        merged.setdefault(row, {}).update(cells)
    order = ["vanilla", *(name for name, _, _ in ROWS)]
    merged = {row: merged[row] for row in sorted(merged, key=lambda r: _index(order, r))}
    seen = {task for cells in merged.values() for task in cells}
    columns = [t for t in TASK_ORDER if t in seen]
    columns += sorted(seen - set(columns))
    return merged, columns


def _index(order: list[str], item: str) -> int:
    return order.index(item) if item in order else len(order)


if __name__ == "__main__":
    main()
