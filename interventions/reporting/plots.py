"""Figures: learned scalars per site as heatmaps (paper Fig. 3), logits vs beta, and the W2S
figures (steerability per layer, best-layer histogram, fixed layer vs W2S bars).

Every function returns a matplotlib Figure and, given ``path``, saves it as PNG.  The Agg backend
is used, so no display is needed.

The figures are meant to be read on their own (they go into the docs as they are):

* every colour bar says what its value is (and its unit);
* panels that show one quantity share one colour scale (one norm, one colour bar);
* :func:`color_scale` picks the colour map from the values: a sequential map
  (:data:`SEQUENTIAL_CMAP`) when they have one sign, a diverging one (:data:`DIVERGING_CMAP`)
  with limits symmetric about 0 (white = 0) when they have both;
* axes and titles say what is plotted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

DIVERGING_CMAP = "RdBu_r"
"""Colour map of values with both signs (red > 0, blue < 0, white = 0)."""

SEQUENTIAL_CMAP = "viridis"
"""Colour map of values with one sign (``viridis_r`` for values <= 0, so that the colour grows
with the magnitude either way)."""

SITE_TITLES = {
    "resid_post": "resid_post: layer output (residual stream)",
    "attn_out": "attn_out: attention block output",
    "mlp_out": "mlp_out: MLP block output",
    "attn_z": "attn_z: per-head attention output",
    "mlp_act": "mlp_act: MLP hidden activation",
}
"""Panel title of each site: its name and what it carries."""

HEATMAP_VALUE_LABELS = {
    "activscalar": "learned scalar α (unitless; the edit is h · (1 + β α))",
    "steervec": "‖v‖: norm of the learned steering vector (activation units; edit h + β v)",
    "dynscalar": "scalar α = gᵀh / ‖h‖ on the example prompt (unitless; edit h · (1 + β α))",
}
"""Colour-bar label of :func:`site_heatmaps` for each edit kind's values (see
``interventions.methods.scaling.report.heatmap_values``)."""


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def color_scale(
    values: Sequence[torch.Tensor],
    signed: bool | None = None,
    from_zero: bool = True,
    limits: tuple[float, float] | None = None,
) -> tuple[str, Normalize]:
    """The colour map name and the norm of a figure whose panels show ``values``.

    One norm for all of them (pass it to every ``imshow`` of the figure and draw one colour bar).

    Args:
        values: the arrays of every panel (non-finite entries are ignored).
        signed: ``True``: diverging map, limits ``[-b, b]`` with ``b`` the largest ``|value|``;
            ``False``: sequential map; ``None``: diverging when the values have both signs (or are
            all 0), else sequential.
        from_zero: for one-sign values, start the scale at 0 (so the colour is proportional to
            the magnitude); ``False``: span the values' range.
        limits: fixed ``(vmin, vmax)`` of a sequential scale (e.g. ``(0, 1)`` for an accuracy).
    """
    flat = [v.detach().float().reshape(-1).cpu() for v in values]
    finite = torch.cat(flat) if flat else torch.zeros(0)
    finite = finite[torch.isfinite(finite)]
    lo = float(finite.min()) if finite.numel() else 0.0
    hi = float(finite.max()) if finite.numel() else 0.0
    if signed is None:
        signed = limits is None and ((lo < 0.0 < hi) or lo == hi == 0.0)
    if signed:
        bound = max(abs(lo), abs(hi)) or 1.0
        return DIVERGING_CMAP, Normalize(vmin=-bound, vmax=bound)
    if limits is not None:
        return SEQUENTIAL_CMAP, Normalize(vmin=limits[0], vmax=limits[1])
    if hi <= 0.0:  # one sign, <= 0
        vmin, vmax = lo, (0.0 if from_zero else hi)
        vmin = vmin if vmin < vmax else vmax - 1.0
        return f"{SEQUENTIAL_CMAP}_r", Normalize(vmin=vmin, vmax=vmax)
    vmin = 0.0 if from_zero else lo
    vmax = hi if hi > vmin else vmin + 1.0
    return SEQUENTIAL_CMAP, Normalize(vmin=vmin, vmax=vmax)


def _position_labels(tokens: Sequence[str], columns: int) -> list[str]:
    """Tick labels of ``columns`` positions: the tokens (the last ``columns`` when there are
    more, e.g. one column = the last token), or the position numbers when too few tokens."""
    if len(tokens) >= columns:
        return [repr(t)[1:-1] for t in list(tokens)[len(tokens) - columns :]]
    return [str(p) for p in range(columns)]


def _panel(v: torch.Tensor, layer_labels: Sequence[int]) -> tuple[torch.Tensor, list[str]]:
    """``[rows, positions]`` values of one site and the row labels (``layer`` or
    ``layer.head`` when ``v`` is ``[layers, positions, units]``)."""
    v = v.detach().float().cpu()
    if v.dim() == 3:
        units = v.shape[2]
        rows = [f"{layer}.{u}" for layer in layer_labels for u in range(units)]
        return v.permute(0, 2, 1).reshape(-1, v.shape[1]), rows
    return v, [str(layer) for layer in layer_labels]


def site_heatmaps(
    values: dict[str, torch.Tensor],
    tokens: Sequence[str],
    layer_labels: Sequence[int],
    title: str = "",
    path: str | Path | None = None,
    value_label: str | None = None,
) -> Figure:
    """One heatmap per site: rows = layers (x heads), columns = token positions; all panels on one
    colour scale (:func:`color_scale`) with one labelled colour bar.

    Args:
        values: ``site -> [layers, positions]`` or ``[layers, positions, units]`` (heads become
            extra rows, labelled ``layer.head``).
        tokens: tick labels for the position axis (the decoded tokens of an example prompt); when there
            is one column only, it is labelled with the last token.
        layer_labels: layer index of each row.
        title: figure title.
        path: where to save the PNG.
        value_label: what the values are, for the colour bar (see
            :data:`HEATMAP_VALUE_LABELS`); ``None``: ActivScalar's learned scalars.
    """
    sites = list(values)
    panels = [_panel(values[site], layer_labels) for site in sites]
    cmap, norm = color_scale([v for v, _ in panels])
    columns = max(v.shape[1] for v, _ in panels)
    rows = max(len(r) for _, r in panels)
    width = max(3.5, 0.32 * columns + 1.5)
    height = min(9.0, max(3.5, 0.16 * rows + 2.2))
    fig, axes = plt.subplots(
        1,
        len(sites),
        figsize=(width * len(sites) + 1.5, height),
        squeeze=False,
        layout="constrained",
    )
    images = []
    for ax, site, (v, row_labels) in zip(axes[0], sites, panels, strict=True):
        images.append(
            ax.imshow(v.numpy(), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        )
        ax.set_xticks(
            range(v.shape[1]), _position_labels(tokens, v.shape[1]), rotation=90, fontsize=7
        )
        step = max(1, len(row_labels) // 30)
        ax.set_yticks(range(0, len(row_labels), step), row_labels[::step], fontsize=7)
        ax.set_xlabel("prompt token (position)")
        ax.set_ylabel("layer" if len(row_labels) == len(layer_labels) else "layer.head")
        ax.set_title(SITE_TITLES.get(site, site), fontsize=9)
    fig.colorbar(
        images[0],
        ax=axes[0].tolist(),
        shrink=0.9,
        label=value_label or HEATMAP_VALUE_LABELS["activscalar"],
    )
    fig.suptitle(title or "Intervention values per layer and prompt token")
    return _save(fig, path)


def logits_vs_beta(curve: dict[str, list[float]], title: str = "", path=None) -> Figure:
    """Mean logit of the correct and wrong answer token (left), and their difference (right),
    against the edit strength beta (beta = 0: the unedited model)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    beta_label = "β (edit strength; 0 = unedited model)"
    left.plot(curve["beta"], curve["correct"], "o-", color="tab:red", label="correct answer token")
    left.plot(curve["beta"], curve["wrong"], "o-", color="tab:blue", label="wrong answer token")
    left.axvline(0.0, color="grey", lw=0.8)
    left.set_xlabel(beta_label)
    left.set_ylabel("mean logit (over the prompts)")
    left.set_title("Answer-token logits", fontsize=10)
    left.legend(fontsize=8)
    right.plot(curve["beta"], curve["diff"], "o-", color="black")
    right.axhline(0.0, color="grey", lw=0.8)
    right.axvline(0.0, color="grey", lw=0.8)
    right.set_xlabel(beta_label)
    right.set_ylabel("mean logit difference (correct − wrong)")
    right.set_title("Logit difference (< 0: the wrong answer wins)", fontsize=10)
    fig.suptitle(title or "Answer logits against the edit strength β")
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
    cmap, norm = color_scale([values], from_zero=False)  # s is a fraction: one sign
    fig, ax = plt.subplots(figsize=(10, 0.25 * values.shape[0] + 1.5), layout="constrained")
    im = ax.imshow(values.numpy(), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_xlabel(f"unit ({site} dimension)" if site else "unit (dimension)")
    ax.set_ylabel("layer")
    ax.set_title(
        title or f"Discriminative score of each atomic unit{f' of {site}' if site else ''}"
    )
    fig.colorbar(
        im, ax=ax, label="discriminative score s = max(r_pos, r_neg)\n(fraction of pairs, 0..1)"
    )
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
    cmap, norm = color_scale([values], limits=(0.0, 1.0))
    fig, ax = plt.subplots(
        figsize=(2.5 + 0.7 * len(alphas), 1.5 + 0.45 * len(ks)), layout="constrained"
    )
    im = ax.imshow(values.numpy(), aspect="auto", cmap=cmap, norm=norm, origin="lower")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("α (steering strength)")
    ax.set_ylabel("k (steered units)")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not torch.isnan(values[i, j]):
                light = norm(float(values[i, j])) > 0.6  # viridis is light at the top
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if light else "white",
                )
    ax.set_title(title or "Validation accuracy over the (α, k) search grid")
    fig.colorbar(im, ax=ax, label="validation accuracy (fraction correct, 0..1)")
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
    ax.legend(
        handles=[
            Line2D([], [], color="tab:red", lw=2, label="raises the logit difference"),
            Line2D([], [], color="tab:blue", lw=2, label="lowers the logit difference"),
        ],
        fontsize=7,
        title="edge score (width ∝ |score|)",
        title_fontsize=7,
    )
    ax.set_title(title or f"The {len(edges)} strongest edges of the attribution graph")
    return _save(fig, path)


