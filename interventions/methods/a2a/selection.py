"""A2A's algorithm: layer scores of an attribution graph, the steering grid, the top-k choice and
the cost accounting (see :mod:`interventions.methods.a2a` for the pipeline)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from interventions.core.dispatch import input_device
from interventions.core.distributed import all_reduce_sum, shard_loader
from interventions.core.hooks import (
    attach,
    keep_last_column,
    last_token_index,
    position_ids,
    record,
)
from interventions.core.kv_cache import output_cache, with_cache
from interventions.core.sites import model_dims
from interventions.methods.caa.vectors import steering_edit
from interventions.methods.eap.graph import AttributionGraph

A2A_METHODS: tuple[str, ...] = ("in", "out", "total", "ratio")
"""A2A's four layer scores (Algorithm 1)."""

BASELINES: tuple[str, ...] = ("actdiff", "random", "mid")
"""The paper's baselines (besides the grid search)."""


# ------------------------------------------------------------------------------- layer scores


def layer_scores(graph: AttributionGraph, eps: float = 1e-6) -> dict[str, Tensor]:
    """``{"in", "out", "total", "ratio"} -> [num_layers]`` A2A layer scores of ``graph``.

    Node scores follow Algorithm 1: ``|Attr(u -> v)|`` is accumulated example by example (the
    mean over examples of ``|score|``, i.e. the sum divided by the number of examples, which
    does not change a ranking), then ``Out(u)`` / ``In(v)`` sum it over the edges leaving /
    entering a node (an input shared by several nodes splits its edges equally among them, so a
    layer's ``In`` does not depend on the input granularity).  A layer's nodes are its attention
    heads and its MLP; ``Ratio = Out / (In + eps)``.
    """
    node_in = graph.in_scores(per_example=True)  # [num_nodes]
    node_out = graph.out_scores(per_example=True)
    layers_of = torch.tensor(graph.node_layers)
    num_layers = int(layers_of.max())  # the logits sit at num_layers
    keep = (layers_of >= 0) & (layers_of < num_layers)
    index = layers_of[keep]
    layer_in = torch.zeros(num_layers, dtype=torch.float64).index_add_(
        0, index, node_in[keep].double().cpu()
    )
    layer_out = torch.zeros(num_layers, dtype=torch.float64).index_add_(
        0, index, node_out[keep].double().cpu()
    )
    return {
        "in": layer_in,
        "out": layer_out,
        "total": layer_in + layer_out,
        "ratio": layer_out / (layer_in + eps),
    }


# ------------------------------------------------------------------------------ activations


@torch.no_grad()
def activation_difference(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """``[batch, L, d]`` ``resid_post`` at the last real token, clean minus corrupted."""
    device = input_device(model)
    num_layers = model_dims(model).num_layers
    points = [(layer, "resid_post") for layer in range(num_layers)]
    out = []
    for ids_key, mask_key in (
        ("input_ids", "attention_mask"),
        ("corrupted_input_ids", "corrupted_attention_mask"),
    ):
        ids, mask = batch[ids_key].to(device), batch[mask_key].to(device)
        with record(model, points) as acts:
            model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                logits_to_keep=keep_last_column(ids),  # the logits are not needed
            )
        rows = torch.arange(ids.shape[0], device=device)
        last = last_token_index(mask)
        out.append(torch.stack([acts[p][rows, last] for p in points], 1).float())
    return out[0] - out[1]


def require_pairs(batch: dict[str, Any]) -> None:
    if "corrupted_input_ids" not in batch:
        raise ValueError(
            "A2A needs contrastive pairs: the batches have no corrupted prompts. Use a "
            "datamodule that makes them (MWEDataModule with contrast: system, IOIDataModule, "
            "CCCDataModule)."
        )


# --------------------------------------------------------------------------------- steering


@dataclass
class GridResult:
    """What :func:`steering_grid` measured.

    Attributes:
        accuracy: ``[layers, multipliers]`` fraction of prompts whose steered model prefers the
            target answer (``logit(correct) > logit(wrong)`` at the last token).
        margin: ``[layers, multipliers]`` mean steered ``logit(correct) - logit(wrong)``.
        vanilla_accuracy: the unsteered accuracy.
        vanilla_margin: the unsteered mean margin.
        num_prompts: number of prompts evaluated.
        layers: the steered layers (rows).
        multipliers: the multipliers (columns).
    """

    accuracy: Tensor
    margin: Tensor
    vanilla_accuracy: float
    vanilla_margin: float
    num_prompts: int
    layers: list[int]
    multipliers: list[float]


