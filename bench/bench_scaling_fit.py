"""`make train` old default vs new default, back to back in one run: wall time and passes.

The old default is the IOI ActivScalar config as it was before sparse defaults (plain L1 penalty
with lambda_M = 0.001, lr 0.01, batch 32, the clean rows run in every step, 20 epochs, validation
every epoch, float32); the new
one is ``configs/ioi/activscalar.yaml`` as shipped.  Both train the same data from the same seed
through the CLI, with the end-of-fit work (final metrics, plots, export, samples) included, and
the script prints the wall time of each, their ratio, and the rows each sends through the model
per training step (forward/backward equivalents: one prompt row = 1).  The new default also
runs with ``--trainer.precision 32-true``, to show what its ``bf16-mixed`` contributes.

    python bench/bench_scaling_fit.py [--config configs/ioi/activscalar.yaml] [--out runs/bench_fit]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from interventions.cli import build_cli

OLD_DEFAULT = [
    "--model.sparsity=penalty",
    "--model.lambda_m=0.001",
    "--model.lr=0.01",
    "--model.margin=1.0",
    "--model.cache_clean_logits=false",
    "--model.early_stopping_patience=null",
    "--model.num_samples=0",
    "--trainer.max_epochs=20",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.precision=32-true",
    "--data.batch_size=32",
]


def timed_fit(config: str, run: Path, overrides: list[str]) -> dict:
    cli = build_cli(
        [
            "--config", config, f"--trainer.default_root_dir={run}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", *overrides,
        ],
        run=False,
    )  # fmt: skip
    counts = {"train": 0, "other": 0}
    trainer = cli.trainer

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counts["train" if trainer.training else "other"] += int(ids.shape[0])

    handle = cli.model.model.register_forward_pre_hook(count, with_kwargs=True)
    start = time.perf_counter()
    trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    handle.remove()
    metrics = json.loads((Path(trainer.default_root_dir) / "metrics.json").read_text())
    steps = trainer.global_step
    batch = cli.datamodule.hparams.batch_size
    return dict(
        seconds=seconds,
        epochs=trainer.current_epoch,
        steps=steps,
        rows_per_step=counts["train"] / max(steps, 1) / batch,
        eval_rows=counts["other"],
        test_flip_rate=metrics["test"]["flip_rate"],
        minimality=metrics["test"]["minimality"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ioi/activscalar.yaml")
    parser.add_argument("--out", default="runs/bench_fit")
    args = parser.parse_args()
    out = Path(args.out)
    new = timed_fit(args.config, out / "new", [])
    # the new default in float32: how much of the ratio the precision choice is
    new32 = timed_fit(args.config, out / "new_fp32", ["--trainer.precision=32-true"])
    old = timed_fit(args.config, out / "old", OLD_DEFAULT)
    print(
        "| run | fit s | epochs | steps | rows/step (x batch) | eval rows | flip test | minimality |"
    )
    print("|---|---|---|---|---|---|---|---|")
    runs = (("old default", old), ("new default", new), ("new default, 32-true", new32))
    for name, r in runs:
        print(
            f"| {name} | {r['seconds']:.0f} | {r['epochs']} | {r['steps']} | "
            f"{r['rows_per_step']:.2f} | {r['eval_rows']} | {r['test_flip_rate']:.2f} | "
            f"{r['minimality']:.0f} |"
        )
    print(f"\nwall-time ratio new / old: {new['seconds'] / old['seconds']:.3f}")
    print(f"wall-time ratio new (32-true) / old: {new32['seconds'] / old['seconds']:.3f}")


if __name__ == "__main__":
    main()
