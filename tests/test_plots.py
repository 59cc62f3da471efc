"""The figures read on their own: labelled colour bars, one colour scale per quantity, a
sequential map for one-sign values and a diverging one centred at 0 for two-sign values, and
axes and titles that say what is plotted."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from interventions.reporting import plots
from interventions.reporting.plots import DIVERGING_CMAP, SEQUENTIAL_CMAP, color_scale

SEQUENTIAL = {SEQUENTIAL_CMAP, f"{SEQUENTIAL_CMAP}_r"}
TOKENS = ["Then", " Mary", " and", " John", " went", " to"]
LAYERS = [0, 1, 2, 3]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def colorbars(fig):
    """The colour bars of ``fig`` (matplotlib marks a colour bar's axes with ``_colorbar``)."""
    return [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def panels(fig):
    """The axes of ``fig`` that are not colour bars."""
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]


def images(fig):
    return [im for ax in panels(fig) for im in ax.images]


def site_values(sign: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """attn_out, mlp_out ``[layers, positions]`` and attn_z ``[layers, positions, heads]`` of
    one sign (``"+"``, ``"-"``) or both (``"+-"``), with different magnitudes per site."""
    g = torch.Generator().manual_seed(seed)
    values = {
        "attn_out": torch.randn(4, 6, generator=g),
        "mlp_out": 3.0 * torch.randn(4, 6, generator=g),
        "attn_z": 0.1 * torch.randn(4, 6, 3, generator=g),
    }
    if sign == "+":
        return {s: v.abs() for s, v in values.items()}
    if sign == "-":
        return {s: -v.abs() for s, v in values.items()}
    return values


def assert_readable_axes(fig):
    for ax in panels(fig):
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), ax
    assert fig.get_suptitle()


@pytest.mark.parametrize("sign", ["+-", "+", "-"])
def test_site_heatmaps_share_one_labelled_scale(sign):
    values = site_values(sign)
    fig = plots.site_heatmaps(values, TOKENS, LAYERS, title="ActivScalar on tiny")
    ims = images(fig)
    assert len(ims) == 3
    (bar,) = colorbars(fig)  # one colour bar for the three panels
    assert bar.ax.get_ylabel() == plots.HEATMAP_VALUE_LABELS["activscalar"]
    assert len({(im.norm.vmin, im.norm.vmax) for im in ims}) == 1
    assert len({im.cmap.name for im in ims}) == 1
    assert bar.mappable.norm.vmin == ims[0].norm.vmin and bar.mappable.norm.vmax == ims[0].norm.vmax
    norm, cmap = ims[0].norm, ims[0].cmap.name
    biggest = max(float(v.abs().max()) for v in values.values())
    if sign == "+-":
        assert cmap == DIVERGING_CMAP
        assert norm.vmin == -norm.vmax == pytest.approx(-biggest)
        assert norm(0.0) == pytest.approx(0.5)  # 0 is the centre (white)
    else:
        assert cmap in SEQUENTIAL
        assert (norm.vmin, norm.vmax) == (
            pytest.approx((0.0, biggest)) if sign == "+" else pytest.approx((-biggest, 0.0))
        )
        # the colour grows with the magnitude either way
        small, large = (0.1, 1.0) if sign == "+" else (-0.1, -1.0)
        assert cmap == (SEQUENTIAL_CMAP if sign == "+" else f"{SEQUENTIAL_CMAP}_r")
        assert norm(small) < norm(large) if sign == "+" else norm(small) > norm(large)
    assert_readable_axes(fig)
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles[0].startswith("attn_out") and "attention" in titles[0]
    assert [ax.get_ylabel() for ax in panels(fig)] == ["layer", "layer", "layer.head"]
    assert panels(fig)[0].get_xticklabels()[1].get_text() == " Mary"


def test_site_heatmaps_value_label_and_default_title(tmp_path):
    values = {"resid_post": torch.rand(4, 6)}
    label = plots.HEATMAP_VALUE_LABELS["steervec"]
    fig = plots.site_heatmaps(values, TOKENS, LAYERS, path=tmp_path / "h.png", value_label=label)
    (bar,) = colorbars(fig)
    assert bar.ax.get_ylabel() == label and "norm" in label
    assert images(fig)[0].cmap.name == SEQUENTIAL_CMAP
    assert fig.get_suptitle()
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_site_heatmaps_label_positions_without_tokens():
    fig = plots.site_heatmaps({"attn_out": torch.randn(4, 6)}, [], LAYERS)
    assert [t.get_text() for t in panels(fig)[0].get_xticklabels()] == list("012345")


def test_color_scale_rules():
    cmap, norm = color_scale([torch.tensor([-1.0, 3.0]), torch.tensor([0.5, float("nan")])])
    assert cmap == DIVERGING_CMAP and (norm.vmin, norm.vmax) == (-3.0, 3.0)
    cmap, norm = color_scale([torch.tensor([0.5, 2.0])])
    assert cmap == SEQUENTIAL_CMAP and (norm.vmin, norm.vmax) == (0.0, 2.0)
    cmap, norm = color_scale([torch.tensor([0.5, 2.0])], from_zero=False)
    assert (norm.vmin, norm.vmax) == (0.5, 2.0)
    cmap, norm = color_scale([torch.tensor([-0.5, -2.0])])
    assert cmap == f"{SEQUENTIAL_CMAP}_r" and (norm.vmin, norm.vmax) == (-2.0, 0.0)
    cmap, norm = color_scale([torch.zeros(3)])  # all 0 (e.g. a sparse edit): diverging, white
    assert cmap == DIVERGING_CMAP and norm(0.0) == pytest.approx(0.5)
    cmap, norm = color_scale([torch.tensor([0.2, 0.4])], limits=(0.0, 1.0))
    assert cmap == SEQUENTIAL_CMAP and (norm.vmin, norm.vmax) == (0.0, 1.0)
    cmap, norm = color_scale([torch.tensor([0.5, 2.0])], signed=True)
    assert cmap == DIVERGING_CMAP and (norm.vmin, norm.vmax) == (-2.0, 2.0)


def test_logits_vs_beta_says_what_is_plotted(tmp_path):
    curve = {
        "beta": [-1.0, 0.0, 1.0],
        "correct": [1.0, 2.0, 3.0],
        "wrong": [3.0, 2.0, 1.0],
        "diff": [-2.0, 0.0, 2.0],
    }
    fig = plots.logits_vs_beta(curve, path=tmp_path / "l.png")
    assert_readable_axes(fig)
    left, right = panels(fig)
    assert "β" in left.get_xlabel() and "logit" in left.get_ylabel()
    assert "correct" in right.get_ylabel() and "wrong" in right.get_ylabel()
    assert {t.get_text() for t in left.get_legend().get_texts()} == {
        "correct answer token",
        "wrong answer token",
    }
    assert not colorbars(fig)
    assert (tmp_path / "l.png").stat().st_size > 1000


def test_unit_scores_and_accuracy_grid_colour_bars():
    scores = torch.rand(5, 20) * 0.5 + 0.5
    fig = plots.unit_scores(scores, site="mlp_act")
    (bar,) = colorbars(fig)
    assert "discriminative score" in bar.ax.get_ylabel()
    (im,) = images(fig)
    assert im.cmap.name == SEQUENTIAL_CMAP
    assert (im.norm.vmin, im.norm.vmax) == pytest.approx((float(scores.min()), float(scores.max())))
    assert_axes = panels(fig)[0]
    assert assert_axes.get_title() and "mlp_act" in assert_axes.get_xlabel()

    accuracy = torch.tensor([[0.2, 0.5], [float("nan"), 0.9]])
    fig = plots.accuracy_grid(accuracy, ks=[1, 4], alphas=[0.5, 2.0])
    (bar,) = colorbars(fig)
    assert "accuracy" in bar.ax.get_ylabel()
    (im,) = images(fig)
    assert im.cmap.name == SEQUENTIAL_CMAP and (im.norm.vmin, im.norm.vmax) == (0.0, 1.0)
    ax = panels(fig)[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_method_heatmaps_one_scale_per_method():
    """Each method's panels (its sites) share a norm and a colour bar naming the method; the
    methods' scales are their own (their values differ by orders of magnitude)."""
    g = torch.Generator().manual_seed(0)
    values = {
        "ActPatch": {"attn_out": torch.randn(4, 6, generator=g), "mlp_out": torch.randn(4, 6)},
        "ActivScalar": {
            "attn_out": 100 * torch.rand(4, 6, generator=g),
            "mlp_out": 100 * torch.rand(4, 6),
        },
    }
    fig = plots.method_heatmaps(values, TOKENS, LAYERS, title="compare")
    bars = colorbars(fig)
    assert len(bars) == 2
    assert [b.ax.get_xlabel() for b in bars] == [
        "ActPatch: activation scalar α",
        "ActivScalar: activation scalar α",
    ]
    ims = images(fig)  # row-major: (attn_out, ActPatch), (attn_out, ActivScalar), ...
    by_method = {}
    for ax, im in zip(panels(fig), ims, strict=True):
        by_method.setdefault(ax.get_title().split(":")[0], []).append(im)
    for method, group in by_method.items():
        assert len({(im.norm.vmin, im.norm.vmax) for im in group}) == 1, method
    actpatch, activscalar = by_method["ActPatch"][0], by_method["ActivScalar"][0]
    assert actpatch.cmap.name == DIVERGING_CMAP and actpatch.norm.vmin == -actpatch.norm.vmax
    assert activscalar.cmap.name == SEQUENTIAL_CMAP and activscalar.norm.vmin == 0.0
    assert fig.get_suptitle()


def test_publish_to_wandb_logs_each_figure_under_its_own_key(tmp_path, monkeypatch, caplog):
    """Figures of different sizes go to ``plots/<stem>`` one by one (a list under one key is one
    W&B panel, drawn wrong when sizes differ: "Images sizes do not match")."""
    import logging

    from lightning.pytorch.loggers import WandbLogger

    from interventions.reporting.artifacts import publish_to_wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    images = []
    for name, size in (("heatmap", (4, 3)), ("logits_vs_beta", (6, 2))):
        fig = plt.figure(figsize=size)
        fig.savefig(tmp_path / f"{name}.png")
        plt.close(fig)
        images.append(tmp_path / f"{name}.png")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="plots-test")
    with caplog.at_level(logging.WARNING):
        publish_to_wandb([logger], images, metrics={"test/flip_rate": 0.5})
    logger.experiment.finish()
    media = list(tmp_path.glob("wandb/offline-run-*/files/media/images/plots/*.png"))
    assert sorted(p.name.rsplit("_", 2)[0] for p in media) == ["heatmap", "logits_vs_beta"]
    assert "sizes do not match" not in caplog.text
