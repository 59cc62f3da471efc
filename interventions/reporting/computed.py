"""The base of the methods that compute their result rather than train it: :class:`ComputedModule`.

CAA (mean differences), AUSteer (momentum statistics), A2A (attribution graphs and a grid
search) and the attribution scalars (patching scores) share one shape, written here once:

* ``fit`` is one pass over the training split with no optimiser: :meth:`reset_statistics` at the
  start of each training epoch, :meth:`accumulate` for every batch, :meth:`statistics_complete`
  at the end of the epoch;
* at the end of ``fit``, :meth:`finish` turns the statistics into the result (search, export,
  evaluation, files through :class:`~interventions.reporting.artifacts.RunArtifacts`) and returns
  the run's metrics, kept as ``self.results``.

Everything a method accumulates passes through these hooks, so this is the one place where the
statistics of several processes are combined before :meth:`finish`.

Several processes (``--trainer.strategy ddp`` / ``ddp_spawn``, any number of devices):

* no DistributedDataParallel wrapper: there is nothing to train (DDP refuses a module without
  trainable parameters), so :meth:`setup` tells the DDP strategy to keep the module as it is;
* the training batches are sharded by batch index (rank ``r`` of ``N`` accumulates batches
  ``r, r + N, ...``), not by Lightning's distributed sampler, which repeats examples to even out
  the ranks: every example counts exactly once;
* at the end of the epoch :meth:`reduce_statistics` sums the statistics over the ranks
  (keep sums and counts in float64: the result then equals one process's);
* :meth:`finish` runs on **every** rank, so its collectives stay matched; its heavy loops shard
  their work (:mod:`interventions.core.distributed`) and only global rank zero writes files
  (:class:`RunArtifacts`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy

from interventions.core.distributed import is_distributed, rank_and_world
from interventions.core.frozen import FrozenBackbone
from interventions.reporting.artifacts import RunArtifacts
from interventions.reporting.run_folder import run_folder

__all__ = ["ComputedModule"]


class ComputedModule(FrozenBackbone, LightningModule):
    """A frozen backbone plus statistics accumulated over the training data, finished once.

    Subclasses implement :meth:`reset_statistics`, :meth:`accumulate` and :meth:`finish`, and
    may override :meth:`statistics_complete` and :meth:`has_statistics`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.results: dict[str, Any] = {}
        self._fit_started = time.perf_counter()

    # ------------------------------------------------------------------ to implement
    def reset_statistics(self) -> None:
        """Start an empty pass (called at the start of every training epoch)."""
        raise NotImplementedError(f"{type(self).__name__} must implement reset_statistics()")

    def accumulate(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Add one training batch to the statistics."""
        raise NotImplementedError(f"{type(self).__name__} must implement accumulate()")

    def reduce_statistics(self) -> None:
        """Sum the statistics of every rank into each rank's (only called with more than one
        process, before :meth:`statistics_complete`); e.g.
        ``all_reduce_sum(self.total, self.count)``.  A rank may have had no batch at all, so
        allocate the sums with their full shape first."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement reduce_statistics() to run in several "
            "processes (add up the sums and counts of the ranks with all_reduce_sum)."
        )

    def statistics_complete(self) -> None:
        """The pass is over (end of the training epoch, statistics of every rank combined):
        derive what later steps read."""

    def has_statistics(self) -> bool:
        """Whether there is anything to finish (``False``: :meth:`finish` is skipped)."""
        return True

    def finish(self, datamodule: Any, artifacts: RunArtifacts) -> dict[str, Any]:
        """The result from the statistics: write the run's files, return its metrics."""
        raise NotImplementedError(f"{type(self).__name__} must implement finish()")

    # ------------------------------------------------------------------ the shared lifecycle
    def configure_optimizers(self) -> None:
        return None  # computed, not trained

    def run_dir(self) -> Path:
        """This fit's run folder (:func:`~interventions.reporting.run_folder.run_folder`)."""
        return run_folder(self.trainer)

    def fit_seconds(self) -> float:
        """Seconds since ``fit`` started."""
        return time.perf_counter() - self._fit_started

    def setup(self, stage: str) -> None:
        run_folder(self.trainer)  # chosen once, on every rank, before any file is written
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy):
            # Nothing to train, so nothing for DistributedDataParallel to synchronise (and it
            # refuses a module without trainable parameters): keep the module unwrapped.
            strategy._setup_model = _unwrapped  # type: ignore[method-assign]
        if is_distributed():
            # Shard by batch index in training_step instead of Lightning's distributed sampler,
            # which pads the ranks with repeated examples.
            self.trainer._accelerator_connector.use_distributed_sampler = False

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        self.reset_statistics()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        rank, world = rank_and_world()
        if batch_idx % world == rank:
            self.accumulate(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if is_distributed():
            self.reduce_statistics()
        self.statistics_complete()

    def end_of_fit(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not self.has_statistics():
            return
        # every rank: the finishing work shards its loops and keeps its collectives matched
        self.results = self.finish(datamodule, RunArtifacts.of(self))


def _unwrapped(model: Any) -> Any:
    return model
