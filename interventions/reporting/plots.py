"""Figures: learned scalars per site as heatmaps (paper Fig. 3), logits vs beta, and the W2S
figures (steerability per layer, best-layer histogram, fixed layer vs W2S bars).

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


def steerability_per_layer(
    mean: torch.Tensor | dict[str, torch.Tensor],
    fixed_layer: int | None,
    title: str = "",
    path: str | Path | None = None,
    std: torch.Tensor | dict[str, torch.Tensor] | None = None,
    label: str = "CAA",
) -> Figure:
    """Mean steerability against the steering layer (W2S paper, Supp. Figs. 14-15).

    Args:
        mean: ``[L]`` mean steerability per layer, or ``name -> [L]`` for several curves (e.g.
            ``{"CAA": ..., "L2S": ...}``).
        fixed_layer: the fixed-layer baseline, marked with a dashed vertical line (``None``: no
            mark).
        title: figure title.
        path: where to save the PNG.
        std: ``[L]`` standard deviation drawn as a +/- band, or ``name -> [L]`` matching ``mean``.
        label: legend entry when ``mean`` is a single curve.
    """
    curves = mean if isinstance(mean, dict) else {label: mean}
    bands = std if isinstance(std, dict) else ({label: std} if std is not None else {})
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        y = values.detach().float().cpu()
        x = range(len(y))
        (line,) = ax.plot(x, y.numpy(), "o-", ms=3, label=name)
        band = bands.get(name)
        if band is not None:
            s = band.detach().float().cpu()
            ax.fill_between(x, (y - s).numpy(), (y + s).numpy(), color=line.get_color(), alpha=0.2)
    if fixed_layer is not None:
        ax.axvline(fixed_layer, color="black", ls="--", lw=1, label=f"fixed layer {fixed_layer}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("steering layer")
    ax.set_ylabel("mean steerability")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def best_layer_histogram(
    best_layers: torch.Tensor,
    num_layers: int,
    fixed_layer: int | None = None,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """How often each layer is an example's best (or predicted) steering layer (W2S Fig. 1).

    Args:
        best_layers: ``[N]`` layer index per example.
        num_layers: number of layers of the backbone (the x axis runs over all of them).
        fixed_layer: the fixed-layer baseline, marked with a dashed vertical line.
        title: figure title.
        path: where to save the PNG.
    """
    layers = best_layers.detach().long().reshape(-1).cpu()
    counts = torch.bincount(layers, minlength=num_layers)[:num_layers]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(num_layers), counts.numpy(), color="tab:blue")
    if fixed_layer is not None:
        ax.axvline(fixed_layer, color="black", ls="--", lw=1, label=f"fixed layer {fixed_layer}")
        ax.legend()
    ax.set_xlabel("layer")
    ax.set_ylabel("number of examples")
    ax.set_xlim(-0.5, num_layers - 0.5)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def fixed_vs_w2s(
    rows: dict[str, dict[str, float]],
    metric: str = "steerability",
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Grouped bars: one group per behaviour, one bar per method (W2S paper Figs. 3-4).

    Args:
        rows: ``behaviour -> {method -> value}``, e.g.
            ``{"myopic-reward": {"CAA fixed": 0.3, "CAA+W2S": 0.5}}``; a method missing from a
            behaviour leaves a gap.
        metric: the y-axis label (``steerability``, ``prop_steerable``, ...).
        title: figure title.
        path: where to save the PNG.
    """
    behaviours = list(rows)
    methods = list(dict.fromkeys(m for values in rows.values() for m in values))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(behaviours) * max(1, len(methods)) / 2), 4))
    for i, method in enumerate(methods):
        xs = [b + (i - (len(methods) - 1) / 2) * width for b in range(len(behaviours))]
        ys = [rows[name].get(method, float("nan")) for name in behaviours]
        ax.bar(xs, ys, width=width, label=method)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(behaviours)), behaviours, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def unit_scores(
    scores: torch.Tensor, title: str = "", path: str | Path | None = None, site: str = ""
) -> Figure:
    """Discriminative score of every atomic unit: a heatmap of layers x units (AUSteer Fig. 11).

    Args:
        scores: ``[L, W]`` score per layer and unit (dimension of ``site``).
        title: figure title.
        path: where to save the PNG.
        site: site name for the axis label.
    """
    values = scores.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(10, 0.25 * values.shape[0] + 1.5))
    im = ax.imshow(values.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel(f"unit ({site} dimension)" if site else "unit")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="discriminative score s")
    return _save(fig, path)


