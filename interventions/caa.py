"""Contrastive Activation Addition (CAA; Rimsky et al. 2024) on A/B behaviour questions.

The CAA vector of layer ``l`` is the mean, over the training examples, of the difference of
``resid_post`` at the answer token between the prompt completed with the behaviour-matching
letter and with the other letter.  :func:`caa_vectors` computes it for every layer in one batched
pass (a running sum, so memory does not grow with the data).  Steering adds ``lambda * v[l]`` at
the answer position of one layer; the vectors are a :class:`~interventions.edits.SteerVec` on
``resid_post`` with ``positions="last"`` and export like any other intervention.

:class:`CAAModule` is the ``caa_sweep`` experiment as a LightningModule: ``fit`` computes the
vectors (no optimiser, one epoch over the training split), then sweeps every train and test
example over all layers and multipliers (cached), picks the fixed layer with the best mean train
steerability, exports the vectors and writes metrics and plots to the run folder (and W&B).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from interventions.backbone import DEFAULT_BACKBONE, FrozenBackbone, load_backbone
from interventions.edits import SteerVec
from interventions.export import save_intervention
from interventions.report import publish_to_wandb
from interventions.sites import model_dims
from interventions.sweep import (
    DEFAULT_MULTIPLIERS,
    answer_activations,
    cached_sweep,
    sweep_examples,
)


def steering_edit(model: nn.Module, vectors: Tensor) -> SteerVec:
    """``vectors [L, d]`` as a SteerVec on resid_post at the answer position (every layer)."""
    edit = SteerVec(model_dims(model), sites=["resid_post"], positions="last")
    with torch.no_grad():
        edit.params["resid_post"].copy_(vectors[:, None, :])
    return edit


class DiffAccumulator:
    """Running sum of per-example answer-token activation differences, ``[L, d]``."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def update(self, model: nn.Module, batch: dict[str, Any]) -> None:
        """Add one batch (keys ``input_ids``, ``attention_mask``, ``correct_id``, ``wrong_id``)."""
        layers = list(range(model_dims(model).num_layers))
        device = next(model.parameters()).device
        diff, _ = answer_activations(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["correct_id"].to(device),
            batch["wrong_id"].to(device),
            layers,
        )
        part = diff.double().sum(0).cpu()  # [L, d]
        self.total = part if self.total is None else self.total + part
        self.count += diff.shape[0]

    def mean(self) -> Tensor:
        """``[L, d]`` the CAA vectors."""
        if self.total is None or self.count == 0:
            raise ValueError(
                "CAA needs at least one training example; the training split is empty."
            )
        return (self.total / self.count).float()


@torch.no_grad()
def caa_vectors(model: nn.Module, batches: Iterable[dict[str, Any]]) -> Tensor:
    """``[L, d]`` CAA vectors from batches of a contrastive (A/B) data module."""
    acc = DiffAccumulator()
    for batch in batches:
        acc.update(model, batch)
    return acc.mean()


class CAAModule(FrozenBackbone, LightningModule):
    """CAA vectors + the per-layer steerability sweep (the ``caa_sweep`` config).

    Args:
        backbone: model name or path (linked to the data module's ``backbone``).
        multipliers: steering multipliers of the sweep.
        dtype: backbone dtype.
        sweep_cache_dir: root of the sweep cache (default: the project cache folder).
        sweep_chunk_size: examples per cache chunk.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS,
        dtype: str = "float32",
        sweep_cache_dir: str | None = None,
        sweep_chunk_size: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        model, _ = load_backbone(backbone, dtype=dtype)
        self.hold_backbone(model)  # outside the module tree: never saved in checkpoints
        self.automatic_optimization = False
        self.acc = DiffAccumulator()
        self.register_buffer("vectors", torch.zeros(0))
        self.results: dict[str, Any] = {}

    def configure_optimizers(self) -> None:
        return None  # CAA has nothing to optimise

    def on_train_epoch_start(self) -> None:
        self.acc = DiffAccumulator()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.acc.update(self.model, batch)

    def on_train_epoch_end(self) -> None:
        self.vectors = self.acc.mean().to(self.device)
        self.log("train/num_examples", float(self.acc.count))

    def on_fit_end(self) -> None:
        dm = self.trainer.datamodule
        if dm is None:
            return
        run = Path(self.trainer.default_root_dir)
        self.results = sweep_report(
            self.model,
            dm,
            self.vectors.cpu(),
            self.hparams.multipliers,
            self.hparams.backbone,
            run,
            self.hparams.sweep_cache_dir,
            self.hparams.sweep_chunk_size,
            loggers=self.trainer.loggers,
        )


def sweep_report(
    model: nn.Module,
    dm: Any,
    vectors: Tensor,
    multipliers: Sequence[float],
    backbone: str,
    run: Path,
    cache_dir: str | None = None,
    chunk_size: int = 16,
    loggers: Sequence[Any] = (),
) -> dict[str, Any]:
    """Sweep train and test, choose the fixed layer, export and plot; returns the metrics."""
    from interventions import plots

    tags = dict(
        behavior=getattr(dm, "behavior", type(dm).__name__),
        variant=getattr(dm, "variant", "base"),
        seed=getattr(dm, "seed", 0),
        method="caa",
    )
    tokenizer = dm.tokenizer
    steer = {}
    for split, examples in (("train", dm.train_examples), ("test", dm.test_examples)):
        ex = sweep_examples(examples, tokenizer)
        res = cached_sweep(
            model,
            ex,
            vectors,
            multipliers,
            backbone,
            {**tags, "split": split},
            cache_dir=cache_dir,
            chunk_size=chunk_size,
        )
        steer[split] = res.steerability  # [N, L]
    mean_train = steer["train"].mean(0)
    fixed = int(mean_train.argmax())
    test = steer["test"]
    metrics = {
        "fixed_layer": fixed,
        "train/steerability_per_layer": mean_train.tolist(),
        "test/steerability_per_layer": test.mean(0).tolist(),
        "test/steerability": float(test[:, fixed].mean()) if len(test) else float("nan"),
        "test/prop_steerable": float((test[:, fixed] > 0).float().mean())
        if len(test)
        else float("nan"),
        "test/oracle_steerability": float(test.max(1).values.mean()) if len(test) else float("nan"),
        "num_train": int(steer["train"].shape[0]),
        "num_test": int(test.shape[0]),
    }
    run.mkdir(parents=True, exist_ok=True)
    save_intervention(
        steering_edit(model, vectors), run / "intervention", backbone, extra={"fixed_layer": fixed}
    )
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    figs = {
        "steerability_per_layer": plots.steerability_per_layer(
            {"train": mean_train, "test": test.mean(0)},
            fixed,
            title=f"CAA steerability per layer: {tags['behavior']}",
            path=run / "plots" / "steerability_per_layer.png",
        ),
        "best_layers": plots.best_layer_histogram(
            steer["train"].argmax(1),
            steer["train"].shape[1],
            fixed_layer=fixed,
            title=f"Per-example best layer (train): {tags['behavior']}",
            path=run / "plots" / "best_layers.png",
        ),
    }
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    publish_to_wandb(
        loggers, [run / "plots" / f"{k}.png" for k in figs], run / "intervention", metrics=scalars
    )
    return metrics
