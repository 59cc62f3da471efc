"""A2A under the Lightning CLI (``configs/a2a/*.yaml``): :class:`A2AModule`.

``fit`` accumulates the attribution graphs, activation differences and CAA vectors over the
training split; :meth:`A2AModule.finish` runs the grid search, the rankings, nDCG, the top-k
table and the cost, and writes the run's files.  The algorithm is in :mod:`.selection`, the
ranking metrics in :mod:`interventions.evaluation.ranking`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from interventions.core.backbone import DEFAULT_BACKBONE
from interventions.core.dispatch import DeviceMap, MaxMemory
from interventions.core.distributed import all_reduce_count, all_reduce_sums, gather_objects
from interventions.core.sites import model_dims
from interventions.evaluation.ranking import (
    NDCG_CUTOFFS,
    layer_relevance,
    mid_layer_scores,
    ndcg,
    random_scores,
    rank_layers,
    top_k_layers,
)
from interventions.methods.a2a.selection import (
    activation_difference,
    cost_forward_equivalents,
    layer_scores,
    method_costs,
    require_pairs,
    steering_grid,
    top_k_choice,
)
from interventions.methods.caa.vectors import DiffAccumulator, steering_edit
from interventions.methods.eap.eap_ig import AttributionGraph, eap_ig
from interventions.reporting import plots
from interventions.reporting.artifacts import RunArtifacts
from interventions.reporting.computed import ComputedModule


class A2AModule(ComputedModule):
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
        device_map: Accelerate device map splitting the backbone over GPUs, ``cpu`` and ``disk``
            (``auto``, ``sequential`` or module -> device); ``None``: all on the trainer's device.
        max_memory: memory per device for ``device_map``, e.g. ``{0: 20GiB, cpu: 60GiB}``.
        offload_folder: folder for the backbone weights ``device_map`` puts on ``disk``.
        activation_checkpointing: recompute each backbone layer in the backward pass instead of
            keeping its activations (less memory for long prompts, about one more forward).
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
        device_map: DeviceMap | None = None,
        max_memory: MaxMemory | None = None,
        offload_folder: str | None = None,
        activation_checkpointing: bool = False,
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
        model, _ = self.load_and_hold()
        num_layers = model_dims(model).num_layers
        top_k_layers(torch.zeros(num_layers), top_k)  # the k > L error, before any work
        self.reset_statistics()

    def reset_statistics(self) -> None:
        self._graphs: list[tuple[int, AttributionGraph]] = []  # (batch index, graph)
        self._caa = DiffAccumulator()
        self._diff_sum: Tensor | None = None
        self._count = 0
        self._seconds = {"attribution": 0.0, "actdiff": 0.0, "caa": 0.0}

    def accumulate(self, batch: dict[str, Any], batch_idx: int) -> None:
        require_pairs(batch)
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
        self._graphs.append((batch_idx, graph.to("cpu")))
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
    def has_statistics(self) -> bool:
        return bool(self._graphs)

    def reduce_statistics(self) -> None:
        # every rank gets every rank's graphs, merged in batch order as in one process
        parts = gather_objects(self._graphs)
        self._graphs = sorted((g for part in parts for g in part), key=lambda item: item[0])
        diff = {} if self._diff_sum is None else {"diff": self._diff_sum}
        self._diff_sum = all_reduce_sums(diff).get("diff")
        self._count = all_reduce_count(self._count)
        if self.hparams.vector == "caa":
            self._caa.all_reduce()

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

    def finish(self, dm: Any, art: RunArtifacts) -> dict[str, Any]:
        """Grid search, rankings, nDCG, top-k table, cost, files and plots (see the class doc)."""
        hp = self.hparams
        model = self.model
        graph = AttributionGraph.merge([g for _, g in self._graphs])
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
        if art.writer:
            art.run.mkdir(parents=True, exist_ok=True)
            graph.save(art.path("graph.safetensors"))
        flat = {
            f"ndcg_{kind}/{name}@{k}": table[f"ndcg@{k}"]
            for kind, tables in ndcg_table.items()
            for name, table in tables.items()
            for k in NDCG_CUTOFFS
        }
        flat.update({f"top_k/{n}": float(v["test_accuracy"]) for n, v in top_k.items()})
        flat["cost/saving"] = fe["saving"]
        art.write_metrics(metrics, flat)
        art.export(
            steering_edit(model, vectors),
            hp.backbone,
            extra={"vector": hp.vector, "best_layer": grid_layer, "best_multiplier": mults[grid_j]},
        )
        art.plot(
            "layer_scores",
            plots.layer_scores_vs_grid(
                {k: torch.tensor(v) for k, v in metrics["layer_scores"].items()},
                test.accuracy,
                test.vanilla_accuracy,
                title=f"A2A layer scores vs grid search: {metrics['task']}",
                multipliers=test.multipliers,
            ),
        )
        art.plot(
            "graph_edges",
            plots.graph_edges(graph, top_n=40, title=f"Strongest edges: {metrics['task']}"),
        )
        art.publish()
        rank_zero_info(
            f"A2A {metrics['task']}: grid best layer {grid_layer} (x{mults[grid_j]}), test "
            f"accuracy {top_k['grid']['test_accuracy']:.3f} vs unsteered "
            f"{test.vanilla_accuracy:.3f}; nDCG@5 (accuracy truth) "
            + ", ".join(f"{n} {t['ndcg@5']:.2f}" for n, t in ndcg_table["accuracy"].items())
        )
        return metrics
