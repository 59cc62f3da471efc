"""The W2S data pipeline as plain functions: from a behaviour's items to (embedding, label,
steerability) tables.

:func:`build_w2s_data` runs, for the items of one behaviour (``train``, ``val``, ``test/base``
and ``test/<variant>`` lists of contrastive examples; :class:`datamodules.w2s.W2SDataModule`
provides them), each expensive step cached on disk:

1. the steering vectors: CAA (mean difference on train) or L2S (oracle vectors on train,
   auxiliary networks predicting them on val/test);
2. the layer sweep of every example over layers x multipliers
   (:func:`interventions.evaluation.sweep.cached_sweep`), giving per-example steerability per
   layer;
3. the fixed layer (best mean train steerability), the per-example labels (Top-K
   frequency-aware smoothing, layers never optimal on train pruned);
4. prompt embeddings (``minilm`` or ``lm_internal``).

:class:`~interventions.methods.w2s.module.W2SModule` calls it at setup; a driver can call it
directly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader

from interventions.core.batch import ContrastiveExample
from interventions.core.dispatch import input_device
from interventions.core.distributed import gather_rows, shard_loader, shard_range
from interventions.core.sites import ModelDims, model_dims
from interventions.evaluation.sweep import answer_activations, cached_sweep, sweep_examples
from interventions.methods.caa.vectors import caa_vectors
from interventions.methods.w2s.encoders import encode_prompts, prompt_text
from interventions.methods.w2s.l2s import L2SSteering, train_l2s
from interventions.methods.w2s.labels import encode_labels, frequency_smoothed_labels, label_space

__all__ = ["W2SData", "W2SOptions", "build_w2s_data"]


@dataclass(frozen=True)
class W2SOptions:
    """How :func:`build_w2s_data` steers, sweeps, labels and embeds (see ``W2SModule``)."""

    steering: Literal["caa", "l2s"] = "caa"
    multipliers: tuple[float, ...] = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
    top_k: int = 1
    encoder: str = "minilm"
    pooling: Literal["last", "mean"] = "last"
    ood_layers: Literal["labels", "all"] = "labels"
    l2s_context_layers: tuple[int, ...] | None = None
    l2s_steps: int = 300
    seed: int = 0
    sweep_cache_dir: str | None = None
    sweep_chunk_size: int = 16


@dataclass
class W2SData:
    """What the W2S predictor trains and is evaluated on.

    ``tables[name]`` (``train``, ``val``, ``test/<set>``) holds ``embedding [N, D]``,
    ``label [N]`` (class index; -100 = outside the label space) and ``steerability [N, L]``.
    """

    tables: dict[str, dict[str, Tensor]]
    summary: dict[str, Any]
    dims: ModelDims
    vectors: Tensor | None = None  # [L, d] CAA vectors (steering="caa")
    l2s: L2SSteering | None = None
    test_names: list[str] = field(default_factory=list)

    @property
    def fixed_layer(self) -> int:
        return int(self.summary["fixed_layer"])

    @property
    def label_layers(self) -> list[int]:
        return list(self.summary["label_layers"])

    @property
    def embedding_dim(self) -> int:
        return int(self.tables["train"]["embedding"].shape[1])


def _activations(model: nn.Module, items, collator, context_layers: Sequence[int]):
    """``(diff [N, L, d], context [N, len(context_layers), d])`` answer-token activations."""
    loader = DataLoader(list(items), batch_size=16, shuffle=False, collate_fn=collator)
    dims = model_dims(model)
    layers = list(range(dims.num_layers))
    diffs, ctxs = [], []
    for batch in shard_loader(loader):  # this rank's share; gathered below
        diff, ctx = answer_activations(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["correct_id"],
            batch["wrong_id"],
            layers,
            list(context_layers),
        )
        diffs.append(diff)
        ctxs.append(ctx)
    local = {"diff": torch.cat(diffs), "ctx": torch.cat(ctxs)} if diffs else {}
    rows = gather_rows(local)
    if not rows:
        return torch.zeros(0, len(layers), dims.d_model), torch.zeros(
            0, len(context_layers), dims.d_model
        )
    return rows["diff"], rows["ctx"]


def _encode(texts: list[str], options: W2SOptions, backbone: str, device: torch.device) -> Tensor:
    """``[N, D]`` prompt embeddings; under a process group each rank embeds its share."""

    def encode(part: list[str]) -> Tensor:
        return encode_prompts(
            part, options.encoder, backbone=backbone, pooling=options.pooling, device=device
        )

    mine = [texts[i] for i in shard_range(len(texts))]
    rows = gather_rows({"emb": encode(mine)} if mine else {})
    return rows["emb"] if rows else encode(texts)  # no text at all: encode_prompts says so


def build_w2s_data(
    model: nn.Module,
    items: Mapping[str, Sequence[ContrastiveExample]],
    collator: Any,
    backbone: str,
    options: W2SOptions,
    cache_tags: Mapping[str, Any] | None = None,
) -> W2SData:
    """Vectors, sweeps, labels and embeddings for W2S (see the module docstring).

    Args:
        model: the frozen backbone (on the device the passes should run on).
        items: ``train``, ``val``, ``test/base`` and any ``test/<variant>`` example lists.
        collator: tokenizes a list of examples into a contrastive batch (its ``tokenizer`` is
            used too).
        backbone: the backbone's name (a key of the sweep cache).
        options: steering, sweep, label and encoder settings.
        cache_tags: what identifies the items in the sweep cache (behaviour, seed, split sizes).
    """
    started = time.perf_counter()
    if not items.get("train"):
        raise ValueError("W2S: the training split is empty.")
    tokenizer = collator.tokenizer
    dims = model_dims(model)
    device = input_device(model)  # the encoders run where the backbone reads its inputs
    tags = dict(cache_tags or {})
    variants = [
        k.removeprefix("test/") for k in items if k.startswith("test/") and k != "test/base"
    ]

    def sweep(name: str, vectors: Tensor, method: str, layers=None) -> Tensor:
        variant = name.removeprefix("test/") if name.startswith("test/") else "base"
        split = "test" if name.startswith("test/") else name
        res = cached_sweep(
            model,
            sweep_examples(items[name], tokenizer),
            vectors,
            list(options.multipliers),
            backbone,
            {**tags, "variant": variant, "split": split, "method": method},
            layers=layers,
            cache_dir=options.sweep_cache_dir,
            chunk_size=options.sweep_chunk_size,
        )
        return res.steerability  # [N, L]

    steer: dict[str, Tensor] = {}
    info: dict[str, Any] = {}
    vectors: Tensor | None = None
    l2s: L2SSteering | None = None
    if options.steering == "caa":
        loader = DataLoader(list(items["train"]), batch_size=16, collate_fn=collator)
        vectors = caa_vectors(model, loader)  # [L, d]
        for name in ("train", "val", "test/base"):
            steer[name] = sweep(name, vectors, "caa")
        fixed = int(steer["train"].mean(0).argmax())
        top1 = label_space(steer["train"].argmax(1))
        ood_layers = None if options.ood_layers == "all" else sorted({*top1, fixed})
        for v in variants:
            steer[f"test/{v}"] = sweep(f"test/{v}", vectors, "caa", ood_layers)
    else:
        context_layers = list(options.l2s_context_layers or range(0, dims.num_layers, 3))
        acts = {
            s: _activations(model, items[s], collator, context_layers)
            for s in ("train", "val", "test/base")
        }
        steer["train"] = sweep("train", acts["train"][0], "l2s-oracle")
        fixed = int(steer["train"].mean(0).argmax())
        l2s = train_l2s(
            acts["train"][1],
            acts["train"][0],
            acts["val"][1],
            acts["val"][0],
            context_layers,
            fixed,
            steps=options.l2s_steps,
            seed=options.seed,
        )
        c = context_layers.index(l2s.context_layer)
        info["l2s_context_layer"] = l2s.context_layer
        info["l2s_context_mse"] = l2s.context_mse
        for s in ("val", "test/base"):
            steer[s] = sweep(s, l2s.predict(acts[s][1][:, c]), "l2s")
        top1 = label_space(steer["train"].argmax(1))
        ood_layers = None if options.ood_layers == "all" else sorted({*top1, fixed})
        for v in variants:
            _, ctx = _activations(model, items[f"test/{v}"], collator, [l2s.context_layer])
            steer[f"test/{v}"] = sweep(f"test/{v}", l2s.predict(ctx[:, 0]), "l2s", ood_layers)
    labels = frequency_smoothed_labels(steer["train"], options.top_k)
    space = label_space(labels)
    tables: dict[str, dict[str, Tensor]] = {}
    for name, st in steer.items():
        texts = [ex.prompt for ex in items[name]]
        if options.encoder != "lm_internal":
            texts = [prompt_text(p, tokenizer) for p in texts]
        emb = _encode(texts, options, backbone, device)
        if name == "train":
            lab = encode_labels(labels, space)
        else:
            best = torch.where(st.isnan(), -torch.inf, st).argmax(1)
            lab = encode_labels(best, space)
        tables[name] = {"embedding": emb.float(), "label": lab, "steerability": st.float()}
    counts = torch.bincount(labels, minlength=dims.num_layers)
    summary = dict(
        behavior=tags.get("behavior"),
        steering=options.steering,
        fixed_layer=fixed,
        label_layers=space,
        top1_layers=top1,
        label_counts={int(layer): int(counts[layer]) for layer in space},
        num_examples={k: int(v["embedding"].shape[0]) for k, v in tables.items()},
        train_steerability_per_layer=steer["train"].mean(0).tolist(),
        setup_seconds=round(time.perf_counter() - started, 1),
        **info,
    )
    rank_zero_info(
        f"W2S {summary['behavior']} ({options.steering}): fixed layer {fixed}, "
        f"{len(space)} label layers {space} (top_k={options.top_k}), sizes "
        f"{summary['num_examples']}"
    )
    return W2SData(
        tables=tables,
        summary=summary,
        dims=dims,
        vectors=vectors,
        l2s=l2s,
        test_names=["base", *variants],
    )
