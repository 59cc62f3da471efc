"""What a run leaves behind, written in one place: :class:`RunArtifacts`.

Every method ends its run the same way, through one object::

    art = RunArtifacts.of(module)                  # <run> = this fit's folder (run_folder)
    art.write_metrics(metrics)                     # <run>/metrics.json + numbers to every logger
    art.write_json("ranking.json", table)          # any other file of the run
    art.plot("heatmap", figure)                    # <run>/plots/heatmap.png (+ W&B image)
    art.table("samples", columns, rows)            # a W&B table
    art.export(edit, backbone, extra=...)          # <run>/intervention/ (+ W&B artifact)
    art.publish()                                  # images and artifacts to W&B
    art.checkpoint()                               # <run>/checkpoints/last.ckpt

An edit holding NaN or infinite values is never exported: :meth:`RunArtifacts.export` raises
:class:`~interventions.edits.artifact.NonFiniteEditError`, naming the precision the run used, a
precision that works and what the run already wrote (metrics, checkpoint).

Files are written by the global-zero process only (``writer=False`` turns every write into a
no-op), so the end of a run can be called on every rank of a multi-process job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from interventions.edits.artifact import NonFiniteEditError, non_finite_sites, save_intervention
from interventions.edits.point import PointEdit
from interventions.reporting.run_folder import run_folder

__all__ = ["RunArtifacts", "non_finite_advice", "numbers", "publish_to_wandb"]

WORKING_PRECISIONS = "precision='32-true' (or 'bf16-mixed' on hardware with bfloat16)"
"""What the non-finite errors recommend: Lightning precisions that keep the backbone in float32
(``bf16-mixed`` autocasts the matrix products only)."""


def non_finite_advice(trainer: Any | None, backbone_dtype: Any = None) -> str:
    """The sentence that non-finite errors end with: the precision (and backbone dtype) the run
    used, a precision that works, and where the run's checkpoint is (if it keeps one)."""
    precision = getattr(trainer, "precision", None)
    used = f"precision={precision!r}" if precision is not None else "this precision"
    if backbone_dtype is not None:
        used += f" with backbone dtype {str(backbone_dtype).removeprefix('torch.')}"
    text = (
        f"The run used {used}; half-precision training can overflow to NaN. Train with "
        f"{WORKING_PRECISIONS} and a float32 backbone (model.dtype=float32), or lower the "
        "learning rate."
    )
    callback = getattr(trainer, "checkpoint_callback", None)
    last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    if last:
        text += f" The last checkpoint written is {last}."
    return text


def numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar numbers of a (nested) metrics dict, flattened to ``prefix + "a/b"`` keys;
    lists, strings and ``None`` are left out (they stay in metrics.json)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class RunArtifacts:
    """The files, logged numbers, images and artifacts of one run folder.

    Args:
        run: the run folder (:func:`~interventions.reporting.run_folder.run_folder`: a
            ``version_N`` of its own for each fit).
        loggers: the trainer's loggers; numbers go to all of them, images and artifacts to the
            Weights & Biases ones.
        trainer: the trainer, for :meth:`checkpoint` and the logging step.
        writer: whether this process writes (global rank zero); others only keep the paths.
    """

    def __init__(
        self,
        run: str | Path,
        loggers: Sequence[Any] = (),
        trainer: Any | None = None,
        writer: bool = True,
    ) -> None:
        self.run = Path(run)
        self.loggers = list(loggers)
        self.trainer = trainer
        self.writer = writer
        self.images: list[Path] = []
        self.exports: list[tuple[Path, str]] = []  # (folder, W&B artifact type)

    @classmethod
    def of(cls, module: Any) -> RunArtifacts:
        """The artefacts of the run a LightningModule's trainer is in."""
        trainer = module.trainer
        return cls(
            run_folder(trainer),
            trainer.loggers,
            trainer=trainer,
            writer=bool(trainer.is_global_zero),
        )

    # ------------------------------------------------------------------------------ files
    def path(self, *parts: str) -> Path:
        """A path inside the run folder."""
        return self.run.joinpath(*parts)

    def write_text(self, name: str, text: str) -> Path:
        """``<run>/<name>`` with ``text``."""
        path = self.path(name)
        if self.writer:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path

    def write_json(self, name: str, data: Any) -> Path:
        """``<run>/<name>`` as indented JSON (non-JSON values as their ``str``)."""
        return self.write_text(name, json.dumps(data, indent=2, default=str) + "\n")

    def write_metrics(
        self,
        metrics: Mapping[str, Any],
        scalars: Mapping[str, float] | None = None,
        name: str = "metrics.json",
    ) -> Path:
        """``<run>/metrics.json``, and the numbers logged to every logger: ``scalars`` when
        given, else every scalar of ``metrics`` (:func:`numbers`)."""
        path = self.write_json(name, metrics)
        values = dict(numbers(metrics) if scalars is None else scalars)
        if self.writer and values:
            step = getattr(self.trainer, "global_step", None)
            for logger in self.loggers:
                logger.log_metrics(values, step=step)
        return path

    def plot(self, name: str, figure: Figure) -> Path:
        """Save ``figure`` as ``<run>/plots/<name>.png``, close it, and keep it for W&B."""
        import matplotlib.pyplot as plt

        path = self.path("plots", f"{name}.png")
        if self.writer:
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=120, bbox_inches="tight")
            self.images.append(path)
        plt.close(figure)
        return path

    def export(
        self,
        edit: PointEdit,
        backbone: str,
        name: str = "intervention",
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """The edit as ``<run>/<name>/`` (:func:`interventions.edits.save_intervention`), logged
        as a W&B artifact of type ``intervention`` by :meth:`publish`.

        Raises:
            NonFiniteEditError: the edit holds NaN or infinite values (checked on every rank,
                so all of them stop together); nothing is exported, files already written
                (e.g. ``metrics.json``) stay.
        """
        folder = self.path(name)
        bad = non_finite_sites(edit)
        if bad:
            metrics = self.path("metrics.json")
            kept = f" The metrics are kept in {metrics}." if metrics.is_file() else ""
            raise NonFiniteEditError(
                f"Refusing to export the {type(edit).__name__} to {folder}: its parameters on "
                f"site(s) {bad} hold NaN or infinite values.{kept} "
                + non_finite_advice(self.trainer)
            )
        if self.writer:
            save_intervention(edit, folder, backbone=backbone, extra=dict(extra or {}))
            self.exports.append((folder, "intervention"))
        return folder

    def add_export(self, folder: Path, artifact_type: str) -> Path:
        """A folder another writer made (e.g. the W2S predictor), logged as a W&B artifact."""
        if self.writer:
            self.exports.append((Path(folder), artifact_type))
        return Path(folder)

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table for each Weights & Biases logger (the file form is the caller's, e.g. a
        markdown file through :meth:`write_text`)."""
        if not self.writer:
            return
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(name, columns=list(columns), data=[list(r) for r in rows])

    def checkpoint(self) -> Path | None:
        """``<run>/checkpoints/last.ckpt``, for runs whose state is only final after ``fit``
        (computed methods); ``None`` when the trainer keeps no checkpoints."""
        trainer = self.trainer
        if trainer is None or not trainer.checkpoint_callbacks:
            return None
        path = self.path("checkpoints", "last.ckpt")
        trainer.save_checkpoint(path)
        return path

    # ------------------------------------------------------------------------------ W&B
    def publish(self) -> None:
        """Send the images and every export to each Weights & Biases logger."""
        if not self.writer:
            return
        publish_to_wandb(self.loggers, self.images)
        for folder, kind in self.exports:
            publish_to_wandb(self.loggers, [], folder, artifact_type=kind)


def publish_to_wandb(
    loggers: Sequence[Any],
    images: Sequence[Path],
    folder: Path | None = None,
    artifact_type: str = "intervention",
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Log each PNG of ``images`` under ``plots/<file stem>`` (and scalar ``metrics``) to every
    WandbLogger, and ``folder`` as an artifact of ``artifact_type``; other loggers are skipped."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        if metrics:
            logger.log_metrics(dict(metrics))
        # One key per figure (``plots/heatmap``, ...): W&B draws a list under one key as a
        # single panel and mis-draws it when the figures differ in size.
        for image in images:
            logger.log_image(f"plots/{Path(image).stem}", images=[str(image)])
        if folder is not None:
            name = f"{artifact_type}-{logger.experiment.id}"
            artifact = wandb.Artifact(name, type=artifact_type)
            artifact.add_dir(str(folder))
            logger.experiment.log_artifact(artifact)