@torch.no_grad()
def steering_grid(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    vectors: Tensor,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
    prompts: Literal["corrupted", "clean"] = "corrupted",
    progress: bool = False,
) -> GridResult:
    """Behaviour accuracy (and mean margin) when steering each layer with each multiplier.

    For every prompt, layer ``l`` and multiplier ``lambda``: add ``lambda * vectors[l]`` to
    ``resid_post`` of layer ``l`` at the last prompt token and compare ``logit(correct)`` with
    ``logit(wrong)`` there.  Each batch's prompts without their last token run once; the last
    token then runs once per setting on that key/value cache (cropped back after each setting),
    so a setting costs one token per prompt instead of the whole prompt.

    Args:
        model: the frozen causal LM.
        batches: contrastive batches, left padded.
        vectors: ``[L, d]`` steering vectors.
        multipliers: the lambdas.
        layers: layers to steer (default: all).
        prompts: steer the ``corrupted`` prompts (default) or the ``clean`` ones.
        progress: show a tqdm bar over batches.

    Under a process group each rank steers its share of the batches and the counts are added
    up (collective: call it on every rank with the same batches).
    """
    num_layers = model_dims(model).num_layers
    layers = list(range(num_layers)) if layers is None else list(layers)
    param = next(model.parameters())
    device = input_device(model)
    edit = steering_edit(model, vectors.to(device))
    edit.requires_grad_(False)
    edit = edit.to(device=device, dtype=param.dtype)
    hits = torch.zeros(len(layers), len(multipliers), dtype=torch.long)
    margin_sum = torch.zeros(len(layers), len(multipliers), dtype=torch.float64)
    vanilla_hits, vanilla_margin, total = 0, 0.0, 0
    key = "input_ids" if prompts == "clean" else "corrupted_input_ids"
    mask_key = "attention_mask" if prompts == "clean" else "corrupted_attention_mask"
    for batch in tqdm(shard_loader(batches), desc="steering grid", disable=not progress):
        if key not in batch:
            require_pairs(batch)
        ids, mask = batch[key].to(device), batch[mask_key].to(device)
        if not bool(mask[:, -1].bool().all()):
            raise ValueError(
                "steering_grid needs left-padded prompts (every row's last column a real "
                "token); build the datamodule with padding_side: left."
            )
        if not bool((mask.sum(1) >= 2).all()):
            raise ValueError("steering_grid: every prompt needs at least two tokens.")
        correct, wrong = batch["correct_id"].to(device), batch["wrong_id"].to(device)
        vanilla, steered = _batch_grid(model, edit, ids, mask, correct, wrong, layers, multipliers)
        vanilla_hits += int((vanilla > 0).sum())
        vanilla_margin += float(vanilla.double().sum())
        hits += (steered > 0).sum(-1)
        margin_sum += steered.double().sum(-1)
        total += ids.shape[0]
    # several processes: each ran its share of the batches; add up the counts and sums
    counts = torch.tensor([vanilla_hits, total], dtype=torch.long)
    vanilla_sum = torch.tensor([vanilla_margin], dtype=torch.float64)
    all_reduce_sum(hits, margin_sum, counts, vanilla_sum)
    vanilla_hits, total = int(counts[0]), int(counts[1])
    vanilla_margin = float(vanilla_sum[0])
    if total == 0:
        raise ValueError("steering_grid: the evaluation split is empty.")
    return GridResult(
        accuracy=hits.double() / total,
        margin=margin_sum / total,
        vanilla_accuracy=vanilla_hits / total,
        vanilla_margin=vanilla_margin / total,
        num_prompts=total,
        layers=layers,
        multipliers=[float(m) for m in multipliers],
    )


