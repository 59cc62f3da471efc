"""A2A total cost vs the grid search, measured in one run on SmolLM2-135M-Instruct.

For one task's prompts (MWE extraversion persona pairs, or IOI with ``--task ioi``) it times:

* the attribution of ``--attr`` pairs with EAP-IG (m = 5, block-level inputs);
* the grid search over all L layers x M multipliers on ``--eval`` prompts, (a) with the shared
  prompt prefix of :func:`interventions.methods.a2a.module.steering_grid` and (b) naively, one full forward pass
  per (layer, multiplier) and batch, as research code usually does;
* A2A's steering of the top-k layers (k / L of the grid time).

and prints seconds, the forward-equivalent accounting of the paper, and the ratios
``A2A / grid`` for both grid implementations.  Run ``python bench/bench_a2a.py`` (optionally
``--threads 1`` when another job shares the cores).
"""

from __future__ import annotations

import argparse
import time

import torch

from datamodules.ioi import IOIDataModule
from datamodules.mwe import MWEDataModule
from interventions.core.backbone import load_backbone
from interventions.core.hooks import attach, last_token_logits
from interventions.core.sites import model_dims
from interventions.methods.a2a import cost_forward_equivalents, steering_grid
from interventions.methods.caa.vectors import caa_vectors, steering_edit
from interventions.methods.eap.eap_ig import eap_ig


def naive_grid(model, batches, vectors, multipliers) -> torch.Tensor:
    """Accuracy [L, M] with one full forward per (layer, multiplier, batch)."""
    num_layers = model_dims(model).num_layers
    edit = steering_edit(model, vectors)
    hits = torch.zeros(num_layers, len(multipliers))
    total = 0
    with torch.no_grad():
        for b in batches:
            ids, mask = b["corrupted_input_ids"], b["corrupted_attention_mask"]
            rows = torch.arange(ids.shape[0])
            for layer in range(num_layers):
                for j, lam in enumerate(multipliers):
                    beta = torch.zeros(ids.shape[0], num_layers)
                    beta[:, layer] = lam
                    with attach(model, edit, beta):
                        logits = last_token_logits(model, ids, mask)
                    hits[layer, j] += float(
                        (logits[rows, b["correct_id"]] > logits[rows, b["wrong_id"]]).sum()
                    )
            total += ids.shape[0]
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["extraversion", "ioi"], default="extraversion")
    parser.add_argument("--attr", type=int, default=16, help="attribution pairs")
    parser.add_argument("--eval", type=int, default=16, help="grid-search prompts")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_backbone("smollm2-135m-instruct")
    if args.task == "ioi":
        dm = IOIDataModule(
            num_train=args.attr,
            num_val=args.eval,
            num_test=1,
            batch_size=8,
            fixed_length=False,
            facts="standard",  # the templates of the recorded numbers (and of configs/a2a/ioi.yaml)
        )
    else:
        n = args.attr + args.eval + 1
        dm = MWEDataModule(
            behavior="persona/extraversion",
            contrast="system",
            max_examples=n,
            train_fraction=args.attr / n,
            val_fraction=args.eval / n,
            batch_size=8,
        )
    dm.setup()
    train, val = list(dm.train_dataloader()), list(dm.val_dataloader())
    mults = [2.0, 8.0, 32.0]
    num_layers = model_dims(model).num_layers

    t = time.perf_counter()
    for b in train:
        eap_ig(
            model,
            b["input_ids"],
            b["corrupted_input_ids"],
            b["correct_id"],
            b["wrong_id"],
            clean_mask=b["attention_mask"],
            corrupted_mask=b["corrupted_attention_mask"],
            steps=5,
        )
    attribution = time.perf_counter() - t
    with torch.no_grad():
        vectors = caa_vectors(model, train)
        t = time.perf_counter()
        for b in val:
            last_token_logits(model, b["corrupted_input_ids"], b["corrupted_attention_mask"])
        one_forward = time.perf_counter() - t

    t = time.perf_counter()
    shared = steering_grid(model, val, vectors, mults)
    grid_shared = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_grid(model, val, vectors, mults)
    grid_naive = time.perf_counter() - t
    agree = float((naive.double() - shared.accuracy).abs().max())

    steer_k = args.k / num_layers
    a2a_shared = attribution + steer_k * grid_shared
    a2a_naive = attribution + steer_k * grid_naive
    fe = cost_forward_equivalents(args.attr, 5, args.eval, num_layers, len(mults), args.k)
    print(f"task {args.task}: {args.attr} attribution pairs, {args.eval} grid prompts, ")
    print(f"L = {num_layers}, M = {len(mults)}, k = {args.k}, threads {torch.get_num_threads()}")
    print(f"one plain forward of the grid prompts   {one_forward:8.2f} s")
    print(f"attribution (EAP-IG, m = 5)             {attribution:8.2f} s")
    print(f"grid, shared prefix                     {grid_shared:8.2f} s")
    print(f"grid, naive (full forward per setting)  {grid_naive:8.2f} s")
    print(f"max |accuracy difference| shared vs naive: {agree:.2e}")
    print(f"naive / shared grid speed-up            {grid_naive / grid_shared:8.2f}x")
    print(
        f"A2A (attribution + k layers), shared    {a2a_shared:8.2f} s = {a2a_shared / grid_shared:.2f}x the shared grid"
    )
    print(
        f"A2A (attribution + k layers), naive     {a2a_naive:8.2f} s = {a2a_naive / grid_naive:.2f}x the naive grid"
    )
    print(
        f"paper accounting: grid {fe['grid']:.0f}, A2A {fe['a2a']:.0f} forward-equivalents, "
        f"saving {100 * fe['saving']:.1f}%"
    )


if __name__ == "__main__":
    main()
