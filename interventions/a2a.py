"""A2A (Attribution-to-Action): rank layers for steering from an EAP-IG attribution graph.

The pipeline of the A2A paper (Algorithm 1 and Section 3), on contrastive pairs
``(x+, x-, y+, y-)`` of equal token length (a datamodule whose batches carry
``corrupted_input_ids``):

1. **Attribution graph** (:func:`interventions.eap.eap_ig`, ``steps = m``) on the training split;
   the per-example graphs are merged, and edge weights are accumulated as ``|Attr|`` example by
   example (Algorithm 1, line 3).
2. **Layer scores** (:func:`layer_scores`, Eq. 2): node ``In(v)`` / ``Out(v)`` = sum of ``|edge|``
   into / out of ``v``; per layer (its attention heads and its MLP) ``In``, ``Out``,
   ``Total = In + Out`` and ``Ratio = Out / (In + eps)``.  The input embedding and the logits
   belong to no layer.  Baselines: ``actdiff`` = the norm of the per-layer mean difference of
   ``resid_post`` at the last token between clean and corrupted prompts; ``random`` = a random
   permutation; ``mid`` = closeness to the middle layers (the paper's 18-20 of 32, i.e. centred
   at 60% depth).
3. **Steering** (Eq. 3): ``h_l <- h_l + lambda * v_l`` with the CAA vector ``v_l`` (mean answer-token
   difference of ``resid_post``, :mod:`interventions.caa`) at the last prompt token of one layer.
   :func:`steering_grid` measures the **behaviour accuracy** -- the fraction of prompts on which
   the steered model prefers the target answer ``y+`` over ``y-`` -- for every layer and
   multiplier.  Steering is evaluated on the *corrupted* prompts: the steering vector has to undo
   the contrast (for the persona tasks: a prompt whose system message asks for the opposite
   trait).  Because only the last prompt token is edited, the rest of each prompt runs once and
   its key/value cache is shared by every (layer, multiplier) setting.
4. **Ground truth and metrics**: the grid search on the test split gives each layer a relevance
   (:func:`layer_relevance`: accuracy points gained over the unsteered model, as an integer);
   :func:`ndcg` (torchmetrics' retrieval nDCG) compares each method's ranking with it at 1, 5
   and 10.  For the accuracy table, a method steers its top-k layers one at a time
   (:func:`top_k_choice`), keeps the (layer, multiplier) with the best validation accuracy and
   reports its test accuracy; the grid search does the same over all layers.
5. **Cost** (:func:`cost_forward_equivalents`): the paper's accounting -- an attribution sample
   costs ``3 m`` forward-equivalents (m forwards + m backwards at about two forwards each), one
   steered evaluation prompt one forward -- so A2A costs ``3 m |D_attr| + k M |E|`` and the grid
   ``L M |E|`` for ``M`` multipliers and ``|E|`` selection prompts.  Seconds are measured too.

:class:`A2AModule` runs it all under the Lightning CLI (``configs/a2a/*.yaml``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.functional.retrieval import retrieval_normalized_dcg
from tqdm.auto import tqdm

from interventions.backbone import DEFAULT_BACKBONE, FrozenBackbone, load_backbone
from interventions.caa import DiffAccumulator, steering_edit
from interventions.eap import AttributionGraph, eap_ig
from interventions.export import save_intervention
from interventions.hooks import attach, last_token_index, position_ids, record
from interventions.kv_cache import output_cache, with_cache
from interventions.report import publish_to_wandb
from interventions.sites import model_dims

__all__ = [
    "A2A_METHODS",
    "BASELINES",
    "A2AModule",
    "GridResult",
    "activation_difference",
    "cost_forward_equivalents",
    "layer_relevance",
    "layer_scores",
    "mid_layer_scores",
    "method_costs",
    "ndcg",
    "random_scores",
    "rank_layers",
    "steering_grid",
    "top_k_choice",
    "top_k_layers",
]

A2A_METHODS: tuple[str, ...] = ("in", "out", "total", "ratio")
"""A2A's four layer scores (Algorithm 1)."""

BASELINES: tuple[str, ...] = ("actdiff", "random", "mid")
"""The paper's baselines (besides the grid search)."""

NDCG_CUTOFFS: tuple[int, ...] = (1, 5, 10)

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