def _batch_grid(
    model: nn.Module,
    edit: nn.Module,
    ids: Tensor,
    mask: Tensor,
    correct: Tensor,
    wrong: Tensor,
    layers: Sequence[int],
    multipliers: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """One left-padded batch of :func:`steering_grid`: the margins ``logit(correct) -
    logit(wrong)`` unsteered ``[B]`` and steered ``[layers, multipliers, B]``."""
    num_layers = model_dims(model).num_layers
    rows = torch.arange(ids.shape[0], device=ids.device)
    out = model(
        input_ids=ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=position_ids(mask[:, :-1]),
        use_cache=True,
        logits_to_keep=keep_last_column(ids[:, :-1]),
    )
    cache = output_cache(out)
    step = dict(
        input_ids=ids[:, -1:],
        attention_mask=mask,
        position_ids=(mask.sum(1) - 1)[:, None],  # the last token's position, [B, 1]
        **with_cache(model, cache),
    )

    def margin(beta: Tensor | None) -> Tensor:
        if beta is None:
            logits = model(**step).logits[:, -1]
        else:
            with attach(model, edit, beta):
                logits = model(**step).logits[:, -1]
        cache.crop(-1)  # back to the shared prefix for the next setting
        return (logits[rows, correct] - logits[rows, wrong]).float().cpu()

    steered = torch.zeros(len(layers), len(multipliers), ids.shape[0])
    dtype = next(model.parameters()).dtype
    for i, layer in enumerate(layers):
        for j, lam in enumerate(multipliers):
            beta = torch.zeros(ids.shape[0], num_layers, device=ids.device, dtype=dtype)
            beta[:, layer] = lam
            steered[i, j] = margin(beta)
    return margin(None), steered


def top_k_choice(grid: GridResult, candidates: Iterable[int]) -> tuple[int, int]:
    """``(layer, multiplier index)`` with the best validation accuracy among the candidate
    layers; ties go to the larger mean margin, then to the earlier candidate and multiplier."""
    row = {layer: i for i, layer in enumerate(grid.layers)}
    best: tuple[float, float, int, int] | None = None
    for layer in candidates:
        if layer not in row:
            raise ValueError(f"layer {layer} was not in the grid (layers {grid.layers}).")
        for j in range(len(grid.multipliers)):
            key = (float(grid.accuracy[row[layer], j]), float(grid.margin[row[layer], j]))
            if best is None or key > best[:2]:
                best = (*key, layer, j)
    if best is None:
        raise ValueError("top_k_choice needs at least one candidate layer.")
    return best[2], best[3]


def cost_forward_equivalents(
    num_attribution: int,
    steps: int,
    num_eval: int,
    num_layers: int,
    num_multipliers: int,
    k: int,
) -> dict[str, float]:
    """The paper's cost accounting (Section 4.1) in forward-equivalents.

    Returns ``grid = L M |E|``, ``a2a = 3 m |D_attr| + k M |E|`` and ``saving = 1 - a2a / grid``.
    """
    grid = num_layers * num_multipliers * num_eval
    a2a = 3 * steps * num_attribution + k * num_multipliers * num_eval
    return {"grid": float(grid), "a2a": float(a2a), "saving": 1.0 - a2a / grid}


def method_costs(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Cost of choosing the steering layer with each method, from a run's ``metrics.json``.

    Forward-equivalents (the paper's accounting, ``|D|`` attribution pairs, ``|E|`` validation
    prompts, ``M`` multipliers, ``k`` steered layers): grid ``L M |E|``; A2A ``3 m |D| + k M |E|``;
    ActDiff ``2 |D| + k M |E|`` (one clean and one corrupted forward per pair); Random and
    Mid-layer ``k M |E|``.  Seconds: the measured attribution / activation-difference time plus
    ``k / L`` of the measured validation grid.
    """
    c = metrics["cost"]
    n_attr, n_val = c["num_attribution"], c["num_val"]
    num_layers, k = metrics["num_layers"], metrics["top_k"]
    mults, steps = len(metrics["multipliers"]), metrics["steps"]
    steer_fe = k * mults * n_val
    grid_s = c["seconds"]["grid_val"]
    steer_s = grid_s * k / num_layers
    out = {
        "grid": (num_layers * mults * n_val, grid_s),
        "a2a": (3 * steps * n_attr + steer_fe, c["seconds"]["attribution"] + steer_s),
        "actdiff": (2 * n_attr + steer_fe, c["seconds"]["actdiff"] + steer_s),
        "random": (steer_fe, steer_s),
        "mid": (steer_fe, steer_s),
    }
    return {
        name: {"forward_equivalents": float(fe), "seconds": float(sec)}
        for name, (fe, sec) in out.items()
    }
