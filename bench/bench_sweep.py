"""Layer sweep on SmolLM2: cached prompt prefix vs re-running the whole prompt per pair.

For a few examples of one MWE behaviour, every (layer, multiplier) propensity is computed

* ``cached``: the prompt prefix runs once, its key/value cache is repeated and only the answer
  position is re-run for all pairs as one batch (``interventions.evaluation.sweep.sweep_example``);
* ``naive``: one full forward pass of the prompt per (layer, multiplier) pair
  (``sweep_example_naive``), as a straightforward implementation does;
* ``naive batched``: all pairs' full prompts as one batch (a fairer baseline on throughput).

Prints seconds per example, the speed-up ratios measured in this run and the largest difference
between the results.  With ``--pipeline`` it also times the whole W2S data pipeline (vectors,
sweeps of every split and OOD variant, labels, embeddings) for one behaviour with a cold cache.

    .venv/bin/python bench/bench_sweep.py --behavior myopic-reward --examples 4
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from datamodules.mwe import MWEDataModule
from interventions.core.backbone import load_backbone
from interventions.core.hooks import attach
from interventions.core.sites import model_dims
from interventions.evaluation.sweep import (
    DEFAULT_MULTIPLIERS,
    _rows,
    _steering_edit,
    sweep_example,
    sweep_example_naive,
    sweep_examples,
)
from interventions.methods.caa.vectors import caa_vectors


@torch.no_grad()
def naive_batched(model, example, vectors, multipliers) -> torch.Tensor:
    """All (layer, multiplier) rows as one batch of full prompts (no cache)."""
    num_layers = model_dims(model).num_layers
    beta, index = _rows(num_layers, multipliers)
    edit = _steering_edit(model, vectors, range(num_layers))
    ids = example.prompt_ids[None].expand(beta.shape[0], -1)
    with attach(model, edit, beta):
        logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    logp = torch.log_softmax(logits.float(), -1)
    return (logp[:, example.positive_id] - logp[:, example.negative_id])[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--behavior", default="myopic-reward")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", action="store_true", help="also time the W2S pipeline")
    parser.add_argument("--pipeline-examples", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_backbone("smollm2-135m-instruct")
    dm = MWEDataModule(behavior=args.behavior, max_examples=max(40, 3 * args.examples))
    dm.setup()
    vectors = caa_vectors(
        model, torch.utils.data.DataLoader(dm.train_examples, batch_size=16, collate_fn=dm.collator)
    )
    examples = sweep_examples(dm.test_examples[: args.examples], tok)
    mult = list(DEFAULT_MULTIPLIERS)
    lengths = [ex.prompt_ids.numel() for ex in examples]
    print(
        f"{args.behavior}: {len(examples)} examples, prompt tokens {lengths}, "
        f"{model_dims(model).num_layers} layers x {len(mult)} multipliers"
    )

    sweep_example(model, examples[0], vectors, mult)  # warm-up
    t = time.perf_counter()
    fast = [sweep_example(model, ex, vectors, mult) for ex in examples]
    t_fast = (time.perf_counter() - t) / len(examples)
    t = time.perf_counter()
    batched = [naive_batched(model, ex, vectors, mult) for ex in examples]
    t_batched = (time.perf_counter() - t) / len(examples)
    t = time.perf_counter()
    naive = [sweep_example_naive(model, ex, vectors, mult) for ex in examples]
    t_naive = (time.perf_counter() - t) / len(examples)
    diff = max(float((a - b).abs().max()) for a, b in zip(fast, naive))
    diff_b = max(float((a - b).abs().max()) for a, b in zip(fast, batched))
    print(f"cached prefix : {t_fast:8.2f} s/example")
    print(f"naive batched : {t_batched:8.2f} s/example  ratio {t_batched / t_fast:6.1f}x")
    print(f"naive         : {t_naive:8.2f} s/example  ratio {t_naive / t_fast:6.1f}x")
    print(f"max |cached - naive| = {diff:.2e}, max |cached - naive batched| = {diff_b:.2e}")

    if args.pipeline:
        from datamodules import W2SDataModule
        from interventions.methods.w2s import W2SOptions, build_w2s_data

        items = W2SDataModule(behavior=args.behavior, max_examples=args.pipeline_examples)
        items.setup()
        for steering in ("caa", "l2s"):
            with tempfile.TemporaryDirectory() as cache:
                seconds = []
                for _ in ("cold", "warm"):
                    t = time.perf_counter()
                    build_w2s_data(
                        model, items.items, items.collator, "smollm2-135m-instruct",
                        W2SOptions(steering=steering, sweep_cache_dir=cache), items.cache_tags(),
                    )  # fmt: skip
                    seconds.append(time.perf_counter() - t)
                cold, warm = seconds
            print(
                f"W2S {steering} data pipeline, {args.pipeline_examples} items + 4 OOD test "
                f"sets: {cold:.0f} s cold cache, {warm:.0f} s from the cache"
            )


if __name__ == "__main__":
    main()
