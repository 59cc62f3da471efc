"""Pareto sweep (paper Fig. 2): a grid over lambda_F, lambda_M and m for ActivScalar and SteerVec.

One command trains every grid point from a base config and draws the effectiveness-faithfulness
and effectiveness-minimality Pareto fronts on the train and test splits::

    python -m interventions.experiments.pareto --config configs/ioi/activscalar.yaml \
        --lambda_f 0 1 --lambda_m 0 0.01 --margin 1 --out runs/ioi/pareto \
        -- --trainer.max_epochs 5

Everything after ``--`` is passed to ``train.py fit`` for every run.  Each run is a normal run
folder (``<out>/<edit>_lf<..>_lm<..>_m<..>/``); a run whose ``metrics.json`` exists is not trained
again, so an interrupted sweep continues where it stopped.  Results: ``<out>/pareto.json`` (all
points, which are on each front, each method's share of the fronts) and ``<out>/pareto.png``.
The paper's grid is {0, 1, 10, 100} for each hyperparameter; the default here is smaller.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import matplotlib

from interventions.experiments.runner import fit_run, parse_args
from interventions.reporting.run_folder import resolve_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (metric, +1 = larger is better / -1 = smaller is better) for the two fronts
FRONTS = {
    "faithfulness": (("effectiveness", 1), ("faithfulness", 1)),
    "minimality": (("effectiveness", 1), ("minimality", -1)),
}


def pareto_mask(points: list[dict], axes: tuple[tuple[str, int], ...]) -> list[bool]:
    """True for every point no other point dominates (>= on both axes, > on one)."""
    keys = [tuple(sign * p[name] for name, sign in axes) for p in points]
    front = []
    for i, a in enumerate(keys):
        dominated = any(
            all(b[k] >= a[k] for k in range(len(a))) and any(b[k] > a[k] for k in range(len(a)))
            for j, b in enumerate(keys)
            if j != i
        )
        front.append(not dominated)
    return front


def run_name(edit: str, lambda_f: float, lambda_m: float, margin: float) -> str:
    return f"{edit}_lf{lambda_f:g}_lm{lambda_m:g}_m{margin:g}"


def train_point(
    config: str,
    run: Path,
    edit: str,
    lf: float,
    lm: float,
    m: float,
    lr: float | None,
    extra: list[str],
) -> dict:
    """Train one grid point with the CLI (in this process) and return its metrics."""
    args = [
        "--config",
        config,
        f"--model.edit={edit}",
        f"--model.lambda_f={lf}",
        f"--model.lambda_m={lm}",
        f"--model.margin={m}",
        *([f"--model.lr={lr}"] if lr is not None else []),
        *extra,
    ]
    return fit_run(args, run)


def collect(out: Path, grid: list[tuple[str, float, float, float]]) -> list[dict]:
    """One point per (grid entry, split) from the runs' ``metrics.json``."""
    points = []
    for edit, lf, lm, m in grid:
        file = resolve_run(out / run_name(edit, lf, lm, m)) / "metrics.json"
        metrics = json.loads(file.read_text())
        for split in ("train", "test"):
            points.append(
                dict(
                    edit=edit,
                    lambda_f=lf,
                    lambda_m=lm,
                    margin=m,
                    split=split,
                    **{
                        k: metrics[split][k]
                        for k in ("effectiveness", "faithfulness", "minimality", "flip_rate")
                    },
                )
            )
    return points


def draw(points: list[dict], path: Path) -> dict:
    """Scatter the points, draw the fronts, return each edit's share of each front."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    colors = {"activscalar": "tab:red", "steervec": "tab:blue"}
    shares: dict[str, dict[str, dict[str, float]]] = {}
    for ax, (front_name, axes_spec) in zip(axes, FRONTS.items(), strict=True):
        y_name = axes_spec[1][0]
        for split, marker in (("train", "x"), ("test", "o")):
            subset = [p for p in points if p["split"] == split]
            if not subset:
                continue
            on_front = pareto_mask(subset, axes_spec)
            for p, front in zip(subset, on_front, strict=True):
                p[f"front_{front_name}"] = front
                ax.scatter(
                    p["effectiveness"],
                    p[y_name],
                    marker=marker,
                    color=colors.get(p["edit"], "black"),
                    alpha=1.0 if front else 0.35,
                )
            front_pts = sorted(
                (p for p, f in zip(subset, on_front, strict=True) if f),
                key=lambda p: p["effectiveness"],
            )
            ax.plot(
                [p["effectiveness"] for p in front_pts],
                [p[y_name] for p in front_pts],
                ls="--" if split == "train" else "-",
                color="grey",
                lw=1,
            )
            n_front = max(1, sum(on_front))
            shares.setdefault(front_name, {})[split] = {
                e: sum(1 for p, f in zip(subset, on_front, strict=True) if f and p["edit"] == e)
                / n_front
                for e in sorted({p["edit"] for p in subset})
            }
        ax.set_xlabel("effectiveness E0 (0 is best)")
        ax.set_ylabel(y_name)
        if y_name == "minimality":
            ax.set_yscale("symlog")
        ax.set_title(f"effectiveness vs {y_name} (x train, o test)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=e) for e, c in colors.items()]
    axes[0].legend(handles=handles)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return shares


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Pareto sweep over lambda_F, lambda_M and m.")
    parser.add_argument("--config", required=True, help="base config (a train.py fit YAML)")
    parser.add_argument("--edits", nargs="+", default=["activscalar", "steervec"])
    parser.add_argument("--lambda_f", nargs="+", type=float, default=[0.0, 1.0])
    parser.add_argument("--lambda_m", nargs="+", type=float, default=[0.0, 0.01])
    parser.add_argument("--margin", nargs="+", type=float, default=[1.0])
    parser.add_argument(
        "--lr",
        nargs="*",
        default=["steervec=0.001"],
        metavar="EDIT=LR",
        help="learning rate per edit type (others use the config's)",
    )
    parser.add_argument(
        "--out", default=None, help="sweep folder (default: <config run>/../pareto)"
    )
    args, extra = parse_args(parser, argv)
    lrs = {}
    for item in args.lr:
        edit, _, value = item.partition("=")
        try:
            lrs[edit] = float(value)
        except ValueError:
            parser.error(f"--lr takes EDIT=LR pairs, got {item!r}")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).parent.name / "pareto"
    grid = list(itertools.product(args.edits, args.lambda_f, args.lambda_m, args.margin))
    for i, (edit, lf, lm, m) in enumerate(grid, 1):
        run = out / run_name(edit, lf, lm, m)
        if (resolve_run(run) / "metrics.json").is_file():
            print(f"[{i}/{len(grid)}] {run.name}: done before, kept")
            continue
        print(f"[{i}/{len(grid)}] {run.name}: training")
        train_point(args.config, run, edit, lf, lm, m, lrs.get(edit), extra)
    points = collect(out, grid)
    shares = draw(points, out / "pareto.png")
    result = dict(points=points, front_shares=shares)
    (out / "pareto.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(shares, indent=2))
    print(f"wrote {out / 'pareto.png'} and {out / 'pareto.json'}")
    return result


if __name__ == "__main__":
    main()
