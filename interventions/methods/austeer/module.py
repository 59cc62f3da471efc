"""AUSteer as a LightningModule: :class:`AUSteerModule` (statistics in ``fit``, then the search
on validation, the export, the test accuracy and the plots, :meth:`AUSteerModule.finish`).

The algorithm (momentum statistics, AU selection, steering values) is in :mod:`.units`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from interventions.core.backbone import DEFAULT_BACKBONE, cache_root
from interventions.core.dispatch import DeviceMap, MaxMemory
from interventions.core.sites import Site, check_site, model_dims
from interventions.edits import PointEdit
from interventions.evaluation.multiple_choice import (
    MultipleChoiceAccuracy,
    evaluate_many,
    leaves_prefix_alone,
    predict_choices,
    prompt_prefix,
)
from interventions.methods.austeer.units import (
    STAT_SITES,
    ZERO_TOL,
    Method,
    MomentumStats,
    activation_difference_units,
    au_activations,
    austeer_gammas,
    build_edit,
    fixed_strength_gammas,
    fixed_vector,
    random_units,
    top_k_units,
)
from interventions.reporting import plots
from interventions.reporting.artifacts import RunArtifacts
from interventions.reporting.computed import ComputedModule


class AUSteerModule(ComputedModule):
    """AUSteer and its baselines/ablations as a LightningModule over a commonsense data module.

    ``fit`` reads the AU activations of every contrastive pair at the token its data module
    names (the answer token: ``pos_read_offset`` / ``neg_read_offset`` of the pair batches; the
    last token without them) and accumulates :class:`MomentumStats` (one epoch, no optimiser;
    a momentum within ``zero_tol`` of the activation scale counts as zero); at the end it
    searches the steering
    hyperparameters on the small validation set, builds the final edit, exports it to
    ``<run>/intervention``, evaluates vanilla and steered test accuracy and writes
    ``metrics.json`` and the plots.  ``validate`` / ``test`` log ``accuracy`` (steered, once an
    edit exists) and ``accuracy_vanilla``.

    Methods (``method``):

    * ``austeer`` — top-k AUs by discriminative score, ``x + gamma x`` with Eq. 3 strengths;
    * ``random`` — k random AUs (seeded), AUSteer strengths (localisation ablation);
    * ``actdiff`` — top-k AUs by ``|mean(x_pos - x_neg)|`` (SADI-style localisation ablation);
    * ``fixed_vector`` — AUSteer's AUs, ``x + alpha * mean difference`` (ITI-style ablation);
    * ``fixed_strength`` — AUSteer's AUs, one ``|gamma|`` for all (ablation);
    * ``caa`` — CAA on ``resid_post``: the mean difference of one layer added with a multiplier,
      layer and multiplier searched on validation (``site`` is then ``resid_post``; the vector is
      a dense :class:`~interventions.edits.AUShift` on that layer, the multiplier its beta).

    Args:
        backbone: model name or path (linked to the data module's ``backbone``).
        site: AU site, any of the sites table: ``attn_z`` (AUSteer-Head: the per-head attention
            outputs), ``mlp_out`` (AUSteer-FFN as its authors run it: the MLP output, the
            ``down_proj`` output, d_model units), ``mlp_act`` (the FFN variant on the
            ``down_proj`` input, d_mlp units), ``attn_out`` or ``resid_post``.
        method: see above.
        k: number of steered AUs; ``None`` searches ``k_grid``.
        alpha: global strength; ``None`` searches ``alpha_grid``.
        k_grid: k values of the search, 7 by default (the paper sweeps 1..100).
        alpha_grid: alpha values of the search, 7 by default (the paper sweeps 1..100).
        positions: steer ``all`` real tokens (the default, as the authors do: prompt and
            answer) or the prompt's ``last`` token and every answer token.
        normalize: multiple-choice score: ``mean`` (length-normalised) or ``sum`` log-likelihood.
        caa_layers: candidate layers of CAA (``None``: all).
        caa_multipliers: candidate multipliers of CAA.
        seed: seed of the random localisation.
        zero_tol: a momentum ``|x_pos - x_neg| <= zero_tol * scale`` counts as zero in the sign
            counts, ``scale`` the pair's mean ``|x|`` over the layer's units
            (:class:`MomentumStats`); it keeps float noise (left-padded batches vs one text at a
            time) out of the counts.  ``0``: exact signs.
        dtype: backbone dtype.
        device_map: Accelerate device map splitting the backbone over GPUs, ``cpu`` and ``disk``
            (``auto``, ``sequential`` or module -> device); ``None``: all on the trainer's device.
        max_memory: memory per device for ``device_map``, e.g. ``{0: 20GiB, cpu: 60GiB}``.
        offload_folder: folder for the backbone weights ``device_map`` puts on ``disk``.
        stats_cache: keep the momentum statistics on disk, keyed by all that decides them (the
            backbone, dtype, sites read, ``zero_tol``, the exact contrastive pairs, the data
            module's template and statistic token): a later run on the same pool (another
            method, k, alpha, positions or site) loads them and skips the pass over the pool.
        cache_dir: folder of that cache (default
            ``$XDG_CACHE_HOME/learned-interventions/austeer_stats``).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        site: Site = "attn_z",
        method: Method = "austeer",
        k: int | None = None,
        alpha: float | None = None,
        k_grid: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100),
        alpha_grid: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0),
        positions: Literal["all", "last"] = "all",
        normalize: Literal["sum", "mean"] = "mean",
        caa_layers: list[int] | None = None,
        caa_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0),
        seed: int = 0,
        zero_tol: float = ZERO_TOL,
        dtype: str = "float32",
        device_map: DeviceMap | None = None,
        max_memory: MaxMemory | None = None,
        offload_folder: str | None = None,
        stats_cache: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if method not in Method.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"method must be one of {list(Method.__args__)}, got {method!r}.")  # type: ignore[attr-defined]
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1 (or None to search k_grid), got {k}.")
        if not zero_tol >= 0:
            raise ValueError(f"zero_tol must be >= 0 (0: exact signs), got {zero_tol!r}.")
        if method == "caa":
            site = "resid_post"
        check_site(site)
        self.save_hyperparameters()
        model, _ = self.load_and_hold()  # outside the module tree: never in a checkpoint
        self.dims = model_dims(model)
        if k is not None:
            units = self.dims.num_layers * self.dims.width(site)
            if k > units:
                raise ValueError(
                    f"k={k} is larger than the number of atomic units of {site!r}: "
                    f"{self.dims.num_layers} layers x {self.dims.width(site)} = {units}."
                )
        self.stats = self.new_stats()
        self._stats_from_cache = False
        self.edit: PointEdit | None = None
        self.beta = 1.0
        self.choice: dict[str, Any] = {}
        self.search_table: list[dict[str, Any]] = []
        self.search_vanilla = float("nan")
        self.val_acc = MultipleChoiceAccuracy()
        self.val_acc_vanilla = MultipleChoiceAccuracy()
        self.test_acc = MultipleChoiceAccuracy()
        self.test_acc_vanilla = MultipleChoiceAccuracy()

    # ------------------------------------------------------------------ statistics
    @property
    def stat_sites(self) -> list[str]:
        """The sites whose statistics one pass collects: ``STAT_SITES`` (every site) and this
        run's site (reading them all costs one forward pass, and lets the cache serve every
        method and site)."""
        return list(dict.fromkeys([*STAT_SITES, self.hparams.site]))

    def new_stats(self) -> MomentumStats:
        """Empty statistics with this run's tolerance."""
        return MomentumStats(zero_tol=self.hparams.zero_tol)

    def stats_cache_path(self) -> Path | None:
        """The cache file of this run's statistics (``None`` when caching is off or there is no
        data module)."""
        dm = getattr(self.trainer, "datamodule", None)
        if not self.hparams.stats_cache or dm is None or not hasattr(dm, "contrastive_pairs"):
            return None
        pairs = [(pair.positive, pair.negative) for pair in dm.contrastive_pairs()]
        key = {
            "backbone": str(self.hparams.backbone),
            "dtype": self.hparams.dtype,
            "sites": self.stat_sites,
            "zero_tol": float(self.hparams.zero_tol),
            # where the statistic is read (the texts alone do not say) and how they were made
            "statistic_token": getattr(dm, "statistic_token", "last"),
            "template": getattr(dm, "template", None),
            "pairs": pairs,
        }
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        folder = self.hparams.cache_dir
        root = Path(folder) if folder else cache_root() / "austeer_stats"
        return root / f"{getattr(dm, 'task', 'pairs')}-{digest}.pt"

    def reset_statistics(self) -> None:
        self.stats = self.new_stats()
        self._stats_from_cache = False
        path = self.stats_cache_path()
        if path is not None and path.is_file():
            try:
                self.stats.load_state_dict(torch.load(path, weights_only=True))
            except (OSError, RuntimeError, KeyError, ValueError):
                rank_zero_warn(f"AUSteer statistics cache {path} is unreadable; recomputing it.")
                self.stats = self.new_stats()
            else:
                self._stats_from_cache = True
                rank_zero_info(f"Loaded momentum statistics of {self.stats.n} pairs from {path}.")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        return -1 if self._stats_from_cache else None  # -1 ends the epoch: nothing to compute

    def accumulate(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        sites = self.stat_sites
        pos, neg = (
            au_activations(
                self.model,
                batch[f"{key}_input_ids"],
                batch[f"{key}_attention_mask"],
                sites,
                read_offset=batch.get(f"{key}_read_offset"),  # None: the last token
            )
            for key in ("pos", "neg")
        )
        self.stats.update(pos, neg)

    def reduce_statistics(self) -> None:
        if not self._stats_from_cache:
            self.stats.all_reduce()

    def statistics_complete(self) -> None:
        path = self.stats_cache_path()
        if path is None or self._stats_from_cache or not self.stats.n:
            return
        if not self.trainer.is_global_zero:
            return  # the combined statistics are the same on every rank: one writer
        if self.trainer.num_training_batches != len(self.trainer.train_dataloader or []):
            return  # a partial pass (limit_train_batches): not the pool's statistics
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(self.stats.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: an interrupted run never leaves a partial file

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["momentum_stats"] = self.stats.state_dict() if self.stats.n else None
        checkpoint["austeer_choice"] = self.choice

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("momentum_stats") is not None:
            self.stats = self.new_stats()
            self.stats.load_state_dict(checkpoint["momentum_stats"])
        self.choice = checkpoint.get("austeer_choice") or {}
        if self.choice and self.stats.n:
            self.edit, self.beta = self.build(**self.choice)

    # ------------------------------------------------------------------ edits
    def build(self, **choice: Any) -> tuple[PointEdit, float]:
        """The edit and beta of one hyperparameter setting (``k``/``alpha`` or
        ``layer``/``multiplier`` for CAA)."""
        h = self.hparams
        stats = self.stats.select([h.site])  # the pass also collected other sites
        if h.method == "caa":
            layer, mult = int(choice["layer"]), float(choice["multiplier"])
            # the layer's mean difference as a dense AUShift (every dim of resid_post, any
            # position count), added with the multiplier as beta
            values = torch.zeros(self.dims.num_layers, self.dims.d_model)
            values[layer] = stats.mean_diff["resid_post"][layer].float()
            edit = build_edit(self.dims, {"resid_post": values}, "aushift", h.positions)
            return edit.to(self.device), mult
        k, alpha = int(choice["k"]), float(choice["alpha"])
        if h.method == "random":
            units = random_units(stats.shapes, k, seed=h.seed)
        elif h.method == "actdiff":
            units = activation_difference_units(stats, k)
        else:
            units = top_k_units(stats.scores, k)
        if h.method == "fixed_vector":
            values, kind = fixed_vector(stats, units, alpha), "aushift"
        elif h.method == "fixed_strength":
            values, kind = fixed_strength_gammas(stats, units, alpha), "auscale"
        else:
            values, kind = austeer_gammas(stats, units, alpha), "auscale"
        return build_edit(self.dims, values, kind, h.positions).to(self.device), 1.0

    def grid(self) -> list[dict[str, Any]]:
        """The settings the validation search tries."""
        h = self.hparams
        if h.method == "caa":
            layers = h.caa_layers if h.caa_layers is not None else range(self.dims.num_layers)
            return [
                {"layer": int(l_), "multiplier": float(m)}
                for l_ in layers
                for m in h.caa_multipliers
            ]
        units = self.dims.num_layers * self.dims.width(h.site)
        ks = [h.k] if h.k is not None else [k for k in h.k_grid if k <= units]
        alphas = [h.alpha] if h.alpha is not None else list(h.alpha_grid)
        return [{"k": int(k), "alpha": float(a)} for k in ks for a in alphas]

    def search(self, loader: Any) -> dict[str, Any]:
        """Try every setting of :meth:`grid` on ``loader``; keep the best (ties: the first, i.e.
        the smallest k and alpha).  The unedited accuracy is kept as ``search_vanilla``.

        All settings are scored in one pass over the loader (:func:`evaluate_many`): each batch
        is loaded once, and with ``positions="last"`` its prompt prefix runs once for all of
        them (with ``positions="all"`` an edit changes every prompt token, so each setting runs
        the whole prompt).
        """
        settings = self.grid()
        candidates = [None, *(self.build(**setting) for setting in settings)]
        vanilla, *accuracies = evaluate_many(
            self.model, loader, candidates, self.hparams.normalize, progress=True
        )
        self.search_vanilla = vanilla  # the unedited accuracy on the same items
        self.search_table = [
            {**setting, "accuracy": acc} for setting, acc in zip(settings, accuracies, strict=True)
        ]
        best = max(self.search_table, key=lambda row: row["accuracy"])  # first of equal ones
        return dict(best)

    # ------------------------------------------------------------------ end of fit
    def finish(self, datamodule: Any, artifacts: RunArtifacts) -> dict[str, Any]:
        return finish_austeer_run(self, datamodule, artifacts)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Tensor], steered: Any, vanilla: Any) -> None:
        norm = self.hparams.normalize
        gold = batch["gold"]
        # with a steered pass too, the unedited prompt prefix runs once for both (as in search)
        share = self.edit is not None and leaves_prefix_alone(self.edit)
        prefix = prompt_prefix(self.model, batch) if share else None
        vanilla.update(predict_choices(self.model, batch, norm, prefix=prefix).cpu(), gold.cpu())
        if self.edit is not None:
            pred = predict_choices(self.model, batch, norm, self.edit, self.beta, prefix)
            steered.update(pred.cpu(), gold.cpu())

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, self.val_acc_vanilla)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, self.test_acc_vanilla)

    def _log_epoch(self, prefix: str, steered: Any, vanilla: Any) -> None:
        values = {f"{prefix}/accuracy_vanilla": vanilla.compute()} if vanilla.total else {}
        if steered.total:
            values[f"{prefix}/accuracy"] = steered.compute()
        self.log_dict(values)
        steered.reset()
        vanilla.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_acc, self.val_acc_vanilla)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_acc, self.test_acc_vanilla)


