"""tools/docs_figures.py: small docs PNGs regenerated from a finished run folder (no training)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_model

from interventions.core.sites import model_dims
from interventions.edits import ActivScalar, DynScalar, SteerVec
from interventions.edits.artifact import save_intervention
from interventions.reporting.run_folder import point_latest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "docs_figures.py"


@pytest.fixture(scope="module")
def docs_figures():
    spec = importlib.util.spec_from_file_location("docs_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CURVE = {
    "beta": [-2.0, -1.0, 0.0, 1.0, 2.0],
    "correct": [1.0, 2.0, 4.0, 4.5, 4.4],
    "wrong": [3.0, 2.5, 1.0, 0.9, 1.1],
    "diff": [-2.0, -0.5, 3.0, 3.6, 3.3],
}


def fake_run(root: Path, edit, backbone="tiny-llama", config: dict | None = None) -> Path:
    """``root/runs/ioi/<kind>/version_0`` with what a finished fit leaves: metrics.json, the
    exported edit, plots/logits_vs_beta.json, config.yaml; and the ``latest`` link."""
    run = root / "runs" / "ioi" / edit.kind / "version_0"
    (run / "plots").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"flip_rate": 0.5}}))
    (run / "plots" / "logits_vs_beta.json").write_text(json.dumps(CURVE))
    (run / "config.yaml").write_text(yaml.safe_dump(config or {"model": {}}))
    save_intervention(edit, run / "intervention", backbone=backbone)
    point_latest(run)
    return run


def filled(edit, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in edit.params.values():
            p.copy_(torch.randn(p.shape, generator=g))
    return edit


@pytest.fixture(scope="module")
def dims():
    return model_dims(tiny_model("llama"))


@pytest.mark.parametrize("kind", [ActivScalar, SteerVec])
def test_writes_small_pngs_from_a_run_folder(docs_figures, tmp_path, dims, kind):
    edit = filled(kind(dims, sites=["attn_out", "mlp_out", "attn_z"], num_positions=6))
    fake_run(tmp_path, edit)
    out = tmp_path / "docs" / "assets"
    latest = tmp_path / "runs" / "ioi" / edit.kind / "latest"
    paths = docs_figures.docs_figures(latest, out, tokens="positions")
    assert [p.name for p in paths] == [
        f"ioi_{edit.kind}_heatmap.png",
        f"ioi_{edit.kind}_logits_vs_beta.png",
    ]
    for path in paths:
        assert path.parent == out
        assert path.read_bytes()[:4] == b"\x89PNG"
        assert 1000 < path.stat().st_size < 150 * 1024


def test_size_limit_lowers_the_resolution(docs_figures, tmp_path, dims):
    fake_run(tmp_path, filled(ActivScalar(dims, sites=["attn_out"], num_positions=6)))
    big = docs_figures.docs_figures(tmp_path / "runs/ioi/activscalar", tmp_path / "a", dpi=100)
    small = docs_figures.docs_figures(
        tmp_path / "runs/ioi/activscalar", tmp_path / "b", dpi=100, max_kb=20, tokens="positions"
    )
    for a, b in zip(big, small, strict=True):
        assert b.stat().st_size < min(a.stat().st_size, 20 * 1024)


def test_tokens_come_from_the_runs_data_module(
    docs_figures, tmp_path, tiny_backbone_dir, monkeypatch
):
    """With ``tokens="auto"`` the heatmap's position axis is labelled with the example prompt's
    tokens of the data module config.yaml names (built with the run's backbone)."""
    from datamodules import IOIDataModule
    from interventions.core.backbone import load_tokenizer

    dm = IOIDataModule(backbone=tiny_backbone_dir, num_train=4, num_val=2, num_test=2)
    edit = filled(ActivScalar(model_dims(tiny_model("llama")), sites=["mlp_out"], num_positions=15))
    config = {
        "model": {"init_args": {"backbone": tiny_backbone_dir}},
        "data": {
            "class_path": "datamodules.IOIDataModule",
            "init_args": {"num_train": 4, "num_val": 2, "num_test": 2},
        },
    }
    run = fake_run(tmp_path, edit, backbone=tiny_backbone_dir, config=config)
    seen = {}
    original = docs_figures.plots.site_heatmaps

    def spy(values, tokens, *args, **kwargs):
        seen["tokens"] = list(tokens)
        return original(values, tokens, *args, **kwargs)

    monkeypatch.setattr(docs_figures.plots, "site_heatmaps", spy)
    docs_figures.docs_figures(run, tmp_path / "out", name="ioi")
    tokenizer = load_tokenizer(tiny_backbone_dir)
    expected = [tokenizer.decode([i]) for i in tokenizer(dm.example_prompt)["input_ids"]]
    assert seen["tokens"] == expected
    assert (tmp_path / "out" / "ioi_heatmap.png").is_file()


def test_dynscalar_run_gets_the_curve_only(docs_figures, tmp_path, dims):
    fake_run(tmp_path, filled(DynScalar(dims, sites=["attn_out"])))
    paths = docs_figures.docs_figures(
        tmp_path / "runs/ioi/dynscalar/latest", tmp_path / "out", tokens="positions"
    )
    assert [p.name for p in paths] == ["ioi_dynscalar_logits_vs_beta.png"]


def test_command_line(tmp_path, dims):
    fake_run(tmp_path, filled(ActivScalar(dims, sites=["attn_out"], num_positions=6)))
    out = tmp_path / "assets"
    ok = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "runs/ioi/activscalar/latest"),
         "--out", str(out), "--tokens", "positions"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "ioi_activscalar_heatmap.png" in ok.stdout and "KB" in ok.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "ioi_activscalar_heatmap.png",
        "ioi_activscalar_logits_vs_beta.png",
    ]
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nothing"), "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1 and "finished run folder" in bad.stderr
