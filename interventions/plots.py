"""Figures: learned scalars per site as heatmaps (paper Fig. 3) and logits vs beta.

Every function returns a matplotlib Figure and, given ``path``, saves it as PNG.  The Agg backend
is used, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def site_heatmaps(
    values: dict[str, torch.Tensor],
    tokens: Sequence[str],
    layer_labels: Sequence[int],
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """One heatmap per site: rows = layers (x heads), columns = token positions.

    Args:
        values: ``site -> [layers, positions]`` or ``[layers, positions, units]`` (heads become
            extra rows, labelled ``layer.head``).
        tokens: tick labels for the position axis (the decoded tokens of an example prompt); when there
            is one column only, it is labelled with the last token.
        layer_labels: layer index of each row.
        title: figure title.
        path: where to save the PNG.
    """
    sites = list(values)
    fig, axes = plt.subplots(
        1, len(sites), figsize=(max(4.0, 0.45 * len(tokens)) * len(sites), 7), squeeze=False
    )
    for ax, site in zip(axes[0], sites, strict=True):
        v = values[site].detach().float().cpu()
        if v.dim() == 3:
            units = v.shape[2]
            rows = [f"{layer}.{u}" for layer in layer_labels for u in range(units)]
            v = v.permute(0, 2, 1).reshape(-1, v.shape[1])
        else:
            rows = [str(layer) for layer in layer_labels]
        bound = float(v.abs().max()) or 1.0
        image = ax.imshow(v.numpy(), aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
        labels = list(tokens) if v.shape[1] == len(tokens) else list(tokens[-v.shape[1] :])
        ax.set_xticks(range(v.shape[1]), [repr(t)[1:-1] for t in labels], rotation=90, fontsize=7)
        step = max(1, len(rows) // 30)
        ax.set_yticks(range(0, len(rows), step), rows[::step], fontsize=7)
        ax.set_xlabel("token position")
        ax.set_ylabel("layer" if len(rows) == len(layer_labels) else "layer.head")
        ax.set_title(site)
        fig.colorbar(image, ax=ax, shrink=0.6)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def logits_vs_beta(curve: dict[str, list[float]], title: str = "", path=None) -> Figure:
    """Mean logit of the correct and wrong answer token, and their difference, against beta."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(curve["beta"], curve["correct"], "o-", color="tab:red", label="correct token")
    left.plot(curve["beta"], curve["wrong"], "o-", color="tab:blue", label="wrong token")
    left.set_xlabel("beta")
    left.set_ylabel("mean logit")
    left.legend()
    right.plot(curve["beta"], curve["diff"], "o-", color="black")
    right.axhline(0.0, color="grey", lw=0.8)
    right.axvline(0.0, color="grey", lw=0.8)
    right.set_xlabel("beta")
    right.set_ylabel("mean logit difference (correct - wrong)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
