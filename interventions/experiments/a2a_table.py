"""The A2A result tables (paper Tables 1-3 and the cost of Section 4.3) from finished runs.

Each run folder holds the ``metrics.json`` that :class:`interventions.methods.a2a.A2AModule` writes::

    python -m interventions.experiments.a2a_table runs/a2a/extraversion runs/a2a/agreeableness ...

prints markdown: nDCG@1/5/10 per task and method (ground truth = the test grid's accuracy gain,
and = its mean-margin gain), test accuracy after steering the top-k layers per method, and the
cost of A2A vs the grid in forward-equivalents and seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from interventions.methods.a2a.selection import method_costs
from interventions.reporting.run_folder import resolve_run

METHODS: tuple[tuple[str, str], ...] = (
    ("grid_val", "Grid search (validation ranking)"),
    ("random", "Random (mean of 10)"),
    ("mid", "Mid-layer"),
    ("actdiff", "ActDiff"),
    ("a2a_in", "A2A-In"),
    ("a2a_out", "A2A-Out"),
    ("a2a_total", "A2A-Total"),
    ("a2a_ratio", "A2A-Ratio"),
)


def _task(metrics: dict[str, Any], run: Path) -> str:
    """A column name: the run folder's name (unique, unlike the task of two runs of one task)."""
    return run.name


def ndcg_table(runs: dict[str, dict[str, Any]], truth: str = "accuracy") -> str:
    """Markdown: one row per method, nDCG@1/5/10 per task."""
    tasks = list(runs)
    head = "| method | " + " | ".join(f"{t} @1 | @5 | @10" for t in tasks) + " |"
    sep = "|---" * (1 + 3 * len(tasks)) + "|"
    rows = [head, sep]
    for key, label in METHODS:
        cells = []
        for t in tasks:
            table = runs[t]["ndcg"][truth].get(key)
            cells += (
                ["-"] * 3 if table is None else [f"{table[f'ndcg@{k}']:.2f}" for k in (1, 5, 10)]
            )
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def accuracy_table(runs: dict[str, dict[str, Any]]) -> str:
    """Markdown: test accuracy (and mean margin) after steering each method's top-k layers."""
    tasks = list(runs)
    rows = [
        "| method | " + " | ".join(tasks) + " |",
        "|---" * (1 + len(tasks)) + "|",
    ]
    order = [("vanilla", "Unsteered"), ("grid", "Grid search (all layers)")] + [
        (k, v) for k, v in METHODS if k != "grid_val"
    ]
    for key, label in order:
        cells = []
        for t in tasks:
            r = runs[t]["top_k_steering"][key]
            layer = r.get("chosen_layer")
            where = f" (L{layer})" if layer is not None else ""
            cells.append(f"{r['test_accuracy']:.3f} / {r['test_margin']:+.2f}{where}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def method_cost_table(runs: dict[str, dict[str, Any]]) -> str:
    """Markdown: forward-equivalents / seconds of choosing the layer with each method."""
    tasks = list(runs)
    rows = ["| method | " + " | ".join(tasks) + " |", "|---" * (1 + len(tasks)) + "|"]
    costs = {t: method_costs(m) for t, m in runs.items()}
    for key, label in (
        ("grid", "Grid search"),
        ("a2a", "A2A (any variant)"),
        ("actdiff", "ActDiff"),
        ("random", "Random / Mid-layer"),
    ):
        cells = [
            f"{costs[t][key]['forward_equivalents']:.0f} / {costs[t][key]['seconds']:.0f} s"
            for t in tasks
        ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cost_table(runs: dict[str, dict[str, Any]]) -> str:
    """Markdown: the cost of A2A vs the grid search per task."""
    rows = [
        "| task | attribution pairs | selection prompts | grid (fwd-eq) | A2A (fwd-eq) | saving "
        "| attribution s | grid s (shared prefix) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, m in runs.items():
        c = m["cost"]
        fe, s = c["forward_equivalents"], c["seconds"]
        rows.append(
            f"| {t} | {c['num_attribution']} | {c['num_val']} | {fe['grid']:.0f} | {fe['a2a']:.0f} "
            f"| {100 * fe['saving']:.1f}% | {s['attribution']:.0f} | {s['grid_val']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.json")
    args = parser.parse_args(argv)
    runs: dict[str, dict[str, Any]] = {}
    for folder in map(Path, args.runs):
        path = resolve_run(folder) / "metrics.json"
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: run the config first (train.py fit).")
        metrics = json.loads(path.read_text())
        runs[_task(metrics, folder)] = metrics
    print("nDCG (ground truth: test accuracy gain per layer)\n")
    print(ndcg_table(runs, "accuracy"))
    print("\nnDCG (ground truth: test mean-margin gain per layer)\n")
    print(ndcg_table(runs, "margin"))
    print("\nTest accuracy / mean margin after steering the top-k layers (chosen layer)\n")
    print(accuracy_table(runs))
    print("\nCost\n")
    print(cost_table(runs))
    print("\nCost per method (forward-equivalents / seconds)\n")
    print(method_cost_table(runs))


if __name__ == "__main__":
    main()
