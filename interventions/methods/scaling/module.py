"""Activation scaling (Stoehr et al.): the three-term trainer as a LightningModule.

:class:`InterventionModule` wraps a frozen backbone and one edit (ActivScalar, SteerVec or
DynScalar, see :mod:`interventions.edits`) and trains the edit on effectiveness + faithfulness +
minimality.  Each training step runs the beta = +1 and beta = -1 passes as one concatenated
batch (beta is a per-row runtime argument).  The clean logits never change for a frozen
backbone, so they are computed once per prompt and kept on the device (``cache_clean_logits``);
without the cache the clean rows join the batch with beta = 0 and their logits are detached.

Minimality is an L1 term: a plain penalty in the loss (``sparsity="penalty"``), or a proximal
(soft-threshold) step after every optimiser step (``sparsity="proximal"``), which drives
unimportant parameters to exactly zero.

The backbone is held outside the module tree, so checkpoints contain the edit's parameters and
the hyperparameters only; loading a checkpoint reloads the backbone by name.  At the end of
``fit`` the edit is exported to ``<run>/intervention/`` (safetensors + JSON, also logged as a W&B
artifact) and the plots are written to ``<run>/plots/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from interventions.core.backbone import DEFAULT_BACKBONE
from interventions.core.dispatch import DeviceMap, MaxMemory, input_device
from interventions.core.distributed import all_reduce_count, all_reduce_sum, shard_loader
from interventions.core.frozen import FrozenBackbone
from interventions.core.hooks import attach, last_token_logits
from interventions.core.sites import check_sites, model_dims
from interventions.edits import EDITS, PointEdit, PositionSpec, build_edit
from interventions.edits.artifact import NonFiniteEditError, non_finite_sites
from interventions.evaluation.objectives import (
    InterventionMetrics,
    objective_terms,
    soft_threshold_,
    three_term_loss,
)
from interventions.methods.scaling.report import finish_run
from interventions.reporting.artifacts import non_finite_advice
from interventions.reporting.run_folder import run_folder, unique_path

EditKind = Literal["activscalar", "steervec", "dynscalar"]
Sparsity = Literal["penalty", "proximal"]
LrSchedule = Literal["constant", "cosine", "linear"]
EarlyStoppingMonitor = Literal["val/flip_rate", "val/effectiveness", "val/loss"]


def decay_factor(schedule: str, total_steps: int):
    """``step -> lr factor`` of a schedule decaying from 1 at step 0 to 0 at ``total_steps``
    (``cosine``: ``(1 + cos(pi t / T)) / 2``; ``linear``: ``1 - t / T``)."""

    def factor(step: int) -> float:
        t = min(step / total_steps, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t

    return factor


class InterventionModule(FrozenBackbone, L.LightningModule):
    """A frozen causal LM plus one trainable edit, trained on the three-term objective.

    Args:
        backbone: model to intervene on: the alias ``smollm2-135m-instruct`` (packaged, offline),
            a local folder or a hub name.
        edit: edit type: ``activscalar`` (h * (1 + beta alpha)), ``steervec`` (h + beta v) or
            ``dynscalar`` (alpha = g^T h / ||h||).
        sites: sites to edit (``resid_post``, ``attn_out``, ``mlp_out``, ``attn_z``, ``mlp_act``):
            a list, or one site name; ``None`` = ``[attn_out, mlp_out]``.
        layers: layers to edit; ``None`` = every layer.
        positions: ``"all"`` (one parameter per prompt position for ActivScalar / SteerVec, every
            token for DynScalar), ``"last"`` or a list of prompt positions.
        num_positions: prompt token length for position-tied edits; ``None`` = taken from the
            data module's ``prompt_length`` at setup.
        init_std: standard deviation sigma of the N(0, sigma) initialisation.
        lambda_f: weight lambda_F of the faithfulness (KL) term.
        lambda_m: weight lambda_M of the L1 minimality term.
        sparsity: how the L1 term is optimised: ``"penalty"`` (added to the loss; Adam follows its
            subgradient, values hover near but rarely at zero) or ``"proximal"`` (after each
            optimiser step ``theta <- sign(theta) * max(|theta| - lr * lambda_M, 0)``: exact zeros).
        margin: margin m of the effectiveness hinge.
        refit_epochs: the last this many epochs of ``fit`` re-fit the support L1 found (a
            relaxed lasso): at their start every parameter with ``|theta| < 0.01`` is set to 0
            and stays 0, and the others train on effectiveness + faithfulness without the L1
            term, so minimality cannot grow and the effectiveness that shrinkage cost comes
            back. Needs ``trainer.max_epochs``; 0 = no re-fit.
        lr: Adam learning rate.
        lr_schedule: the learning rate over the optimiser steps of ``fit``: ``constant``, or
            decayed from ``lr`` to 0 at the last step (``cosine``: half a cosine; ``linear``).
            With ``sparsity="proximal"`` the soft threshold ``lr * lambda_M`` follows it, so the
            last steps settle the sparse solution instead of pruning and regrowing scalars.
        dtype: backbone dtype (``float32``, ``bfloat16``, ``float16``).
        adapter: optional PEFT adapter folder merged into the backbone.
        device_map: Accelerate device map splitting the backbone over GPUs, ``cpu`` and ``disk``
            (``auto``, ``sequential`` or module -> device); ``None``: all on the trainer's device.
        max_memory: memory per device for ``device_map``, e.g. ``{0: 20GiB, cpu: 60GiB}``.
        offload_folder: folder for the backbone weights ``device_map`` puts on ``disk``.
        activation_checkpointing: recompute each backbone layer in the backward pass instead of
            keeping its activations (less memory for long prompts, about one more forward).
        beta_grid: betas for the logit-difference-vs-beta plot made at the end of ``fit``.
        cache_clean_logits: compute each prompt's clean logits once and keep them on the device
            (``prompts x vocab`` floats; 200 IOI prompts on SmolLM2: 39 MB); ``False`` runs the
            clean rows in every step.
        early_stopping_patience: stop ``fit`` when ``early_stopping_monitor`` has not improved
            by ``early_stopping_min_delta`` for this many validation epochs; ``None`` trains for
            ``trainer.max_epochs``.
        early_stopping_monitor: the validation metric watched: ``val/flip_rate`` (maximised;
            stops once the flips are reached and hold), ``val/effectiveness`` (maximised) or
            ``val/loss`` (the objective with lambda_M * L1, minimised; with the proximal step
            L1 is not what Adam minimises, so prefer the flip rate there).
        early_stopping_min_delta: the improvement that counts.
        num_samples: test prompts continued greedily with beta = +1, 0, -1 at the end of
            ``fit`` (``<run>/samples.md`` and a W&B table); 0 = none.
        sample_tokens: new tokens per continuation.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        edit: EditKind = "activscalar",
        sites: list[str] | str | None = None,
        layers: list[int] | None = None,
        positions: PositionSpec = "all",
        num_positions: int | None = None,
        init_std: float = 1e-5,
        lambda_f: float = 1.0,
        lambda_m: float = 0.0,
        margin: float = 1.0,
        refit_epochs: int = 0,
        lr: float = 1e-2,
        lr_schedule: LrSchedule = "constant",
        dtype: str = "float32",
        adapter: str | None = None,
        device_map: DeviceMap | None = None,
        max_memory: MaxMemory | None = None,
        offload_folder: str | None = None,
        activation_checkpointing: bool = False,
        beta_grid: list[float] | None = None,
        sparsity: Sparsity = "penalty",
        cache_clean_logits: bool = True,
        early_stopping_patience: int | None = None,
        early_stopping_monitor: EarlyStoppingMonitor = "val/flip_rate",
        early_stopping_min_delta: float = 0.0,
        num_samples: int = 4,
        sample_tokens: int = 12,
    ) -> None:
        super().__init__()
        if edit not in EDITS:
            raise ValueError(f"Unknown edit {edit!r}. Available: {', '.join(sorted(EDITS))}.")
        site_names = check_sites(sites) if sites else ["attn_out", "mlp_out"]  # before any load
        if lambda_f < 0 or lambda_m < 0 or margin < 0:
            raise ValueError("lambda_f, lambda_m and margin must be >= 0.")
        if sparsity not in ("penalty", "proximal"):
            raise ValueError(f"sparsity must be 'penalty' or 'proximal', got {sparsity!r}.")
        if refit_epochs < 0:
            raise ValueError(f"refit_epochs must be >= 0, got {refit_epochs}.")
        if lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(
                f"lr_schedule must be 'constant', 'cosine' or 'linear', got {lr_schedule!r}."
            )
        if early_stopping_monitor not in ("val/flip_rate", "val/effectiveness", "val/loss"):
            raise ValueError(
                "early_stopping_monitor must be 'val/flip_rate', 'val/effectiveness' or "
                f"'val/loss', got {early_stopping_monitor!r}."
            )
        if early_stopping_patience is not None and early_stopping_patience < 1:
            raise ValueError(
                f"early_stopping_patience must be >= 1 or null, got {early_stopping_patience}."
            )
        self.save_hyperparameters()
        self.sites = site_names
        # Held outside the module tree: never in state_dict / checkpoints, never put in train mode.
        model, _ = self.load_and_hold()
        self.dims = model_dims(model)
        self.beta_grid = beta_grid or [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
        self.edit: PointEdit | None = None
        if not self._needs_prompt_length():
            self._build_edit(num_positions)
        self._clean_cache: dict[bytes, Tensor] = {}  # prompt tokens -> clean logits [vocab]
        self._support: list[Tensor] | None = None  # the re-fit phase's masks (refit_epochs)
        self.val_metrics = InterventionMetrics("val/")
        self.test_metrics = InterventionMetrics("test/")

    # ------------------------------------------------------------------------------ building
    def _needs_prompt_length(self) -> bool:
        h = self.hparams
        tied = EDITS[h.edit].position_tied and h.positions == "all"
        negative = isinstance(h.positions, list) and any(p < 0 for p in h.positions)
        return (tied or negative) and h.num_positions is None

    def _build_edit(self, num_positions: int | None) -> None:
        h = self.hparams
        self.edit = build_edit(
            h.edit,
            self.dims,
            sites=self.sites,
            layers=h.layers,
            positions=h.positions,
            num_positions=num_positions,
            init_std=h.init_std,
        )
        self.hparams["num_positions"] = num_positions
        rank_zero_info(
            f"{type(self.edit).__name__}: {self.edit.num_parameters():,} parameters on "
            f"{len(self.edit.layers)} layers x {self.edit.sites} x {self.edit.num_slots} position(s)"
        )

    def setup(self, stage: str) -> None:
        self.run_dir()  # chosen once, on every rank, before any file is written
        if self.edit is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        length = getattr(datamodule, "prompt_length", None)
        if length is None:
            raise ValueError(
                f"{self.hparams.edit} with positions={self.hparams.positions!r} ties parameters to "
                "prompt positions, so all prompts must have one token length: use a data module "
                "with fixed_length=true, set model.num_positions, or use positions='last' / "
                "edit=dynscalar for prompts of varying length."
            )
        self._build_edit(int(length))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.edit.parameters(), lr=self.hparams.lr)
        schedule = self.hparams.get("lr_schedule", "constant")
        if schedule == "constant":
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay_factor(schedule, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_callbacks(self) -> list[Callback]:
        patience = self.hparams.early_stopping_patience
        if patience is None:
            return []
        monitor = self.hparams.early_stopping_monitor
        return [
            EarlyStopping(
                monitor=monitor,
                mode="min" if monitor == "val/loss" else "max",
                patience=patience,
                min_delta=self.hparams.early_stopping_min_delta,
            )
        ]

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self._support is not None:  # re-fit: the support stays fixed, no L1
            with torch.no_grad():
                for p, keep in zip(self.edit.params.values(), self._support, strict=True):
                    p.mul_(keep)
        elif self.hparams.sparsity == "proximal" and self.hparams.lambda_m > 0:
            for group in optimizer.param_groups:
                soft_threshold_(group["params"], group["lr"] * self.hparams.lambda_m)
        self._check_finite()

    @property
    def refit_start_epoch(self) -> int | None:
        """The first epoch of the re-fit phase (``refit_epochs``), ``None`` without one."""
        refit = int(self.hparams.get("refit_epochs", 0) or 0)
        if refit == 0:
            return None
        max_epochs = getattr(self._trainer, "max_epochs", None) if self._trainer else None
        if max_epochs is None or max_epochs < 0:
            raise ValueError(
                f"refit_epochs={refit} re-fits during the last epochs of fit, so it needs "
                "trainer.max_epochs (got none): set --trainer.max_epochs or refit_epochs=0."
            )
        return max(max_epochs - refit, 0)

    def on_train_epoch_start(self) -> None:
        start = self.refit_start_epoch
        if start is None or self.current_epoch < start or self._support is not None:
            return
        with torch.no_grad():  # the same on every rank: the parameters are
            self._support = [p.abs() >= 0.01 for p in self.edit.params.values()]
            for p, keep in zip(self.edit.params.values(), self._support, strict=True):
                p.mul_(keep)
        kept = int(sum(int(k.sum()) for k in self._support))
        rank_zero_info(
            f"epoch {self.current_epoch}: re-fitting the {kept} non-negligible parameters "
            f"without L1 for the last {self.trainer.max_epochs - start} epoch(s)"
        )

    def _check_finite(self) -> None:
        """Stop at the first step that leaves a NaN or infinite parameter (a non-finite loss or
        gradient does: Adam spreads it), instead of training on in NaN.  One tiny reduction and
        one host sync per step; the parameters are the same on every rank, so all stop."""
        params = list(self.edit.params.values())
        if bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            return
        trainer = self.trainer
        raise NonFiniteEditError(
            f"Training stopped at step {trainer.global_step} (epoch {trainer.current_epoch}): "
            f"the {type(self.edit).__name__} parameters on site(s) {non_finite_sites(self.edit)} "
            "became NaN or infinite (the loss or its gradient was not finite). "
            + non_finite_advice(trainer, self.model.dtype)
        )

    # ------------------------------------------------------------------------------ forward
    def _check_lengths(self, mask: Tensor) -> None:
        if not (self.edit.position_tied and self.edit.positions == "all"):
            return
        lengths = mask.sum(1)
        expected = self.edit.num_positions
        if bool((lengths != expected).any()):
            raise ValueError(
                f"{type(self.edit).__name__} ties one parameter to each of {expected} prompt "
                f"positions, but this batch has prompts of {sorted(set(lengths.tolist()))} tokens. "
                "Use fixed_length=true in the data module, or positions='last' / DynScalar."
            )

    def three_way_logits(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Logits at the last prompt token for beta = +1, -1 and the clean model.

        The edited rows run as one batch; the clean logits come from the per-prompt cache
        (``cache_clean_logits``) or, without it, from beta = 0 rows of the same batch.
        """
        if self.edit is None:
            raise RuntimeError(
                "The edit is not built yet: position-tied edits take num_positions from the data "
                "module at setup. Pass num_positions=<prompt length> to InterventionModule, or "
                "call this after trainer.fit / validate / test."
            )
        ids, mask = batch["input_ids"], batch["attention_mask"]
        self._check_lengths(mask)
        n = ids.shape[0]
        if not self.hparams.cache_clean_logits:
            beta = torch.cat([ids.new_ones(n), -ids.new_ones(n), ids.new_zeros(n)]).float()
            with attach(self.model, self.edit, beta=beta):
                logits = last_token_logits(self.model, ids.repeat(3, 1), mask.repeat(3, 1))
            pos, neg, clean = logits.split(n)
            return pos, neg, clean.detach()
        clean = self.clean_logits(ids, mask)
        beta = torch.cat([ids.new_ones(n), -ids.new_ones(n)]).float()
        with attach(self.model, self.edit, beta=beta):
            logits = last_token_logits(self.model, ids.repeat(2, 1), mask.repeat(2, 1))
        pos, neg = logits.split(n)
        return pos, neg, clean

    @torch.no_grad()
    def clean_logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``[batch, vocab]`` unedited logits at each prompt's last token, each prompt's computed
        once (keyed by its real tokens, so padding, batching and shuffling do not matter) and
        kept on the device; only prompts not seen before run through the model.  Without
        ``cache_clean_logits`` every call runs the prompts."""
        if not self.hparams.cache_clean_logits:
            return last_token_logits(self.model, ids, mask)
        rows = ids.detach().cpu()
        real = mask.detach().cpu().bool()
        keys = [rows[r][real[r]].numpy().tobytes() for r in range(rows.shape[0])]
        todo: dict[bytes, int] = {}  # prompts not seen before -> their first row
        for r, key in enumerate(keys):
            if key not in self._clean_cache and key not in todo:
                todo[key] = r
        if todo:
            index = torch.tensor(list(todo.values()), device=ids.device)
            logits = last_token_logits(self.model, ids[index], mask[index])
            for key, row in zip(todo, logits, strict=True):
                self._clean_cache[key] = row
        return torch.stack([self._clean_cache[key] for key in keys])

    def _terms(self, batch: dict[str, Any]):
        pos, neg, clean = self.three_way_logits(batch)
        return objective_terms(
            pos, neg, clean, batch["correct_id"], batch["wrong_id"], self.hparams.margin
        )

    def loss(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], Any]:
        """The three-term loss of one batch, its parts and the per-example terms."""
        terms = self._terms(batch)
        h = self.hparams
        # the proximal step handles L1 after the optimiser step: not in the gradient; the
        # re-fit phase has no L1 term
        lambda_m = h.lambda_m if h.sparsity == "penalty" and self._support is None else 0.0
        parts = three_term_loss(terms, self.edit.l1(), h.lambda_f, lambda_m)
        return parts, terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        parts, terms = self.loss(batch)
        n = batch["input_ids"].shape[0]
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n)
        self.log("train/effectiveness", -terms.hinge0.mean(), prog_bar=True, batch_size=n)
        self.log("train/faithfulness", parts["faithfulness"], batch_size=n)
        self.log("train/flip_rate", terms.flipped.float().mean(), batch_size=n)
        self.log("train/l1", parts["l1"], batch_size=n)
        return parts["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update_from(self._terms(batch))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_metrics.update_from(self._terms(batch))

    def _log_epoch(self, metrics: InterventionMetrics, prefix: str) -> None:
        values = metrics.compute()
        self.log_dict(values, prog_bar=prefix == "val/")
        h = self.hparams
        objective = (
            -values[f"{prefix}effectiveness_margin"]
            - h.lambda_f * values[f"{prefix}faithfulness"]
            + h.lambda_m * self.edit.l1().detach()
        )
        self.log(f"{prefix}loss", objective)
        self.log(f"{prefix}minimality", float(self.edit.count_nonnegligible()))
        self.log(f"{prefix}num_parameters", float(self.edit.num_parameters()))
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics, "val/")

    def on_test_epoch_end(self) -> None:
        values = {k: float(v) for k, v in self.test_metrics.compute().items()}
        self._log_epoch(self.test_metrics, "test/")
        run = self.run_dir()  # on every rank: choosing it may be collective
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            values["test/minimality"] = float(self.edit.count_nonnegligible())
            run.mkdir(parents=True, exist_ok=True)
            # beside the fit's artefacts, under a name no earlier test has used
            path = unique_path(run / "test_metrics.json")
            path.write_text(json.dumps(values, indent=2) + "\n")
            rank_zero_info(f"test metrics in {path}")

    # ------------------------------------------------------------------------------ evaluation
    def precision_context(self) -> contextlib.AbstractContextManager:
        """The trainer's precision context for forward passes (Lightning's
        ``precision_plugin.forward_context()``: autocast under ``bf16-mixed`` / ``16-mixed``,
        the half default dtype under ``*-true``), so evaluation outside the trainer's loops
        (the end of ``fit``) computes as validation does; a no-op without a trainer."""
        trainer = self._trainer
        if trainer is None:
            return contextlib.nullcontext()
        return trainer.precision_plugin.forward_context()

    def _on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = input_device(self.model)  # where the backbone reads its inputs
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def evaluate(self, dataloader) -> dict[str, float]:
        """All metrics on one data loader, outside the trainer (used for train-split numbers)."""
        return self.evaluate_with_curve(dataloader, [])[0]

    @torch.no_grad()
    def logit_diff_by_beta(self, dataloader, betas: list[float]) -> dict[str, list[float]]:
        """Mean logit of the correct and wrong token, and their difference, for each beta."""
        return self.evaluate_with_curve(dataloader, betas)[1]

    @torch.no_grad()
    def evaluate_with_curve(
        self, dataloader, betas: list[float]
    ) -> tuple[dict[str, float], dict[str, list[float]]]:
        """The metrics of :meth:`evaluate` and the curve of :meth:`logit_diff_by_beta` from one
        pass: each prompt runs once per distinct nonzero beta of ``betas`` and +-1, and the
        beta = 0 logits are the cached clean ones (an edit at beta = 0 is the identity).

        Under a process group each rank evaluates its share of the prompts and the metrics are
        those of all of them (collective: call it on every rank)."""
        metrics = InterventionMetrics("").to(input_device(self.model))
        grid = [float(b) for b in betas]
        distinct = sorted({b for b in grid + [1.0, -1.0] if b != 0.0})
        sums = torch.zeros(len(grid), 2, dtype=torch.float64)
        count = 0
        for batch in shard_loader(dataloader):  # this rank's share under a process group
            batch = self._on_device(batch)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            self._check_lengths(mask)
            correct, wrong = batch["correct_id"], batch["wrong_id"]
            with self.precision_context():  # as in validation: autocast under *-mixed
                by_beta = {0.0: self.clean_logits(ids, mask)}
                for beta in distinct:
                    with attach(self.model, self.edit, beta=beta):
                        by_beta[beta] = last_token_logits(self.model, ids, mask)
            metrics.update_from(
                objective_terms(
                    by_beta[1.0], by_beta[-1.0], by_beta[0.0], correct, wrong, self.hparams.margin
                )
            )
            rows = torch.arange(ids.shape[0], device=ids.device)
            for i, beta in enumerate(grid):
                sums[i, 0] += by_beta[beta][rows, correct].double().sum().cpu()
                sums[i, 1] += by_beta[beta][rows, wrong].double().sum().cpu()
            count += ids.shape[0]
        all_reduce_sum(sums)  # the ranks' sums (no-op in one process)
        count = all_reduce_count(count)
        out = {k: float(v) for k, v in metrics.compute().items()}  # collective under DDP
        out["minimality"] = float(self.edit.count_nonnegligible())
        out["num_parameters"] = float(self.edit.num_parameters())
        means = sums / max(count, 1)
        curve = dict(
            beta=grid,
            correct=means[:, 0].tolist(),
            wrong=means[:, 1].tolist(),
            diff=(means[:, 0] - means[:, 1]).tolist(),
        )
        return out, curve

    # ------------------------------------------------------------------------------ end of fit
    def run_dir(self) -> Path:
        """This fit's run folder (:func:`~interventions.reporting.run_folder.run_folder`)."""
        return run_folder(self.trainer)

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def end_of_fit(self) -> None:
        if self.trainer.sanity_checking:
            return
        # On every rank: the evaluation shards its prompts and combines the ranks' metrics
        # (collectives stay matched); files are written by global rank zero only.
        finish_run(self)
