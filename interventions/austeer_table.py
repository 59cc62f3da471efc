"""The AUSteer results table: tasks x (vanilla, CAA, AUSteer-Head, AUSteer-FFN, four ablations).

One command trains every run from the ``configs/commonsense`` configs and aggregates their
``metrics.json`` (test accuracy and the number of steered activations)::

    python -m interventions.austeer_table --out runs/commonsense/table -- --data.max_test 500

Everything after ``--`` is passed to ``train.py fit`` for every run; a run whose
``metrics.json`` exists is not trained again, so an interrupted table continues where it stopped.
The ablations (random and activation-difference localisation, fixed vector, fixed strength) use
the ``--ablation_site`` variant (default FFN).  Results: ``<out>/table.json`` and
``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = [
    ("CAA", "caa", None),
    ("AUSteer-Head", "austeer_head", None),
    ("AUSteer-FFN", "austeer_ffn", None),
    ("random localisation", None, "random"),
    ("activation-difference localisation", None, "actdiff"),
    ("fixed vector", None, "fixed_vector"),
    ("fixed strength", None, "fixed_strength"),
]


def train(config: Path, run: Path, extra: list[str]) -> dict:
    """Train one run in this process (skipped when its metrics exist)."""
    if (run / "metrics.json").exists():
        return json.loads((run / "metrics.json").read_text())
    from interventions.cli import fit_run

    return fit_run(["--config", str(config), *extra], run)


def markdown(table: dict[str, dict[str, dict]], tasks: list[str]) -> str:
    """Rows = methods, columns = tasks: test accuracy (steered activations)."""
    lines = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for name in table:
        cells = []
        for task in tasks:
            r = table[name].get(task)
            cells.append("" if r is None else f"{r['accuracy']:.3f} ({r['steered']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Train AUSteer, CAA and the ablations on commonsense tasks; aggregate.",
        epilog="Arguments after -- are passed to train.py fit for every run.",
    )
    parser.add_argument("--tasks", nargs="+", default=["boolq", "copa", "winogrande"])
    parser.add_argument("--ablation_site", choices=["head", "ffn"], default="ffn")
    parser.add_argument("--configs", default="configs/commonsense")
    parser.add_argument("--out", default="runs/commonsense/table")
    from interventions.cli import split_passthrough

    own, extra = split_passthrough(argv)
    args = parser.parse_args(own)
    out = Path(args.out)
    table: dict[str, dict[str, dict]] = {"vanilla": {}}
    for task in args.tasks:
        for name, config, method in ROWS:
            stem = config or f"austeer_{args.ablation_site}"
            run_extra = list(extra)
            folder = f"{stem}_{task}"
            if method is not None:
                run_extra.append(f"--model.method={method}")
                folder = f"{method}_{args.ablation_site}_{task}"
            metrics = train(Path(args.configs) / f"{stem}_{task}.yaml", out / folder, run_extra)
            table.setdefault(name, {})[task] = {
                "accuracy": metrics["test/accuracy"],
                "steered": metrics["num_steered_activations"],
                "choice": metrics["choice"],
            }
            table["vanilla"][task] = {"accuracy": metrics["test/accuracy_vanilla"], "steered": 0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    text = markdown(table, args.tasks)
    (out / "table.md").write_text(text)
    print(text)
    return table


if __name__ == "__main__":
    main()
