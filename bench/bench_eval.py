"""Evaluation throughput: batched vs one example at a time (examples/s), real SmolLM2.

Runs the three-term evaluation (beta = +1, -1 and clean rows) of a trained-size ActivScalar on
the IOI test split with the data module's batches and with batch size 1, and prints both
throughputs and their ratio.

    python bench/bench_eval.py [--examples 64] [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from datamodules import IOIDataModule
from interventions.methods.scaling.module import InterventionModule


def throughput(module: InterventionModule, batch_size: int, examples: int) -> float:
    dm = IOIDataModule(batch_size=batch_size, num_train=8, num_val=4, num_test=examples)
    loader = dm.test_dataloader()
    module.evaluate(loader)  # warm-up
    t0 = time.perf_counter()
    module.evaluate(loader)
    return examples / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    module = InterventionModule(num_positions=15)
    with torch.no_grad():
        for p in module.edit.parameters():
            p.normal_(0, 0.1)
    batched = throughput(module, args.batch, args.examples)
    single = throughput(module, 1, args.examples)
    print(f"{args.examples} IOI test examples, 3 rows each (beta = +1, -1, 0)")
    print(f"batched (batch {args.batch}): {batched:.1f} examples/s")
    print(f"one at a time:        {single:.1f} examples/s")
    print(f"speed-up batched / one at a time: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
