"""Multiple-choice evaluation speed on the real SmolLM2: batching, and the (alpha, k) search.

Part 1 scores the first ``--items`` test items of a task with
``interventions.evaluation.multiple_choice.evaluate_accuracy``, in batches of ``--batch`` items (longest
first, as the data module batches them, and in data order) and one item at a time (as the AUSteer
reference implementation evaluates), and prints the throughputs,
their ratio and both accuracies (which must be equal: scores do not depend on padding or batch
composition).

Part 2 times a hyperparameter search: ``--settings`` AUSteer edits (``positions="last"``, k
random AUs of ``mlp_act`` with strengths alpha, from the k x alpha grid) scored on the first
``--val_items`` validation items, (a) with ``evaluate_many`` (one pass; each batch's prompt
prefix runs once for all settings) and (b) one setting after another, each from scratch, batched.
It prints both times, their ratio, the largest accuracy difference, and the projected time of the
default 7 x 7 grid on the default 100 validation items.

    python bench/bench_mc_eval.py [--task copa] [--items 64] [--batch 16] [--settings 8]
"""

from __future__ import annotations

import argparse
import time
from typing import Literal, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from datamodules.commonsense import (
    TASKS,
    ChoiceCollator,
    ChoiceItem,
    CommonsenseDataModule,
    longest_first,
)
from interventions.core.backbone import load_backbone
from interventions.core.sites import model_dims
from interventions.evaluation.multiple_choice import evaluate_accuracy, evaluate_many
from interventions.methods.austeer.units import build_edit


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


def search_edits(model: nn.Module, settings: int, seed: int = 0) -> list[tuple[nn.Module, float]]:
    """``settings`` AUScale edits from the k x alpha grid (random units; the time does not depend
    on which units are chosen)."""
    dims = model_dims(model)
    g = torch.Generator().manual_seed(seed)
    grid = [(k, a) for k in (1, 2, 5, 10, 20, 50, 100) for a in (1, 2, 5, 10, 20, 50, 100)]
    pick = torch.randperm(len(grid), generator=g)[:settings].tolist()
    edits = []
    for k, alpha in (grid[i] for i in pick):
        values = torch.zeros(dims.num_layers, dims.width("mlp_act"))
        units = torch.randperm(values.numel(), generator=g)[:k]
        values.view(-1)[units] = alpha * (torch.rand(k, generator=g) - 0.5)
        edits.append((build_edit(dims, {"mlp_act": values}, "auscale", "last"), 1.0))
    return edits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="copa")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--normalize", choices=("sum", "mean"), default="mean")
    parser.add_argument("--settings", type=int, default=8, help="search settings to time")
    parser.add_argument("--val_items", type=int, default=32, help="validation items searched")
    args = parser.parse_args()

    dm = CommonsenseDataModule(task=args.task, max_test=args.items, num_val=args.val_items)
    normalize = cast(Literal["sum", "mean"], args.normalize)
    model, _ = load_backbone()
    collator = dm.choice_collator

    items = longest_first(dm.test_items)  # batches of similar lengths, as the data module loads
    in_order, _ = measure(model, dm.test_items, collator, args.batch, normalize)
    batched, acc_batched = measure(model, items, collator, args.batch, normalize)
    single, acc_single = measure(model, items, collator, 1, normalize)
    print(f"{len(items)} {args.task} test items, normalize={args.normalize}")
    print(
        f"batched (batch {args.batch}), longest first: {batched:.2f} items/s, accuracy {acc_batched:.4f}"
    )
    print(f"batched, data order (more padding): {in_order:.2f} items/s")
    print(f"one at a time:        {single:.2f} items/s, accuracy {acc_single:.4f}")
    print(f"speed-up batched / one at a time: {batched / single:.2f}x")
    print(f"accuracies equal: {acc_batched == acc_single}")

    loader = DataLoader(longest_first(dm.val_items), batch_size=args.batch, collate_fn=collator)
    edits = search_edits(model, args.settings)
    t0 = time.perf_counter()
    shared = evaluate_many(model, loader, edits, normalize)
    t_shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    separate = [evaluate_accuracy(model, loader, normalize, edit, beta) for edit, beta in edits]
    t_separate = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(shared, separate, strict=True))
    per_cell = t_shared / (len(edits) * len(dm.val_items))
    print(f"\nsearch: {len(edits)} settings x {len(dm.val_items)} {args.task} validation items")
    print(f"shared prefix, one pass (evaluate_many): {t_shared:.1f} s")
    print(f"each setting from scratch (batched):     {t_separate:.1f} s")
    print(f"speed-up: {t_separate / t_shared:.2f}x; largest accuracy difference {diff:.4f}")
    print(
        f"projected 7 x 7 grid on 100 validation items: {per_cell * 49 * 100:.0f} s shared, "
        f"{t_separate / t_shared * per_cell * 49 * 100:.0f} s from scratch, "
        f"{t_separate / t_shared * per_cell * 49 * 100 * batched / single:.0f} s one at a time"
    )


if __name__ == "__main__":
    main()