def accuracy_grid(
    accuracy: torch.Tensor,
    ks: Sequence[int],
    alphas: Sequence[float],
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Validation accuracy over the (alpha, k) search grid (AUSteer Fig. 10).

    Args:
        accuracy: ``[len(ks), len(alphas)]`` (NaN where a setting was skipped).
        ks: the k values (rows).
        alphas: the alpha values (columns).
    """
    values = accuracy.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(alphas), 1 + 0.45 * len(ks)))
    im = ax.imshow(values.numpy(), aspect="auto", cmap="magma", origin="lower")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("alpha")
    ax.set_ylabel("k (steered units)")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not torch.isnan(values[i, j]):
                ax.text(
                    j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white"
                )
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="validation accuracy")
    return _save(fig, path)


def layer_scores_vs_grid(
    scores: dict[str, torch.Tensor],
    accuracy: torch.Tensor,
    vanilla: float,
    title: str = "",
    path: str | Path | None = None,
    multipliers: Sequence[float] | None = None,
) -> Figure:
    """A2A: each method's layer scores (scaled to [0, 1]) above the grid-search accuracy per layer.

    Args:
        scores: method name -> ``[L]`` layer scores.
        accuracy: ``[L]`` or ``[L, M]`` steered accuracy per layer (and multiplier) of the grid
            search; every multiplier is drawn as one line.
        vanilla: the unsteered accuracy (a dashed line).
        title: figure title.
        path: where to save the PNG.
        multipliers: the multiplier of each column of ``accuracy`` (legend labels).
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, values in scores.items():
        v = values.detach().double().cpu()
        span = float(v.max() - v.min())
        scaled = (v - v.min()) / span if span > 0 else torch.zeros_like(v)
        top.plot(range(len(v)), scaled.numpy(), "o-", ms=3, label=name)
    top.set_ylabel("layer score (min-max scaled)")
    top.legend(fontsize=7, ncol=3)
    acc = accuracy.detach().double().cpu()
    acc = acc[:, None] if acc.dim() == 1 else acc
    for j in range(acc.shape[1]):
        label = f"λ = {multipliers[j]:g}" if multipliers is not None else f"multiplier #{j}"
        bottom.plot(range(acc.shape[0]), acc[:, j].numpy(), "o-", ms=3, label=label)
    bottom.axhline(vanilla, color="black", ls="--", lw=1, label="unsteered")
    bottom.set_xlabel("steering layer")
    bottom.set_ylabel("behaviour accuracy")
    bottom.legend(fontsize=7)
    if title:
        top.set_title(title)
    return _save(fig, path)


def graph_edges(graph, top_n: int = 40, title: str = "", path: str | Path | None = None) -> Figure:
    """The ``top_n`` edges of an :class:`~interventions.methods.eap.eap_ig.AttributionGraph` with the largest
    ``|score|``, drawn between nodes placed by layer (x) and component (y; heads, then the MLP).
    Red edges raise the logit difference, blue ones lower it; width grows with ``|score|``."""
    fig, ax = plt.subplots(figsize=(10, 5))
    layer_of = dict(zip(graph.nodes, graph.node_layers))
    num_layers = max(graph.node_layers)
    heads = max((int(n.split(".h")[1]) for n in graph.nodes if ".h" in n), default=0) + 1

    def place(node: str) -> tuple[float, float]:
        if node == "input":
            return -1.0, heads / 2
        if node == "logits":
            return float(num_layers), heads / 2
        layer = layer_of[node]
        if node.startswith("m"):
            return layer + 0.5, float(heads)
        return float(layer), float(node.split(".h")[1])

    def reader(input_name: str) -> str:
        if input_name == "logits" or input_name.startswith("m"):
            return input_name
        base = input_name.split("<")[0]
        if ".kv" in base or "." not in base:  # shared input: draw it at the block
            return f"{base.split('.')[0]}.h0"
        return base

    edges = graph.edges(sort=True)[:top_n]
    biggest = max((abs(e.score) for e in edges), default=1.0) or 1.0
    for e in edges:
        (x0, y0), (x1, y1) = place(e.upstream), place(reader(e.input))
        ax.plot(
            [x0, x1],
            [y0, y1],
            color="tab:red" if e.score > 0 else "tab:blue",
            lw=0.5 + 3.5 * abs(e.score) / biggest,
            alpha=0.7,
        )
    used = {e.upstream for e in edges} | {reader(e.input) for e in edges}
    for node in used:
        x, y = place(node)
        ax.plot(x, y, "ko", ms=3)
        if node in ("input", "logits") or node.startswith("m"):
            ax.annotate(node, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("layer (MLPs at +0.5)")
    ax.set_ylabel("head (top row: MLP)")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def method_heatmaps(
    values: dict[str, dict[str, torch.Tensor]],
    tokens: Sequence[str],
    layer_labels: Sequence[int],
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Side-by-side heatmaps of several methods' per-point values (activation scaling Fig. 9).

    Columns = methods (in the order of ``values``), rows = sites; each panel has layers on the y
    axis, token positions (labelled with ``tokens``) on the x axis and its own symmetric colour
    scale (the methods' scales differ by orders of magnitude).

    Args:
        values: ``method -> site -> [layers, positions]``; every method must have the same sites.
        tokens: tick labels of the position axis.
        layer_labels: layer index of each row.
        title: figure title.
        path: where to save the PNG.
    """
    methods = list(values)
    sites = list(next(iter(values.values()))) if methods else []
    width = max(3.0, 0.3 * len(tokens) + 1.5)
    fig, axes = plt.subplots(
        len(sites), len(methods), figsize=(width * len(methods), 5.5 * len(sites)), squeeze=False
    )
    for j, method in enumerate(methods):
        for i, site in enumerate(sites):
            ax = axes[i][j]
            v = values[method][site].detach().float().cpu()
            bound = float(v.abs().max()) or 1.0
            image = ax.imshow(v.numpy(), aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
            labels = (
                list(tokens) if v.shape[1] == len(tokens) else [str(p) for p in range(v.shape[1])]
            )
            ax.set_xticks(
                range(v.shape[1]), [repr(t)[1:-1] for t in labels], rotation=90, fontsize=6
            )
            step = max(1, len(layer_labels) // 15)
            ax.set_yticks(range(0, len(layer_labels), step), list(layer_labels)[::step], fontsize=6)
            ax.set_title(f"{method}: {site}", fontsize=9)
            if j == 0:
                ax.set_ylabel("layer")
            fig.colorbar(image, ax=ax, shrink=0.6)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
