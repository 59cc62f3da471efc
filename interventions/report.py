"""What happens at the end of ``fit`` for the three-term trainer: evaluate, export, plot, log.

* metrics on the train, val and test splits -> ``<run>/metrics.json`` and the logger
  (``final/<split>/<metric>``);
* the edit -> ``<run>/intervention/`` (safetensors + JSON; a W&B artifact when logging to W&B);
* plots -> ``<run>/plots/heatmap.png`` (learned scalars per site over layers x tokens of an
  example prompt) and ``<run>/plots/logits_vs_beta.png``; also logged as W&B images;
* steered text -> ``<run>/samples.md``: greedy continuations of a few test prompts at beta = +1,
  0 and -1 (a W&B table ``samples`` too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from interventions.edits import ActivScalar, DynScalar, PointEdit, SteerVec
from interventions.export import save_intervention
from interventions.generate import samples_markdown, steered_continuations
from interventions.hooks import record
from interventions.plots import logits_vs_beta, site_heatmaps

if TYPE_CHECKING:
    from interventions.scaling import InterventionModule


@torch.no_grad()
def heatmap_values(edit: PointEdit, model, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``site -> [layers, positions(, heads)]`` what to draw for ``edit`` on one prompt.

    ActivScalar: the learned scalars; SteerVec: the norm of each learned vector; DynScalar: the
    scalars its probes assign to the clean activations of the prompt.
    """
    if isinstance(edit, ActivScalar):
        return {
            s: p.detach().squeeze(-1) if p.shape[-1] == 1 else p.detach()
            for s, p in edit.params.items()
        }
    if isinstance(edit, SteerVec):
        return {s: p.detach().norm(dim=-1) for s, p in edit.params.items()}
    if isinstance(edit, DynScalar):
        with record(model, edit.points()) as acts:
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        out = {}
        for site in edit.sites:
            rows = [edit.scalars(layer, site, acts[(layer, site)])[0] for layer in edit.layers]
            v = torch.stack(rows)  # [layers, seq, units]
            out[site] = v.squeeze(-1) if v.shape[-1] == 1 else v
        return out
    raise TypeError(f"No heatmap for {type(edit).__name__}.")


def finish_run(module: InterventionModule) -> dict[str, dict[str, float]]:
    """Evaluate every split, export the edit, draw and log the plots; returns the metrics."""
    trainer = module.trainer
    run = module.run_dir()
    dm = trainer.datamodule
    if dm is None:  # loaders passed to fit() directly: no splits to evaluate or plot
        folder = save_intervention(
            module.edit, run / "intervention", backbone=module.hparams.backbone
        )
        rank_zero_info(f"exported the intervention to {folder} (no data module: no final metrics)")
        return {}
    fit_seconds = time.perf_counter() - getattr(module, "_fit_started", time.perf_counter())
    # the test split's metrics and the logits-vs-beta curve come from one pass
    test, curve = module.evaluate_with_curve(dm.test_dataloader(), module.beta_grid)
    metrics = {
        "train": module.evaluate(dm.train_dataloader()),
        "val": module.evaluate(dm.val_dataloader()),
        "test": test,
    }
    flat = {f"final/{split}/{k}": v for split, m in metrics.items() for k, v in m.items()}
    flat["final/fit_wall_time_s"] = fit_seconds
    metrics["fit_wall_time_s"] = fit_seconds
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for logger in trainer.loggers:
        logger.log_metrics(flat, step=trainer.global_step)
    rank_zero_info("final metrics: " + json.dumps(metrics))

    folder = save_intervention(
        module.edit,
        run / "intervention",
        backbone=module.hparams.backbone,
        extra=dict(metrics=metrics, hparams=dict(module.hparams)),
    )

    tokenizer = module.tokenizer
    example = getattr(dm, "example_prompt", None) or dm.train_dataloader().dataset[0].prompt
    ids = torch.tensor([tokenizer(example)["input_ids"]], device=module.device)
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    name = f"{type(module.edit).__name__} on {module.hparams.backbone}"
    heat = site_heatmaps(
        heatmap_values(module.edit, module.model, ids),
        tokens,
        module.edit.layers,
        title=name,
        path=run / "plots" / "heatmap.png",
    )
    (run / "plots" / "logits_vs_beta.json").write_text(json.dumps(curve, indent=2) + "\n")
    lines = logits_vs_beta(curve, title=name, path=run / "plots" / "logits_vs_beta.png")
    import matplotlib.pyplot as plt

    plt.close(heat)
    plt.close(lines)

    publish_to_wandb(
        trainer.loggers,
        [run / "plots" / "heatmap.png", run / "plots" / "logits_vs_beta.png"],
        folder,
    )
    write_samples(module, [ex.prompt for ex in dm.test_examples], run)
    rank_zero_info(f"exported the intervention to {folder}")
    return metrics


def write_samples(module: InterventionModule, prompts: Sequence[str], run: Path) -> Path | None:
    """``<run>/samples.md`` (and a W&B table): greedy continuations of the first
    ``module.hparams.num_samples`` prompts at beta = +1, 0, -1."""
    count = int(module.hparams.get("num_samples", 0) or 0)
    if count <= 0 or not prompts:
        return None
    samples = steered_continuations(
        module.model,
        module.tokenizer,
        module.edit,
        list(prompts[:count]),
        betas=(1.0, 0.0, -1.0),
        max_new_tokens=int(module.hparams.get("sample_tokens", 12)),
    )
    title = f"{type(module.edit).__name__} on {module.hparams.backbone}: steered samples"
    path = run / "samples.md"
    path.write_text(samples_markdown(samples, title))
    rows = [[s["prompt"], beta, text] for s in samples for beta, text in s["continuations"].items()]
    for logger in module.trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table("samples", columns=["prompt", "beta", "continuation"], data=rows)
    rank_zero_info(f"steered samples in {path}")
    return path


def publish_to_wandb(
    loggers: Sequence[Any],
    images: Sequence[Path],
    folder: Path | None = None,
    artifact_type: str = "intervention",
    metrics: dict[str, float] | None = None,
) -> None:
    """Log PNG ``images`` (and scalar ``metrics``) to every WandbLogger, and ``folder`` as an
    artifact of ``artifact_type``; other loggers are skipped."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        if metrics:
            logger.log_metrics(metrics)
        if images:
            logger.log_image("plots", images=[str(p) for p in images])
        if folder is not None:
            name = f"{artifact_type}-{logger.experiment.id}"
            artifact = wandb.Artifact(name, type=artifact_type)
            artifact.add_dir(str(folder))
            logger.experiment.log_artifact(artifact)
