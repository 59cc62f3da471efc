"""Multiple-choice evaluation throughput: batched vs one item at a time (items/s), real SmolLM2.

Scores the first ``--items`` test items of a commonsense task (BoolQ, COPA or WinoGrande) with
``interventions.multiple_choice.evaluate_accuracy``, once in batches of ``--batch`` items and once
item by item, and prints both throughputs, their ratio and both accuracies (which must be equal:
scores do not depend on padding or batch composition).

    python bench/bench_mc_eval.py [--task copa] [--items 64] [--batch 16] [--normalize mean]
"""

from __future__ import annotations

import argparse
import time
from typing import Literal, cast

from torch import nn
from torch.utils.data import DataLoader

from datamodules.commonsense import TASKS, ChoiceCollator, ChoiceItem, CommonsenseDataModule
from interventions.backbone import load_backbone
from interventions.multiple_choice import evaluate_accuracy


def measure(
    model: nn.Module,
    items: list[ChoiceItem],
    collator: ChoiceCollator,
    batch_size: int,
    normalize: Literal["sum", "mean"],
) -> tuple[float, float]:
    """``(items per second, accuracy)`` of one evaluation pass, after a one-batch warm-up."""
    loader = DataLoader(items, batch_size=batch_size, collate_fn=collator)
    warm = DataLoader(items[:batch_size], batch_size=batch_size, collate_fn=collator)
    evaluate_accuracy(model, warm, normalize=normalize)
    t0 = time.perf_counter()
    accuracy = evaluate_accuracy(model, loader, normalize=normalize)
    return len(items) / (time.perf_counter() - t0), accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="copa")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--normalize", choices=("sum", "mean"), default="mean")
    args = parser.parse_args()

    dm = CommonsenseDataModule(task=args.task, max_test=args.items)
    items = dm.test_items
    normalize = cast(Literal["sum", "mean"], args.normalize)
    model, _ = load_backbone()
    collator = dm.choice_collator
    batched, acc_batched = measure(model, items, collator, args.batch, normalize)
    single, acc_single = measure(model, items, collator, 1, normalize)

    print(f"{len(items)} {args.task} test items, normalize={args.normalize}")
    print(f"batched (batch {args.batch}): {batched:.2f} items/s, accuracy {acc_batched:.4f}")
    print(f"one at a time:        {single:.2f} items/s, accuracy {acc_single:.4f}")
    print(f"speed-up batched / one at a time: {batched / single:.2f}x")
    print(f"accuracies equal: {acc_batched == acc_single}")


if __name__ == "__main__":
    main()
