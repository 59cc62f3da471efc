"""The W2S data pipeline and the MWE configs end to end, on a tiny backbone with the real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import interventions.evaluation.sweep as sweep_mod
from datamodules.w2s import W2SDataModule
from interventions.core.backbone import load_backbone
from interventions.edits.artifact import load_intervention
from interventions.methods.w2s import (
    W2SModule,
    W2SOptions,
    build_w2s_data,
    frequency_smoothed_labels,
    load_predictor,
)
from interventions.reporting.run_folder import resolve_run

ROOT = Path(__file__).resolve().parents[1]


def _data(
    backbone: str,
    cache: Path,
    ood_variants=("sys_pos", "user_neg"),
    behavior="myopic-reward",
    **options,
):
    """The W2S data of a small behaviour: the item data module, then the pipeline function."""
    dm = W2SDataModule(
        behavior=behavior, backbone=backbone, max_examples=30, ood_variants=ood_variants
    )
    dm.setup()
    model, _ = load_backbone(backbone)
    opts = W2SOptions(sweep_cache_dir=str(cache), l2s_steps=50, **options)
    return build_w2s_data(model, dm.items, dm.collator, backbone, opts, dm.cache_tags()), dm


@pytest.fixture(scope="module")
def caa_data(tiny_backbone_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("sweeps")
    data, dm = _data(tiny_backbone_dir, cache, top_k=2)
    return data, dm, cache


def test_w2s_pipeline_builds_consistent_labels_and_splits(caa_data):
    data, dm, _ = caa_data
    train = data.tables["train"]
    steer = train["steerability"]  # [12, 3]
    assert steer.shape == (12, 3) and not steer.isnan().any()
    assert data.fixed_layer == int(steer.mean(0).argmax())
    labels = frequency_smoothed_labels(steer, 2)
    assert data.label_layers == sorted(set(labels.tolist()))
    decoded = torch.tensor(data.label_layers)[train["label"]]
    assert torch.equal(decoded, labels)
    assert data.test_names == dm.test_names == ["base", "sys_pos", "user_neg"]
    for name in data.test_names:
        d = data.tables[f"test/{name}"]
        assert d["embedding"].shape == (15, 384)
        torch.testing.assert_close(d["embedding"].norm(dim=1), torch.ones(15))
        swept = ~d["steerability"][0].isnan()
        # OOD sets are swept at least at the fixed layer and every label layer
        assert swept[data.fixed_layer] and swept[data.label_layers].all()
    # variants change the prompt, so their embeddings differ from base for the same items
    assert not torch.allclose(
        data.tables["test/base"]["embedding"], data.tables["test/sys_pos"]["embedding"]
    )
    # the data module serves item indices into these tables, one test loader per test set
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"index"} and sorted(batch["index"].tolist()) == list(range(12))
    assert len(dm.test_dataloader()) == 3


def test_w2s_pipeline_reuses_the_sweep_cache(caa_data, tiny_backbone_dir, monkeypatch):
    data, dm, cache = caa_data
    calls = []
    real = sweep_mod.sweep_example
    monkeypatch.setattr(
        sweep_mod, "sweep_example", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again, _ = _data(tiny_backbone_dir, cache, top_k=1)  # another K: same sweeps
    assert calls == []
    assert torch.equal(again.tables["train"]["steerability"], data.tables["train"]["steerability"])
    # other multipliers: recomputed, never reused
    _data(tiny_backbone_dir, cache, multipliers=(-1.0, 0.0, 1.0), ood_variants=())
    assert len(calls) == 30


def test_l2s_pipeline(tiny_backbone_dir, tmp_path):
    data, _ = _data(tiny_backbone_dir, tmp_path, steering="l2s", l2s_context_layers=(0, 1))
    assert data.summary["l2s_context_layer"] in (0, 1)
    assert set(data.summary["l2s_context_mse"]) == {0, 1}
    assert data.tables["test/base"]["steerability"].shape == (15, 3)


def test_bad_input(tiny_backbone_dir, tmp_path):
    with pytest.raises(ValueError, match="steering must be"):
        W2SModule(steering="pca")
    with pytest.raises(ValueError, match="Unknown OOD variant 'sys_up'"):
        W2SDataModule(ood_variants=("sys_up",))
    with pytest.raises(ValueError, match="top_k"):
        W2SModule(top_k=0)
    with pytest.raises(ValueError, match="myopic-reward"):  # the message lists what exists
        W2SDataModule(behavior="no-such-behaviour", backbone=tiny_backbone_dir).setup()


def _cli(config: str, backbone: str, run: Path, *extra: str):
    from interventions.cli import build_cli

    cli = build_cli(
        [
            "--config", str(ROOT / config),
            f"--model.backbone={backbone}",
            f"--trainer.default_root_dir={run}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--data.max_examples=30", "--data.behavior=corrigible-neutral-HHH",
            *extra,
        ],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


def test_caa_sweep_config(tiny_backbone_dir, tmp_path):
    cli = _cli(
        "configs/mwe/caa_sweep.yaml",
        tiny_backbone_dir,
        tmp_path,
        f"--model.sweep_cache_dir={tmp_path / 'cache'}",
    )
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    assert metrics["num_train"] == 12 and metrics["num_test"] == 15
    per_layer = metrics["train/steerability_per_layer"]
    assert metrics["fixed_layer"] == max(range(3), key=per_layer.__getitem__)
    edit = load_intervention(resolve_run(tmp_path) / "intervention")
    torch.testing.assert_close(edit.params["resid_post"][:, 0], cli.model.vectors)
    assert (resolve_run(tmp_path) / "plots" / "steerability_per_layer.png").is_file()
    assert (resolve_run(tmp_path) / "plots" / "best_layers.png").is_file()


@pytest.mark.parametrize("steering", ["caa", "l2s"])
def test_w2s_configs_run_end_to_end(steering, tiny_backbone_dir, tmp_path):
    cli = _cli(
        f"configs/mwe/w2s_{steering}.yaml",
        tiny_backbone_dir,
        tmp_path,
        "--trainer.max_epochs=3",
        f"--model.sweep_cache_dir={tmp_path / 'cache'}",
        "--model.l2s_steps=50",
    )
    data = cli.model.data
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    assert set(metrics["results"]) == {"base", "sys_pos", "sys_neg", "user_pos", "user_neg", "val"}
    base = metrics["results"]["base"]
    test = data.tables["test/base"]
    assert base["fixed"]["steerability"] == pytest.approx(
        float(test["steerability"][:, data.fixed_layer].mean()), abs=1e-6
    )
    # the oracle is the per-example best layer: an upper bound of both
    assert base["oracle"]["steerability"] >= base["w2s"]["steerability"] - 1e-6
    assert base["oracle"]["steerability"] >= base["fixed"]["steerability"] - 1e-6
    loaded = load_predictor(resolve_run(tmp_path) / "w2s_predictor")
    assert torch.equal(
        loaded.predict_layer(test["embedding"]), cli.model.predict_layer(test["embedding"]).cpu()
    )
    assert loaded.encoder_config["encoder"] == "minilm"
    for plot in ("steerability_per_layer", "best_layers", "fixed_vs_w2s"):
        assert (resolve_run(tmp_path) / "plots" / f"{plot}.png").is_file()
    assert (resolve_run(tmp_path) / "intervention").is_dir() == (steering == "caa")


def test_results_table_aggregation():
    from interventions.experiments.w2s_table import VARIANTS, aggregate, markdown

    def res(fixed, w2s):
        one = {
            "fixed": {"steerability": fixed, "prop_steerable": 0.5},
            "w2s": {"steerability": w2s, "prop_steerable": 1.0},
        }
        return {"results": {name: one for name in ("base", *VARIANTS)}}

    results = {
        ("a", "caa", 1): res(0.1, 0.3),
        ("a", "caa", 3): res(0.1, 0.5),
        ("b", "caa", 1): res(0.3, 0.2),
        ("b", "caa", 3): res(0.3, 0.4),
    }
    tables = aggregate(results, ["a", "b"], ["caa"], [1, 3])
    base = tables["base"]
    assert list(base) == ["CAA fixed layer", "CAA + W2S (Top-1)", "CAA + W2S (Top-3)"]
    assert base["CAA fixed layer"]["mean"] == pytest.approx((0.2, 0.5))
    assert base["CAA + W2S (Top-1)"]["mean"] == pytest.approx((0.25, 1.0))
    assert base["CAA + W2S (Top-3)"]["b"] == (0.4, 1.0)
    text = markdown(tables, ["a", "b"])
    assert "| **mean** | 0.200 / 0.50 | 0.250 / 1.00 | 0.450 / 1.00 |" in text
