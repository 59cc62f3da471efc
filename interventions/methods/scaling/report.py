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

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_info

from interventions.core.dispatch import input_device
from interventions.core.hooks import record
from interventions.edits import ActivScalar, DynScalar, PointEdit, SteerVec
from interventions.evaluation.generation import samples_markdown, steered_continuations
from interventions.reporting.artifacts import RunArtifacts, numbers
from interventions.reporting.plots import HEATMAP_VALUE_LABELS, logits_vs_beta, site_heatmaps

if TYPE_CHECKING:
    from interventions.methods.scaling.module import InterventionModule


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
    art = RunArtifacts.of(module)
    dm = module.trainer.datamodule
    if dm is None:  # loaders passed to fit() directly: no splits to evaluate or plot
        folder = art.export(module.edit, module.hparams.backbone)
        rank_zero_info(f"exported the intervention to {folder} (no data module: no final metrics)")
        return {}
    fit_seconds = time.perf_counter() - getattr(module, "_fit_started", time.perf_counter())
    # the test split's metrics and the logits-vs-beta curve come from one pass
    test, curve = module.evaluate_with_curve(dm.test_dataloader(), module.beta_grid)
    metrics = {
        "train": module.evaluate(dm.train_dataloader()),
        "val": module.evaluate(dm.val_dataloader()),
        "test": test,
        "fit_wall_time_s": fit_seconds,
    }
    metrics_path = art.write_metrics(metrics, numbers(metrics, "final/"))
    folder = art.export(
        module.edit,
        module.hparams.backbone,
        extra=dict(metrics=metrics, hparams=dict(module.hparams)),
    )
    tokenizer = module.tokenizer
    example = getattr(dm, "example_prompt", None) or dm.train_dataloader().dataset[0].prompt
    ids = torch.tensor([tokenizer(example)["input_ids"]], device=input_device(module.model))
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    name = f"{type(module.edit).__name__} on {module.hparams.backbone}"
    values = heatmap_values(module.edit, module.model, ids)
    label = HEATMAP_VALUE_LABELS.get(module.edit.kind)
    art.plot("heatmap", site_heatmaps(values, tokens, module.edit.layers, name, value_label=label))
    art.write_json("plots/logits_vs_beta.json", curve)
    art.plot("logits_vs_beta", logits_vs_beta(curve, title=name))
    art.publish()
    write_samples(module, [ex.prompt for ex in dm.test_examples], art)
    rank_zero_info(summary_text(metrics, art.run, folder, metrics_path))
    return metrics


def summary_text(metrics: dict, run: Path, export: Path, metrics_path: Path | None = None) -> str:
    """The end-of-fit summary a person reads: one row per split (flip rate, effectiveness,
    faithfulness), minimality, the fit time, the run folder and the export."""
    rows = [("split", "flip rate", "effectiveness", "faithfulness")]
    for split in ("train", "val", "test"):
        m = metrics.get(split) or {}
        rows.append(
            (
                split,
                f"{m.get('flip_rate', float('nan')):.3f}",
                f"{m.get('effectiveness', float('nan')):+.3f}",
                f"{m.get('faithfulness', float('nan')):+.3f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["", "Finished fit:"]
    for i, row in enumerate(rows):
        lines.append(
            "  "
            + "  ".join(
                c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))
            )
        )
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    test = metrics.get("test") or {}
    if "minimality" in test:
        lines.append(
            f"  minimality: {test['minimality']:.0f} of {test.get('num_parameters', 0):.0f} "
            "parameters non-negligible (|theta| >= 0.01)"
        )
    if "fit_wall_time_s" in metrics:
        lines.append(f"  fit time:   {metrics['fit_wall_time_s']:.0f} s")
    lines.append(f"  run folder: {run}")
    if metrics_path is not None:
        lines.append(f"  metrics:    {metrics_path}")
    lines.append(f"  export:     {export}  (load_intervention or python -m interventions generate)")
    return "\n".join(lines)


def write_samples(
    module: InterventionModule, prompts: Sequence[str], art: RunArtifacts
) -> Path | None:
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
    path = art.write_text("samples.md", samples_markdown(samples, title))
    rows = [[s["prompt"], beta, text] for s in samples for beta, text in s["continuations"].items()]
    art.table("samples", ["prompt", "beta", "continuation"], rows)
    rank_zero_info(f"steered samples in {path}")
    return path
