"""Attribution scalars from ``train.py fit``: :class:`AttributionScalarModule`.

One epoch accumulates the scores over the training split (:mod:`.scores`, no optimiser); at the
end of ``fit`` (:meth:`AttributionScalarModule.finish`) beta is searched on validation
(:mod:`.beta`), the test prompts are evaluated, the ActivScalar is exported (``alpha`` = the
normalised scores, the chosen beta in the JSON's ``extra.beta``) and ``scores.safetensors``,
``metrics.json`` and heatmaps are written.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from safetensors.torch import save_file

from interventions.core.backbone import DEFAULT_BACKBONE
from interventions.core.dispatch import DeviceMap, MaxMemory
from interventions.core.sites import model_dims
from interventions.edits import ActivScalar
from interventions.methods.attribution.beta import (
    DEFAULT_BETA_GRID,
    check_beta_grid,
    choose_beta,
    evaluate_edit,
    mean_flip_beta,
    sweep_betas,
)
from interventions.methods.attribution.scalars import ScoreAccumulator, scalar_edit, scores_to_alpha
from interventions.methods.attribution.scores import (
    METHODS,
    Method,
    attribution_layers,
    attribution_scores,
    check_attribution_sites,
    check_method,
)
from interventions.reporting import plots
from interventions.reporting.artifacts import RunArtifacts, numbers
from interventions.reporting.computed import ComputedModule
from interventions.reporting.run_folder import version_folder_of


class AttributionScalarModule(ComputedModule):
    """ActPatch / AttrPatch / DLA scores as ActivScalar values (paper Sec. 6.1, Fig. 9).

    ``fit`` is one epoch over the training split that accumulates the scores (no optimiser; use
    ``max_epochs: 1``).  At the end of ``fit`` the mean scores become an ActivScalar, beta is
    searched on the validation split, the test split is evaluated, and the run folder gets
    ``intervention/`` (the ActivScalar, the chosen beta in ``extra.beta``), ``scores.safetensors``
    (the raw mean scores, ``site -> [layers, positions]``), ``metrics.json`` and ``plots/``.

    Args:
        backbone: model name or path (linked to the data module's ``backbone``).
        method: ``actpatch``, ``attrpatch`` or ``dla``.
        sites: sites to score and scale (``resid_post``, ``attn_out``, ``mlp_out``): a list, or
            one site name; ``None`` = ``[attn_out, mlp_out]``.
        layers: layers to score; ``None`` = all.
        normalize: divide the scores by their largest ``|value|`` (else alpha = the raw scores,
            up to the sign convention).
        beta_grid: signed betas of the search (``None``: +-0.01, 0.02, 0.05, ..., 50, 100).
        patch_chunk_size: patched rows per forward call of ``actpatch``.
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
        method: Method = "actpatch",
        sites: list[str] | str | None = None,
        layers: list[int] | None = None,
        normalize: bool = True,
        beta_grid: list[float] | None = None,
        patch_chunk_size: int = 128,
        dtype: str = "float32",
        device_map: DeviceMap | None = None,
        max_memory: MaxMemory | None = None,
        offload_folder: str | None = None,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        check_method(method)
        self.sites = check_attribution_sites(sites or ["attn_out", "mlp_out"])
        self.beta_grid = check_beta_grid(beta_grid or DEFAULT_BETA_GRID)
        if patch_chunk_size < 1:
            raise ValueError(f"patch_chunk_size must be >= 1, got {patch_chunk_size}.")
        self.save_hyperparameters()
        model, _ = self.load_and_hold()  # outside the module tree: never in a checkpoint
        self.dims = model_dims(model)
        self.layers = attribution_layers(model, layers)
        self.acc = ScoreAccumulator()
        self.edit: ActivScalar | None = None
        self.beta: float = 1.0

    def setup(self, stage: str) -> None:
        super().setup(stage)
        run = self.run_dir()
        experiment = run.parent if version_folder_of(run) == run.resolve() else run
        name = experiment.name
        method = self.hparams.method
        if name in METHODS and name != method:
            raise ValueError(
                f"method={method!r} but the run folder {experiment} is named after "
                f"{name!r}: pass --trainer.default_root_dir={experiment.parent / method} "
                "so that runs of different methods do not overwrite each other."
            )

    def reset_statistics(self) -> None:
        self.acc = ScoreAccumulator()

    def reduce_statistics(self) -> None:
        self.acc.all_reduce()

    def accumulate(self, batch: dict[str, Any], batch_idx: int) -> None:
        scores = attribution_scores(
            self.model,
            batch,
            self.hparams.method,
            self.sites,
            self.layers,
            chunk_size=self.hparams.patch_chunk_size,
            progress=True,
        )
        self.acc.update(scores)
        self.log("train/num_examples", float(self.acc.count), prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["attribution_scores"] = self.acc.state_dict() if self.acc.count else None
        checkpoint["attribution_beta"] = self.beta

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("attribution_scores")
        if state is not None:
            self.acc = ScoreAccumulator()
            self.acc.load_state_dict(state)
            self.beta = float(checkpoint.get("attribution_beta", 1.0))
            self.edit = self.build_edit()

    def build_edit(self) -> ActivScalar:
        """The ActivScalar of the accumulated mean scores (normalised as configured)."""
        alpha, _ = scores_to_alpha(self.acc.mean(), self.hparams.method, self.hparams.normalize)
        return scalar_edit(self.dims, alpha, self.layers).to(self.device)

    def finish(self, datamodule: Any, artifacts: RunArtifacts) -> dict[str, Any]:
        return finish_attribution_run(self, datamodule, artifacts)


def finish_attribution_run(
    module: AttributionScalarModule, dm: Any, art: RunArtifacts
) -> dict[str, Any]:
    """Build the ActivScalar, search beta on validation, evaluate test, export, write metrics and
    plots (called at the end of ``fit``); returns the metrics."""
    h = module.hparams
    fit_seconds = module.fit_seconds()
    scores = module.acc.mean()
    alpha, scale = scores_to_alpha(scores, h.method, h.normalize)
    module.edit = scalar_edit(module.dims, alpha, module.layers).to(module.device)
    started = time.perf_counter()
    sweep = sweep_betas(module.model, module.edit, dm.val_dataloader(), module.beta_grid, True)
    beta, table = choose_beta(sweep, module.beta_grid)
    search_seconds = time.perf_counter() - started
    module.beta = beta
    test = evaluate_edit(module.model, module.edit, dm.test_dataloader(), beta)
    test_unit = evaluate_edit(module.model, module.edit, dm.test_dataloader(), 1.0)
    metrics: dict[str, Any] = {
        "method": h.method,
        "task": type(dm).__name__,
        "sites": module.sites,
        "num_train": module.acc.count,
        "num_positions": module.edit.num_positions,
        "normalize": h.normalize,
        "score_scale": scale,
        "beta": beta,
        "beta_mean_flip": mean_flip_beta(table),
        "val": sweep.at(beta),
        "test": test,
        "test_beta_1": test_unit,
        "fit_wall_time_s": round(fit_seconds, 1),
        "search_seconds": round(search_seconds, 1),
        "search": table,
    }
    scalars = numbers({"val": metrics["val"], "test": test}, "final/")
    scalars["final/beta"] = beta
    art.write_metrics(metrics, scalars)
    if art.writer:
        save_file(
            {site: v.contiguous() for site, v in scores.items()},
            str(art.path("scores.safetensors")),
            metadata={"method": h.method, "layers": json.dumps(module.layers)},
        )
    extra = {k: v for k, v in metrics.items() if k != "search"}
    folder = art.export(module.edit, h.backbone, extra=extra)

    tokenizer = module.tokenizer
    example = getattr(dm, "example_prompt", None)
    tokens = (
        [tokenizer.decode([i]) for i in tokenizer(example)["input_ids"]]
        if example is not None and tokenizer is not None
        else [str(p) for p in range(module.edit.num_positions)]
    )
    name = f"{h.method} scores as ActivScalar on {h.backbone} (beta* = {beta:g})"
    label = f"α = {h.method} score as an activation scalar (unitless; edit h · (1 + β α))"
    art.plot("heatmap", plots.site_heatmaps(alpha, tokens, module.layers, name, value_label=label))
    curve = sweep.curve()
    art.write_json("plots/logits_vs_beta.json", curve)
    lines = plots.logits_vs_beta(curve, title=f"{name}, validation")
    for ax in lines.axes:
        ax.set_xscale("symlog", linthresh=min(sweep.magnitudes))
    art.plot("logits_vs_beta", lines)
    art.publish()
    art.checkpoint()
    rank_zero_info(
        f"{h.method}: beta* = {beta:g}; test effectiveness {test['effectiveness']:.3f}, flip rate "
        f"{test['flip_rate']:.3f}; exported to {folder}"
    )
    return metrics
