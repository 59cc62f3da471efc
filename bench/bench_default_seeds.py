"""Does the default job hold its result on every run? ``make train`` over seeds and precisions.

Trains ``configs/ioi/activscalar.yaml`` (or ``--config``) once per precision x seed, each run
with ``--seed_everything S --data.seed S`` (the seed of the edit's initialisation and of the
prompts and splits), through the CLI in this process, and prints one table: the flip rate of
each split, minimality (non-negligible scalars of all), test faithfulness and the fit wall time;
then the worst case over the runs, against the README's claim (test flip rate >= 0.9 with at
most 90 of 900 scalars non-negligible).

    python bench/bench_default_seeds.py [--seeds 0 1 2] [--precisions bf16-mixed 32-true] \\
        [--out runs/bench_seeds] [-- <train.py fit arguments for every run>]

A run whose ``metrics.json`` exists under ``--out`` is read, not trained again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interventions.experiments.runner import fit_run, markdown_table, split_passthrough

FLIP_CLAIM = 0.9
MINIMALITY_CLAIM = 90


def main(argv: list[str] | None = None) -> None:
    own, passthrough = split_passthrough(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ioi/activscalar.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "32-true"])
    parser.add_argument("--out", default="runs/bench_seeds")
    args = parser.parse_args(own)
    rows, results = [], []
    for precision in args.precisions:
        for seed in args.seeds:
            run = Path(args.out) / f"{precision}_seed{seed}"
            m = fit_run(
                [
                    "--config", args.config, f"--seed_everything={seed}", f"--data.seed={seed}",
                    f"--trainer.precision={precision}", "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false", "--model.num_samples=0", *passthrough,
                ],
                run,
            )  # fmt: skip
            results.append(m)
            rows.append(
                [
                    precision, str(seed), f"{m['train']['flip_rate']:.2f}",
                    f"{m['val']['flip_rate']:.2f}", f"{m['test']['flip_rate']:.2f}",
                    f"{m['test']['minimality']:.0f} / {m['test']['num_parameters']:.0f}",
                    f"{m['test']['faithfulness']:.3f}", f"{m['fit_wall_time_s']:.0f}",
                ]
            )  # fmt: skip
            print("| " + " | ".join(rows[-1]) + " |", flush=True)
    header = ["precision", "seed", "flip train", "flip val", "flip test", "minimality",
              "F test", "fit s"]  # fmt: skip
    print()
    print(markdown_table(header, rows))
    worst_flip = min(m["test"]["flip_rate"] for m in results)
    worst_min = max(m["test"]["minimality"] for m in results)
    held = sum(
        m["test"]["flip_rate"] >= FLIP_CLAIM and m["test"]["minimality"] <= MINIMALITY_CLAIM
        for m in results
    )
    print(
        f"worst case over {len(results)} runs: test flip rate {worst_flip:.2f}, "
        f"minimality {worst_min:.0f}; claim (flip >= {FLIP_CLAIM}, minimality <= "
        f"{MINIMALITY_CLAIM}) holds on {held} of {len(results)}"
    )


if __name__ == "__main__":
    main()
