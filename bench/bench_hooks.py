"""Overhead of the hooks: one ActivScalar training step vs the same passes with no hooks.

Both sides run the three-term objective's concatenated batch (beta = +1, -1, 0 rows) through the
real SmolLM2-135M-Instruct forward and backward.  With no hooks there is no intervention
parameter, so the baseline takes its gradient with respect to the input embeddings, which makes
the backward pass run through the whole network as the edited one does (its first edit point is
layer 0).  Prints the median times and their ratio (goal: <= 1.10).

    python bench/bench_hooks.py [--batch 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from datamodules import IOIDataModule
from interventions.core.backbone import load_backbone
from interventions.core.hooks import attach, last_token_logits, position_ids
from interventions.core.sites import model_dims
from interventions.edits import ActivScalar
from interventions.evaluation.objectives import objective_terms, three_term_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    model, _ = load_backbone()
    dm = IOIDataModule(batch_size=args.batch, num_train=args.batch, num_val=4, num_test=4)
    batch = next(iter(dm.train_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = ids.shape[0]
    ids3, mask3 = ids.repeat(3, 1), mask.repeat(3, 1)
    beta = torch.cat([torch.ones(n), -torch.ones(n), torch.zeros(n)])
    edit = ActivScalar(model_dims(model), sites=["attn_out", "mlp_out"], num_positions=ids.shape[1])
    embed = model.get_input_embeddings()

    def loss_from(logits: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
        pos, neg, clean = logits.split(n)
        terms = objective_terms(
            pos, neg, clean.detach(), batch["correct_id"], batch["wrong_id"], margin=1.0
        )
        return three_term_loss(terms, l1, lambda_f=1.0, lambda_m=1e-3)["loss"]

    def hooked_step() -> None:
        edit.zero_grad()
        with attach(model, edit, beta=beta):
            logits = last_token_logits(model, ids3, mask3)
        loss_from(logits, edit.l1()).backward()

    def plain_step() -> None:
        x = embed(ids3).detach().requires_grad_(True)
        out = model(
            inputs_embeds=x,
            attention_mask=mask3,
            position_ids=position_ids(mask3),
            logits_to_keep=1,
        )
        loss_from(out.logits[:, -1], torch.zeros(())).backward()

    times: dict[str, list[float]] = {"hooks": [], "plain": []}
    for fn in (hooked_step, plain_step):  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both sides
        for name, fn in (("hooks", hooked_step), ("plain", plain_step)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    hooks, plain = statistics.median(times["hooks"]), statistics.median(times["plain"])
    print(f"batch {n} prompts x 3 rows, {ids.shape[1]} tokens, {edit.num_parameters()} scalars")
    print(f"ActivScalar step (hooks): {hooks:.3f} s   no hooks: {plain:.3f} s")
    print(f"ratio hooks / no hooks: {hooks / plain:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