def method_heatmaps(
    values: dict[str, dict[str, torch.Tensor]],
    tokens: Sequence[str],
    layer_labels: Sequence[int],
    title: str = "",
    path: str | Path | None = None,
    value_label: str = "activation scalar α",
) -> Figure:
    """Side-by-side heatmaps of several methods' per-point values (activation scaling Fig. 9).

    Columns = methods (in the order of ``values``), rows = sites; each panel has layers on the y
    axis and token positions (labelled with ``tokens``) on the x axis.  The panels of one method
    share one colour scale (:func:`color_scale`) and one colour bar below its column; the methods
    get a scale each, since their values differ by orders of magnitude (one figure-wide scale would
    leave all but the largest method blank).

    Args:
        values: ``method -> site -> [layers, positions]``; every method must have the same sites.
        tokens: tick labels of the position axis.
        layer_labels: layer index of each row.
        title: figure title.
        path: where to save the PNG.
        value_label: what the values are; each colour bar reads ``"<method>: <value_label>"``.
    """
    methods = list(values)
    sites = list(next(iter(values.values()))) if methods else []
    width = max(3.0, 0.3 * len(tokens) + 1.5)
    fig, axes = plt.subplots(
        len(sites),
        len(methods),
        figsize=(width * len(methods), 5.5 * len(sites) + 1.0),
        squeeze=False,
        layout="constrained",
    )
    for j, method in enumerate(methods):
        column = [values[method][site].detach().float().cpu() for site in sites]
        cmap, norm = color_scale(column)
        images = []
        for i, (site, v) in enumerate(zip(sites, column, strict=True)):
            ax = axes[i][j]
            images.append(
                ax.imshow(v.numpy(), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
            )
            ax.set_xticks(
                range(v.shape[1]), _position_labels(tokens, v.shape[1]), rotation=90, fontsize=6
            )
            step = max(1, len(layer_labels) // 15)
            ax.set_yticks(range(0, len(layer_labels), step), list(layer_labels)[::step], fontsize=6)
            ax.set_title(f"{method}: {SITE_TITLES.get(site, site)}", fontsize=8)
            if j == 0:
                ax.set_ylabel("layer")
            if i == len(sites) - 1:
                ax.set_xlabel("prompt token (position)")
        fig.colorbar(
            images[0],
            ax=axes[:, j].tolist(),
            location="bottom",
            shrink=0.9,
            label=f"{method}: {value_label}",
        )
    fig.suptitle(title or "Per-point values of each method (one colour scale per method)")
    return _save(fig, path)