def unit_ranking(stats: MomentumStats, site: str, top: int = 100) -> list[dict[str, Any]]:
    """The ``top`` AUs of ``site`` by discriminative score, best first, with ``r_pos``, ``r_neg``
    and the mean difference (what ``fit`` ranks; saved as ``<run>/ranking.json``)."""
    one = stats.select([site])
    width = one.count_pos[site].numel()
    units = top_k_units(one.scores, min(top, width))
    r_pos, r_neg, mean = one.r_pos[site], one.r_neg[site], one.mean_diff[site]
    return [
        {
            "layer": layer,
            "site": site,
            "dim": dim,
            "score": round(float(max(r_pos[layer, dim], r_neg[layer, dim])), 6),
            "r_pos": round(float(r_pos[layer, dim]), 6),
            "r_neg": round(float(r_neg[layer, dim]), 6),
            "mean_diff": float(mean[layer, dim]),
        }
        for layer, _, dim in units
    ]


def finish_austeer_run(module: AUSteerModule, dm: Any, art: RunArtifacts) -> dict[str, Any]:
    """Search on validation, build and export the edit, evaluate test, write metrics and plots."""
    h = module.hparams
    started = time.perf_counter()
    best = module.search(dm.val_dataloader())
    search_seconds = time.perf_counter() - started
    module.choice = {k: v for k, v in best.items() if k != "accuracy"}
    module.edit, module.beta = module.build(**module.choice)
    vanilla_test, steered_test = evaluate_many(
        module.model, dm.test_dataloader(), [None, (module.edit, module.beta)], h.normalize
    )
    steered_count = (
        1 if h.method == "caa" else module.edit.num_steered()  # type: ignore[union-attr]
    )
    metrics = {
        "task": getattr(dm, "task", None),
        "method": h.method,
        "site": h.site,
        "choice": module.choice,
        "num_pairs": module.stats.n,
        "num_steered_activations": (
            module.dims.d_model if h.method == "caa" else int(steered_count)
        ),
        "val/accuracy": best["accuracy"],
        "val/accuracy_vanilla": module.search_vanilla,
        "test/accuracy": steered_test,
        "test/accuracy_vanilla": vanilla_test,
        "search_seconds": round(search_seconds, 1),
        "search": module.search_table,
    }
    art.write_metrics(metrics)
    art.write_json("ranking.json", unit_ranking(module.stats, h.site))
    art.export(module.edit, h.backbone, extra={"beta": module.beta, **metrics})
    title = f"Discriminative score per AU ({h.site}), {metrics['task']}"
    art.plot("unit_scores", plots.unit_scores(module.stats.scores[h.site], title, site=h.site))
    if h.method != "caa":
        ks = sorted({row["k"] for row in module.search_table})
        alphas = sorted({row["alpha"] for row in module.search_table})
        grid = torch.full((len(ks), len(alphas)), float("nan"))
        for row in module.search_table:
            grid[ks.index(row["k"]), alphas.index(row["alpha"])] = row["accuracy"]
        title = f"{h.method} validation accuracy, {metrics['task']}"
        art.plot("accuracy_grid", plots.accuracy_grid(grid, ks, alphas, title))
    art.publish()
    art.checkpoint()
    rank_zero_info(
        f"{h.method} ({h.site}) on {metrics['task']}: {module.choice}; test accuracy "
        f"{steered_test:.3f} vs vanilla {vanilla_test:.3f}"
    )
    return metrics
