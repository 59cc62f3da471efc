"""The W2S results table (paper Tables 1 and 2): many behaviours x steering methods x Top-K.

One command trains a W2S run for every behaviour, steering method and label-smoothing K from the
``configs/mwe/w2s_<steering>.yaml`` configs and aggregates their ``metrics.json``::

    python -m interventions.experiments.w2s_table --out runs/mwe/table -- --data.max_examples 150

Everything after ``--`` is passed to ``train.py fit`` for every run.  Runs that share a behaviour
and steering method share the cached layer sweeps, so the Top-K variants cost only the predictor
training.  A run whose ``metrics.json`` exists is not trained again, so an interrupted table
continues where it stopped.  Results: ``<out>/table.json``, ``<out>/table.md`` (the in-
distribution table per behaviour and mean, and the OOD table averaged over behaviours) and
``<out>/fixed_vs_w2s.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from datamodules.mwe import W2S_BEHAVIORS
from interventions.experiments.runner import fit_run, markdown_table, parse_args, write_table
from interventions.reporting.plots import fixed_vs_w2s

VARIANTS = ("sys_pos", "sys_neg", "user_pos", "user_neg")


def run_dir(out: Path, behavior: str, steering: str, k: int) -> Path:
    return out / behavior / f"{steering}_top{k}"


def train(config: str, run: Path, behavior: str, k: int, extra: list[str]) -> dict:
    """Train one W2S run in this process (skipped when its metrics exist)."""
    args = ["--config", config, f"--data.behavior={behavior}", f"--model.top_k={k}", *extra]
    return fit_run(args, run)


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def aggregate(results: dict[tuple[str, str, int], dict], behaviors: list[str], steerings, ks):
    """Rows ``method -> {behavior | "mean" -> (steerability, prop_steerable)}`` for a test set."""

    def rows_for(test: str) -> dict[str, dict[str, tuple[float, float]]]:
        rows: dict[str, dict[str, tuple[float, float]]] = {}
        for steering in steerings:
            name = steering.upper()
            fixed: dict[str, tuple[float, float]] = {}
            rows[f"{name} fixed layer"] = fixed  # filled below; first row of its method
            for k in ks:
                w2s: dict[str, tuple[float, float]] = {}
                for b in behaviors:
                    r = results.get((b, steering, k))
                    if r is None or test not in r["results"]:
                        continue
                    res = r["results"][test]
                    w2s[b] = (res["w2s"]["steerability"], res["w2s"]["prop_steerable"])
                    fixed[b] = (res["fixed"]["steerability"], res["fixed"]["prop_steerable"])
                rows[f"{name} + W2S (Top-{k})"] = w2s
        for row in rows.values():
            if row:
                row["mean"] = (
                    _mean([v[0] for b, v in row.items() if b != "mean"]),
                    _mean([v[1] for b, v in row.items() if b != "mean"]),
                )
        return rows

    return {test: rows_for(test) for test in ("base", *VARIANTS)}


def markdown(tables: dict, behaviors: list[str]) -> str:
    """The in-distribution table (behaviours x methods) and the OOD means."""
    base = tables["base"]
    methods = [m for m in base if base[m]]

    def cell(v) -> str:
        return "" if v is None else f"{v[0]:.3f} / {v[1]:.2f}"

    in_dist = [
        [f"**{b}**" if b == "mean" else b, *(cell(base[m].get(b)) for m in methods)]
        for b in [*behaviors, "mean"]
    ]
    ood = [[m, *(cell(tables[v].get(m, {}).get("mean")) for v in VARIANTS)] for m in methods]
    return (
        markdown_table(["behaviour", *methods], in_dist)
        + "\n"
        + markdown_table(["method", *VARIANTS], ood)
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Train W2S for many behaviours and aggregate the results table.",
        epilog="Arguments after -- are passed to train.py fit for every run.",
    )
    parser.add_argument("--behaviors", nargs="+", default=list(W2S_BEHAVIORS))
    parser.add_argument("--steering", nargs="+", default=["caa", "l2s"], choices=["caa", "l2s"])
    parser.add_argument("--top_k", nargs="+", type=int, default=[1, 3])
    parser.add_argument("--configs", default="configs/mwe", help="folder of w2s_<steering>.yaml")
    parser.add_argument("--out", default="runs/mwe/table")
    args, extra = parse_args(parser, argv)
    out = Path(args.out)
    results: dict[tuple[str, str, int], dict] = {}
    for behavior in args.behaviors:
        for steering in args.steering:
            config = str(Path(args.configs) / f"w2s_{steering}.yaml")
            for k in args.top_k:
                run = run_dir(out, behavior, steering, k)
                results[(behavior, steering, k)] = train(config, run, behavior, k, extra)
    tables = aggregate(results, args.behaviors, args.steering, args.top_k)
    write_table(out, tables, markdown(tables, args.behaviors))
    base = tables["base"]
    rows = {b: {m: base[m][b][0] for m in base if b in base[m]} for b in [*args.behaviors, "mean"]}
    fixed_vs_w2s(rows, title="Test steerability per behaviour", path=out / "fixed_vs_w2s.png")
    return tables


if __name__ == "__main__":
    main()
