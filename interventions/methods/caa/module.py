"""The ``caa_sweep`` experiment as a LightningModule: :class:`CAAModule`.

``fit`` computes the CAA vectors (:mod:`.vectors`; no optimiser, one epoch over the training
split), then sweeps every train and test example over all layers and multipliers (cached), picks
the fixed layer with the best mean train steerability, exports the vectors and writes metrics and
plots to the run folder (and W&B).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from interventions.core.backbone import DEFAULT_BACKBONE
from interventions.core.dispatch import DeviceMap, MaxMemory
from interventions.evaluation.sweep import DEFAULT_MULTIPLIERS, cached_sweep, sweep_examples
from interventions.methods.caa.vectors import DiffAccumulator, steering_edit
from interventions.reporting import plots
from interventions.reporting.artifacts import RunArtifacts
from interventions.reporting.computed import ComputedModule

__all__ = ["CAAModule", "sweep_report"]


class CAAModule(ComputedModule):
    """CAA vectors + the per-layer steerability sweep (the ``caa_sweep`` config).

    Args:
        backbone: model name or path (linked to the data module's ``backbone``).
        multipliers: steering multipliers of the sweep.
        dtype: backbone dtype.
        device_map: Accelerate device map splitting the backbone over GPUs, ``cpu`` and ``disk``
            (``auto``, ``sequential`` or module -> device); ``None``: all on the trainer's device.
        max_memory: memory per device for ``device_map``, e.g. ``{0: 20GiB, cpu: 60GiB}``.
        offload_folder: folder for the backbone weights ``device_map`` puts on ``disk``.
        sweep_cache_dir: root of the sweep cache (default: the project cache folder).
        sweep_chunk_size: examples per cache chunk.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS,
        dtype: str = "float32",
        device_map: DeviceMap | None = None,
        max_memory: MaxMemory | None = None,
        offload_folder: str | None = None,
        sweep_cache_dir: str | None = None,
        sweep_chunk_size: int = 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.load_and_hold()  # outside the module tree: never saved in checkpoints
        self.acc = DiffAccumulator()
        self.register_buffer("vectors", torch.zeros(0))

    def reset_statistics(self) -> None:
        self.acc = DiffAccumulator()

    def accumulate(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.acc.update(self.model, batch)

    def reduce_statistics(self) -> None:
        self.acc.all_reduce()

    def statistics_complete(self) -> None:
        self.vectors = self.acc.mean().to(self.device)
        self.log("train/num_examples", float(self.acc.count))

    def finish(self, datamodule: Any, artifacts: RunArtifacts) -> dict[str, Any]:
        h = self.hparams
        return sweep_report(
            self.model,
            datamodule,
            self.vectors.cpu(),
            h.multipliers,
            h.backbone,
            artifacts,
            h.sweep_cache_dir,
            h.sweep_chunk_size,
        )


def sweep_report(
    model: nn.Module,
    dm: Any,
    vectors: Tensor,
    multipliers: Sequence[float],
    backbone: str,
    artifacts: RunArtifacts,
    cache_dir: str | None = None,
    chunk_size: int = 16,
) -> dict[str, Any]:
    """Sweep train and test, choose the fixed layer, export and plot; returns the metrics."""
    tags = dict(
        behavior=getattr(dm, "behavior", type(dm).__name__),
        variant=getattr(dm, "variant", "base"),
        seed=getattr(dm, "seed", 0),
        method="caa",
    )
    steer = {}
    for split, examples in (("train", dm.train_examples), ("test", dm.test_examples)):
        res = cached_sweep(
            model,
            sweep_examples(examples, dm.tokenizer),
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
    nan = float("nan")
    metrics = {
        "fixed_layer": fixed,
        "train/steerability_per_layer": mean_train.tolist(),
        "test/steerability_per_layer": test.mean(0).tolist(),
        "test/steerability": float(test[:, fixed].mean()) if len(test) else nan,
        "test/prop_steerable": float((test[:, fixed] > 0).float().mean()) if len(test) else nan,
        "test/oracle_steerability": float(test.max(1).values.mean()) if len(test) else nan,
        "num_train": int(steer["train"].shape[0]),
        "num_test": int(test.shape[0]),
    }
    artifacts.export(steering_edit(model, vectors), backbone, extra={"fixed_layer": fixed})
    artifacts.write_metrics(metrics)
    artifacts.plot(
        "steerability_per_layer",
        plots.steerability_per_layer(
            {"train": mean_train, "test": test.mean(0)},
            fixed,
            title=f"CAA steerability per layer: {tags['behavior']}",
        ),
    )
    artifacts.plot(
        "best_layers",
        plots.best_layer_histogram(
            steer["train"].argmax(1),
            steer["train"].shape[1],
            fixed_layer=fixed,
            title=f"Per-example best layer (train): {tags['behavior']}",
        ),
    )
    artifacts.publish()
    return metrics