def mid_layer_scores(num_layers: int, center: float = 0.6) -> Tensor:
    """``[num_layers]`` higher for layers closer to ``center * (num_layers - 1)`` (the paper's
    mid-layer baseline steers layers 18-20 of 32, i.e. about 60% depth)."""
    mid = center * (num_layers - 1)
    return -(torch.arange(num_layers, dtype=torch.float64) - mid).abs()


def random_scores(num_layers: int, generator: torch.Generator) -> Tensor:
    """``[num_layers]`` a random permutation as scores (the random baseline)."""
    return torch.randperm(num_layers, generator=generator).double()


def rank_layers(scores: Tensor) -> list[int]:
    """Layers sorted by score, highest first (ties: the lower layer first)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order


def top_k_layers(scores: Tensor, k: int) -> list[int]:
    """The ``k`` highest-scoring layers (see :func:`rank_layers`)."""
    num_layers = len(scores)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_layers:
        raise ValueError(
            f"top_k must be an integer between 1 and the number of layers ({num_layers}), "
            f"got {k!r}; lower --model.top_k."
        )
    return rank_layers(scores)[:k]


def layer_relevance(best: Tensor, vanilla: float, scale: float = 100.0) -> Tensor:
    """``[L]`` integer relevance of each layer for nDCG: how much steering there improves on the
    unsteered model, ``round(scale * max(0, best[l] - vanilla))``.

    With the accuracy (``scale=100``) the relevance is the accuracy points gained; with the mean
    margin (``scale=100``) it is the gain in centi-logits.

    Args:
        best: ``[L]`` or ``[L, M]`` the grid-search value of each layer (best over multipliers).
        vanilla: the unsteered value.
        scale: the unit of one relevance step.
    """
    best = best.max(-1).values if best.dim() == 2 else best
    return torch.round(scale * (best.double() - vanilla)).clamp(min=0).long()


def ndcg(scores: Tensor, relevance: Tensor, k: int) -> float:
    """nDCG@k of the ranking by ``scores`` against integer ``relevance`` (linear gains, log2
    discounts; torchmetrics' ``retrieval_normalized_dcg``).  0 when no layer is relevant."""
    if scores.shape != relevance.shape:
        raise ValueError(
            f"scores {list(scores.shape)} and relevance {list(relevance.shape)} must both be "
            "[num_layers]."
        )
    # torchmetrics casts the scores to float32: pass their float64 dense ranks instead, so that
    # scores closer than float32 precision keep their order (exact ties stay ties)
    dense = torch.unique(scores.double(), return_inverse=True)[1]
    return float(retrieval_normalized_dcg(dense.double(), relevance.long(), top_k=k))


# ------------------------------------------------------------------------------ activations


@torch.no_grad()
def activation_difference(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """``[batch, L, d]`` ``resid_post`` at the last real token, clean minus corrupted."""
    device = next(model.parameters()).device
    num_layers = model_dims(model).num_layers
    points = [(layer, "resid_post") for layer in range(num_layers)]
    out = []
    for ids_key, mask_key in (
        ("input_ids", "attention_mask"),
        ("corrupted_input_ids", "corrupted_attention_mask"),
    ):
        ids, mask = batch[ids_key].to(device), batch[mask_key].to(device)
        with record(model, points) as acts:
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
        rows = torch.arange(ids.shape[0], device=device)
        last = last_token_index(mask)
        out.append(torch.stack([acts[p][rows, last] for p in points], 1).float())
    return out[0] - out[1]


def _require_pairs(batch: dict[str, Any]) -> None:
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
    """
    num_layers = model_dims(model).num_layers
    layers = list(range(num_layers)) if layers is None else list(layers)
    param = next(model.parameters())
    device = param.device
    edit = steering_edit(model, vectors.to(device))
    edit.requires_grad_(False)
    edit = edit.to(device=device, dtype=param.dtype)
    hits = torch.zeros(len(layers), len(multipliers), dtype=torch.long)
    margin_sum = torch.zeros(len(layers), len(multipliers), dtype=torch.float64)
    vanilla_hits, vanilla_margin, total = 0, 0.0, 0
    key = "input_ids" if prompts == "clean" else "corrupted_input_ids"
    mask_key = "attention_mask" if prompts == "clean" else "corrupted_attention_mask"
    for batch in tqdm(batches, desc="steering grid", disable=not progress):
        if key not in batch:
            _require_pairs(batch)
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


# ------------------------------------------------------------------------------ the module


class A2AModule(FrozenBackbone, LightningModule):
    """A2A layer selection vs the grid search, as a LightningModule (``configs/a2a/*.yaml``).

    ``fit`` is one pass over the training split without an optimiser: per batch, the EAP-IG
    graph, the clean-minus-corrupted ``resid_post`` difference at the last token (ActDiff and
    the ``mean_diff`` vectors) and the CAA vectors.  At the end of ``fit``: the grid search on
    the validation and test splits, the rankings, nDCG, the top-k steering table, the cost,
    ``metrics.json``, ``graph.safetensors``, plots, and the steering vectors exported as an
    intervention (with the grid's best layer and multiplier).

    Args:
        backbone: model name or path (linked to the data module's ``backbone``).
        steps: number m of EAP-IG integration steps (paper: 5).
        per_head_inputs: score each head's q/k/v input (EAP-IG's graph) instead of the
            block-level attention input.
        vector: the steering vector: ``caa`` (mean answer-token difference of ``resid_post``
            between the target and the foil answer appended to the prompts, over the clean and
            the corrupted prompt of each pair; Rimsky et al.) or ``mean_diff`` (mean
            ``resid_post`` difference at the last prompt token, clean minus corrupted).
        multipliers: the steering multipliers lambda of the grid and of the top-k search.
        steer_toward: the answer the steered model should prefer: each batch's ``correct``
            answer, or its ``wrong`` one (CCC: the in-context capital, the one the clean prompt
            elicits).
        top_k: number of top-ranked layers each method steers.
        num_random: random permutations averaged for the random baseline (paper: 10).
        mid_center: the mid-layer baseline's centre as a fraction of the depth.
        eps: epsilon of the Ratio score.
        dtype: backbone dtype.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        steps: int = 5,
        per_head_inputs: bool = False,
        vector: Literal["caa", "mean_diff"] = "caa",
        multipliers: tuple[float, ...] = (2.0, 4.0, 8.0),
        steer_toward: Literal["correct", "wrong"] = "correct",
        top_k: int = 3,
        num_random: int = 10,
        mid_center: float = 0.6,
        eps: float = 1e-6,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if vector not in ("caa", "mean_diff"):
            raise ValueError(f"vector must be 'caa' or 'mean_diff', got {vector!r}")
        if not multipliers:
            raise ValueError("multipliers must hold at least one steering multiplier")
        if steer_toward not in ("correct", "wrong"):
            raise ValueError(f"steer_toward must be 'correct' or 'wrong', got {steer_toward!r}")
        if num_random < 1:
            raise ValueError(f"num_random must be >= 1, got {num_random}")
        self.save_hyperparameters()
        model, _ = load_backbone(backbone, dtype=dtype)
        self.hold_backbone(model)
        num_layers = model_dims(model).num_layers
        top_k_layers(torch.zeros(num_layers), top_k)  # the k > L error, before any work
        self.automatic_optimization = False
        self.results: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._graphs: list[AttributionGraph] = []
        self._caa = DiffAccumulator()
        self._diff_sum: Tensor | None = None
        self._count = 0
        self._seconds = {"attribution": 0.0, "actdiff": 0.0, "caa": 0.0}

    def configure_optimizers(self) -> None:
        return None  # nothing to optimise

    def on_train_epoch_start(self) -> None:
        self._reset()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _require_pairs(batch)
        batch = next(iter(self._targeted([batch])))  # L and CAA: target minus foil
        model = self.model
        t0 = time.perf_counter()
        graph = eap_ig(
            model,
            batch["input_ids"],
            batch["corrupted_input_ids"],
            batch["correct_id"],
            batch["wrong_id"],
            clean_mask=batch["attention_mask"],
            corrupted_mask=batch["corrupted_attention_mask"],
            steps=self.hparams.steps,
            per_head_inputs=self.hparams.per_head_inputs,
        )
        t1 = time.perf_counter()
        self._graphs.append(graph.to("cpu"))
        diff = activation_difference(model, batch).sum(0).double().cpu()  # [L, d]
        self._diff_sum = diff if self._diff_sum is None else self._diff_sum + diff
        t2 = time.perf_counter()
        if self.hparams.vector == "caa":
            corrupted = {
                **batch,
                "input_ids": batch["corrupted_input_ids"],
                "attention_mask": batch["corrupted_attention_mask"],
            }
            with torch.no_grad():
                self._caa.update(model, batch)
                self._caa.update(model, corrupted)
        t3 = time.perf_counter()
        self._count += batch["input_ids"].shape[0]
        self._seconds["attribution"] += t1 - t0
        self._seconds["actdiff"] += t2 - t1
        self._seconds["caa"] += t3 - t2
        self.log("train/logit_diff_clean", graph.metric_clean.mean(), prog_bar=True)

    # ------------------------------------------------------------------ end of fit
    def on_fit_end(self) -> None:
        dm = self.trainer.datamodule
        if dm is None or not self._graphs:
            return
        run = Path(self.trainer.default_root_dir)
        self.results = self.report(dm, run)

    def steering_vectors(self) -> Tensor:
        """``[L, d]`` the steering vectors chosen by ``vector`` (after ``fit``)."""
        if self._diff_sum is None:
            raise RuntimeError("No training batch was seen: run fit first.")
        if self.hparams.vector == "caa":
            return self._caa.mean()
        return (self._diff_sum / self._count).float()

    def _targeted(self, batches: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """The batches with ``correct_id`` / ``wrong_id`` swapped when ``steer_toward="wrong"``, so
        that the attribution metric, the CAA vector and the grid all read target minus foil."""
        for batch in batches:
            if self.hparams.steer_toward == "wrong":
                batch = {**batch, "correct_id": batch["wrong_id"], "wrong_id": batch["correct_id"]}
            yield batch

    def method_scores(self, graph: AttributionGraph) -> dict[str, Tensor]:
        """Every method's ``[L]`` layer scores but the random baseline and the grid."""
        assert self._diff_sum is not None
        actdiff = (self._diff_sum / self._count).norm(dim=-1)  # [L]
        scores = {f"a2a_{k}": v for k, v in layer_scores(graph, self.hparams.eps).items()}
        scores["actdiff"] = actdiff.double()
        scores["mid"] = mid_layer_scores(len(actdiff), self.hparams.mid_center)
        return scores

    def report(self, dm: Any, run: Path) -> dict[str, Any]:
        """Grid search, rankings, nDCG, top-k table, cost, files and plots (see the class doc)."""
        hp = self.hparams
        model = self.model
        graph = AttributionGraph.merge(self._graphs)
        vectors = self.steering_vectors()
        num_layers = vectors.shape[0]
        mults = [float(m) for m in hp.multipliers]

        t0 = time.perf_counter()
        val = steering_grid(
            model, self._targeted(dm.val_dataloader()), vectors, mults, progress=True
        )
        t1 = time.perf_counter()
        test = steering_grid(
            model, self._targeted(dm.test_dataloader()), vectors, mults, progress=True
        )
        truth = {
            "accuracy": layer_relevance(test.accuracy, test.vanilla_accuracy),
            "margin": layer_relevance(test.margin, test.vanilla_margin),
        }
        scores = self.method_scores(graph)
        # the grid search on the validation split, as a ranking (accuracy, then margin)
        scores["grid_val"] = val.accuracy.max(1).values + 1e-6 * torch.tanh(
            val.margin.max(1).values
        )
        generator = torch.Generator().manual_seed(int(getattr(dm, "seed", 0)))
        random_runs = [random_scores(num_layers, generator) for _ in range(hp.num_random)]

        ndcg_table: dict[str, dict[str, dict[str, float]]] = {"accuracy": {}, "margin": {}}
        top_k: dict[str, dict[str, Any]] = {}
        for name, s in {**scores, "random": None}.items():
            runs = random_runs if s is None else [s]
            for kind, relevance in truth.items():
                ndcg_table[kind][name] = {
                    f"ndcg@{k}": sum(ndcg(r, relevance, min(k, num_layers)) for r in runs)
                    / len(runs)
                    for k in NDCG_CUTOFFS
                }
            picks = [top_k_choice(val, top_k_layers(r, hp.top_k)) for r in runs]
            top_k[name] = {
                "test_accuracy": sum(float(test.accuracy[ly, j]) for ly, j in picks) / len(picks),
                "test_margin": sum(float(test.margin[ly, j]) for ly, j in picks) / len(picks),
            }
            if s is not None:
                top_k[name].update(
                    layers=top_k_layers(s, hp.top_k),
                    chosen_layer=picks[0][0],
                    chosen_multiplier=mults[picks[0][1]],
                )
        grid_layer, grid_j = top_k_choice(val, range(num_layers))
        top_k["grid"] = {
            "chosen_layer": grid_layer,
            "chosen_multiplier": mults[grid_j],
            "test_accuracy": float(test.accuracy[grid_layer, grid_j]),
            "test_margin": float(test.margin[grid_layer, grid_j]),
        }
        top_k["vanilla"] = {
            "test_accuracy": test.vanilla_accuracy,
            "test_margin": test.vanilla_margin,
        }

        grid_seconds = t1 - t0
        per_layer_seconds = grid_seconds / num_layers
        fe = cost_forward_equivalents(
            self._count, hp.steps, val.num_prompts, num_layers, len(mults), hp.top_k
        )
        cost = {
            "forward_equivalents": fe,
            "seconds": {
                "attribution": self._seconds["attribution"],
                "actdiff": self._seconds["actdiff"],
                "caa_vectors": self._seconds["caa"],
                "grid_val": grid_seconds,
                "a2a_total": self._seconds["attribution"] + hp.top_k * per_layer_seconds,
            },
            "num_attribution": self._count,
            "num_val": val.num_prompts,
            "num_test": test.num_prompts,
        }
        metrics: dict[str, Any] = {
            "task": getattr(dm, "behavior", type(dm).__name__),
            "num_layers": num_layers,
            "vector": hp.vector,
            "steer_toward": hp.steer_toward,
            "multipliers": mults,
            "top_k": hp.top_k,
            "steps": hp.steps,
            "per_head_inputs": hp.per_head_inputs,
            "attribution/metric_clean": float(graph.metric_clean.mean()),
            "attribution/metric_corrupted": float(graph.metric_corrupted.mean()),
            "val/vanilla_accuracy": val.vanilla_accuracy,
            "test/vanilla_accuracy": test.vanilla_accuracy,
            "test/vanilla_margin": test.vanilla_margin,
            "val/accuracy": val.accuracy.tolist(),
            "val/margin": val.margin.tolist(),
            "test/accuracy": test.accuracy.tolist(),
            "test/margin": test.margin.tolist(),
            "test/relevance": {k: v.tolist() for k, v in truth.items()},
            "layer_scores": {k: v.tolist() for k, v in scores.items()},
            "rankings": {k: rank_layers(v) for k, v in scores.items()},
            "ndcg": ndcg_table,
            "top_k_steering": top_k,
            "cost": cost,
        }
        cost["per_method"] = method_costs(metrics)
        run.mkdir(parents=True, exist_ok=True)
        graph.save(run / "graph.safetensors")
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
        save_intervention(
            steering_edit(model, vectors),
            run / "intervention",
            hp.backbone,
            extra={"vector": hp.vector, "best_layer": grid_layer, "best_multiplier": mults[grid_j]},
        )
        images = self._plots(metrics, graph, test, run)
        flat = {
            f"ndcg_{kind}/{name}@{k}": table[f"ndcg@{k}"]
            for kind, tables in ndcg_table.items()
            for name, table in tables.items()
            for k in NDCG_CUTOFFS
        }
        flat.update({f"top_k/{n}": float(v["test_accuracy"]) for n, v in top_k.items()})
        flat["cost/saving"] = fe["saving"]
        for logger in self.trainer.loggers:
            logger.log_metrics(flat)
        publish_to_wandb(self.trainer.loggers, images, run / "intervention", metrics=None)
        rank_zero_info(
            f"A2A {metrics['task']}: grid best layer {grid_layer} (x{mults[grid_j]}), test "
            f"accuracy {top_k['grid']['test_accuracy']:.3f} vs unsteered "
            f"{test.vanilla_accuracy:.3f}; nDCG@5 (accuracy truth) "
            + ", ".join(f"{n} {t['ndcg@5']:.2f}" for n, t in ndcg_table["accuracy"].items())
        )
        return metrics

    def _plots(
        self, metrics: dict[str, Any], graph: AttributionGraph, test: GridResult, run: Path
    ) -> list[Path]:
        import matplotlib.pyplot as plt

        from interventions import plots

        paths = [run / "plots" / "layer_scores.png", run / "plots" / "graph_edges.png"]
        figs = [
            plots.layer_scores_vs_grid(
                {k: torch.tensor(v) for k, v in metrics["layer_scores"].items()},
                test.accuracy,
                test.vanilla_accuracy,
                title=f"A2A layer scores vs grid search: {metrics['task']}",
                path=paths[0],
                multipliers=test.multipliers,
            ),
            plots.graph_edges(
                graph, top_n=40, title=f"Strongest edges: {metrics['task']}", path=paths[1]
            ),
        ]
        for fig in figs:
            plt.close(fig)
        return paths
