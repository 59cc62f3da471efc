"""The sweep that chose the default activation-scaling configs (issue: sparse, localised scalars).

Trains each grid point from a base config with the CLI (in this process), skipping runs whose
``metrics.json`` exists, and prints one markdown row per run: the settings, the epochs actually
run (early stopping), the fit wall time, flip rates, minimality (non-negligible scalars,
|theta| >= 0.01) and test faithfulness.

    python bench/sweep_scaling_defaults.py --config configs/ioi/activscalar.yaml \\
        --out runs/sweep/ioi --lambda_m 0.05 0.1 0.2 --lr 0.01 0.03 --margin 1 \\
        -- --trainer.max_epochs 20 --model.sparsity proximal

Arguments after ``--`` go to every run.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from interventions.experiments.runner import fit_run_folder, split_passthrough


def main(argv: list[str] | None = None) -> None:
    own, passthrough = split_passthrough(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lambda_m", type=float, nargs="+", required=True)
    parser.add_argument("--lr", type=float, nargs="+", required=True)
    parser.add_argument("--margin", type=float, nargs="+", default=[1.0])
    args = parser.parse_args(own)
    rows = []
    for lm, lr, m in itertools.product(args.lambda_m, args.lr, args.margin):
        run = Path(args.out) / f"lm{lm:g}_lr{lr:g}_m{m:g}"
        folder = fit_run_folder(
            [
                "--config", args.config, f"--model.lambda_m={lm}", f"--model.lr={lr}",
                f"--model.margin={m}", "--trainer.enable_progress_bar=false", *passthrough,
            ],
            run,
        )  # fmt: skip
        metrics = json.loads((folder / "metrics.json").read_text())
        epochs = sorted(folder.glob("checkpoints/epoch=*.ckpt"))
        epoch = epochs[-1].name.split("-")[0].removeprefix("epoch=") if epochs else "?"
        rows.append(
            f"| {lm:g} | {lr:g} | {m:g} | {int(epoch) + 1 if epoch != '?' else '?'} | "
            f"{metrics['fit_wall_time_s']:.0f} | {metrics['train']['flip_rate']:.2f} | "
            f"{metrics['test']['flip_rate']:.2f} | {metrics['test']['minimality']:.0f} / "
            f"{metrics['test']['num_parameters']:.0f} | {metrics['test']['faithfulness']:.3f} |"
        )
        print(rows[-1], flush=True)
    print("\n| λ_M | lr | m | epochs | fit s | flip train | flip test | minimality | F test |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
