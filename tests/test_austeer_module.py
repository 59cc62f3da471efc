"""The AUSteer LightningModule and its configs end to end on a tiny backbone with the real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interventions.edits.artifact import load_intervention
from interventions.evaluation.multiple_choice import evaluate_accuracy
from interventions.methods.austeer.units import STAT_SITES
from interventions.reporting.run_folder import resolve_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "commonsense").glob("*.yaml")
)


def _fit(config: str, backbone: str, run: Path, *extra: str, callbacks=()):
    from interventions.cli import build_cli

    cli = build_cli(
        [
            "--config", str(ROOT / config),
            f"--model.backbone={backbone}",
            f"--trainer.default_root_dir={run}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            "--data.pool_size=8", "--data.num_val=4", "--data.max_test=4", "--data.batch_size=4",
            "--model.k_grid=[1,3]", "--model.alpha_grid=[1.0,10.0]",
            "--model.caa_layers=[0,2]", "--model.caa_multipliers=[1.0,4.0]",
            f"--model.cache_dir={run / 'stats_cache'}",
            *extra,
        ],
        run=False,
    )  # fmt: skip
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


@pytest.mark.parametrize("config", CONFIGS)
def test_every_commonsense_config_runs(config, tiny_backbone_dir, tmp_path):
    cli = _fit(config, tiny_backbone_dir, tmp_path)
    module, dm = cli.model, cli.datamodule
    assert module.stats.n == 8  # one pass over the pool
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    grid = 4  # 2 x 2 settings
    assert len(metrics["search"]) == grid
    best = max(row["accuracy"] for row in metrics["search"])
    assert metrics["val/accuracy"] == best
    # the exported edit reloads and gives the same test accuracy
    edit = load_intervention(resolve_run(tmp_path) / "intervention")
    beta = json.loads((resolve_run(tmp_path) / "intervention" / "intervention.json").read_text())[
        "extra"
    ]["beta"]
    again = evaluate_accuracy(module.model, dm.test_dataloader(), "mean", edit, beta)
    assert again == pytest.approx(metrics["test/accuracy"])
    assert (resolve_run(tmp_path) / "plots" / "unit_scores.png").is_file()
    assert (resolve_run(tmp_path) / "checkpoints" / "last.ckpt").is_file()
    # the saved ranking: best first, scores = max(r_pos, r_neg) of the statistics
    ranking = json.loads((resolve_run(tmp_path) / "ranking.json").read_text())
    site = module.hparams.site
    scores = module.stats.scores[site]
    assert ranking[0]["score"] == pytest.approx(float(scores.max()))
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
    for r in ranking[:5]:
        assert r["site"] == site
        assert r["score"] == pytest.approx(max(r["r_pos"], r["r_neg"]))
        assert r["score"] == pytest.approx(float(scores[r["layer"], r["dim"]]))


@pytest.mark.parametrize("method", ["random", "actdiff", "fixed_vector", "fixed_strength"])
def test_ablations_build_their_edits(method, tiny_backbone_dir, tmp_path):
    cli = _fit(
        "configs/commonsense/austeer_ffn_copa.yaml",
        tiny_backbone_dir,
        tmp_path,
        f"--model.method={method}",
        "--model.k=3",
        "--model.alpha=5.0",
    )
    module = cli.model
    kind = "aushift" if method == "fixed_vector" else "auscale"
    assert module.edit.kind == kind and module.edit.num_steered() <= 3
    assert module.hparams.site == "mlp_out"  # AUSteer-FFN steers the MLP output
    values = module.edit.params["mlp_out"][:, 0]
    if method == "fixed_strength":
        nonzero = values[values != 0].abs()
        assert torch.allclose(nonzero, nonzero[0].expand_as(nonzero))
    if method in ("austeer", "actdiff", "fixed_strength", "fixed_vector"):
        assert module.edit.num_steered() >= 1


def test_trainer_test_logs_the_accuracies_of_the_run(tiny_backbone_dir, tmp_path):
    """``trainer.test`` (test_step, sharing the prompt prefix between the vanilla and the
    steered pass) logs the same accuracies as the end-of-fit evaluation wrote."""
    cli = _fit("configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path)
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    (logged,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert logged["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert logged["test/accuracy_vanilla"] == pytest.approx(metrics["test/accuracy_vanilla"])


def test_checkpoint_restores_the_chosen_edit(tiny_backbone_dir, tmp_path):
    from interventions.methods.austeer.module import AUSteerModule

    cli = _fit("configs/commonsense/austeer_head_boolq.yaml", tiny_backbone_dir, tmp_path)
    loaded = AUSteerModule.load_from_checkpoint(resolve_run(tmp_path) / "checkpoints" / "last.ckpt")
    assert loaded.choice == cli.model.choice
    assert torch.equal(loaded.edit.params["attn_z"], cli.model.edit.params["attn_z"])


def test_bad_input(tiny_backbone_dir):
    from interventions.methods.austeer.module import AUSteerModule

    with pytest.raises(ValueError, match="larger than the number of atomic units"):
        AUSteerModule(backbone=tiny_backbone_dir, site="mlp_act", k=10_000)
    with pytest.raises(ValueError, match="method must be one of"):
        AUSteerModule(backbone=tiny_backbone_dir, method="magic")
    with pytest.raises(ValueError, match="zero_tol must be >= 0"):
        AUSteerModule(backbone=tiny_backbone_dir, zero_tol=-1.0)
    with pytest.raises(ValueError, match="Unknown site 'mlp'"):
        AUSteerModule(backbone=tiny_backbone_dir, site="mlp")


def test_results_table_driver(tiny_backbone_dir, tmp_path):
    from interventions.experiments.austeer_table import ROWS, main

    table = main(
        [
            "--tasks", "copa", "--out", str(tmp_path), "--",
            f"--model.backbone={tiny_backbone_dir}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--data.pool_size=6", "--data.num_val=4",
            "--data.max_test=4", "--model.k_grid=[1]", "--model.alpha_grid=[2.0]",
            "--model.caa_layers=[1]", "--model.caa_multipliers=[1.0]",
            f"--model.cache_dir={tmp_path / 'stats_cache'}",
        ]
    )  # fmt: skip
    assert set(table) == {"vanilla", *(name for name, _, _ in ROWS)}
    assert table["AUSteer-FFN"]["copa"]["steered"] <= 1
    assert table["CAA"]["copa"]["steered"] == 32  # one resid_post vector of the tiny model
    assert "| AUSteer-Head |" in (tmp_path / "table.md").read_text()
    # a second call trains nothing (every metrics.json exists) and gives the same table
    assert main(["--tasks", "copa", "--out", str(tmp_path)]) == table
    # head and FFN rows only, in the instruction protocol: folders and a table of their own
    instruction = main(
        [
            "--tasks", "copa", "--methods", "head", "ffn", "--template", "instruction",
            "--out", str(tmp_path), "--",
            f"--model.backbone={tiny_backbone_dir}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--data.pool_size=6", "--data.num_val=4",
            "--data.max_test=4", "--model.k_grid=[1]", "--model.alpha_grid=[2.0]",
            f"--model.cache_dir={tmp_path / 'stats_cache'}",
        ]
    )  # fmt: skip
    assert set(instruction) == {"vanilla", "AUSteer-Head", "AUSteer-FFN"}
    assert (tmp_path / "austeer_ffn_copa_instruction").is_dir()
    assert "| AUSteer-FFN |" in (tmp_path / "table_instruction.md").read_text()
    assert main(["--tasks", "copa", "--out", str(tmp_path)]) == table  # the cloze table is kept
    run = resolve_run(tmp_path / "austeer_head_copa_instruction")
    hparams = (run / "config.yaml").read_text()
    assert "template: instruction" in hparams
    with pytest.raises(SystemExit):
        main(["--tasks", "copa", "--out", str(tmp_path), "--", "--data.template=instruction"])


def test_statistics_cache_serves_a_later_run(tiny_backbone_dir, tmp_path):
    """One pass collects every standard site; a run with another site and method loads the same
    statistics from the cache instead of reading the pool again, and gets the same values."""
    first = _fit("configs/commonsense/austeer_head_copa.yaml", tiny_backbone_dir, tmp_path / "a")
    cache = tmp_path / "a" / "stats_cache"
    assert len(list(cache.glob("copa-*.pt"))) == 1
    second = _fit(
        "configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path / "b",
        f"--model.cache_dir={cache}", "--model.method=actdiff",
    )  # fmt: skip
    assert second.model._stats_from_cache
    assert second.trainer.global_step == 0  # no batch of the pool was read
    for site in STAT_SITES:  # every site of the table
        assert torch.equal(first.model.stats.count_pos[site], second.model.stats.count_pos[site])
        assert torch.equal(first.model.stats.sum_diff[site], second.model.stats.sum_diff[site])
    # another pool (another seed draws other wrong answers / items) is not served from it
    third = _fit(
        "configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path / "c",
        f"--model.cache_dir={cache}", "--data.seed=1",
    )  # fmt: skip
    assert not third.model._stats_from_cache
    assert len(list(cache.glob("copa-*.pt"))) == 2
    # the pairs alone do not decide the statistics: the tolerance, the token they are read at and
    # the template are in the key too (steering positions are not: they change no statistic)
    positions = _fit(
        "configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path / "d",
        f"--model.cache_dir={cache}", "--model.positions=last",
    )  # fmt: skip
    assert positions.model._stats_from_cache
    for n, extra in enumerate(
        ["--model.zero_tol=0.0", "--data.statistic_token=last", "--data.template=instruction"]
    ):
        other = _fit(
            "configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path / f"e{n}",
            f"--model.cache_dir={cache}", extra,
        )  # fmt: skip
        assert not other.model._stats_from_cache, extra
        assert len(list(cache.glob("copa-*.pt"))) == 3 + n


def test_answer_token_statistics_differ_from_last_token(tiny_backbone_dir, tmp_path):
    """COPA's cloze texts end in the same "." : the statistic is read at the answer's last
    word by default, which gives other counts than the final token."""
    answer = _fit("configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path / "a")
    last = _fit(
        "configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path / "b",
        "--data.statistic_token=last",
    )  # fmt: skip
    assert answer.datamodule.statistic_token == "answer"
    batch = next(iter(answer.datamodule.train_dataloader()))
    assert bool((batch["pos_read_offset"] >= 1).all())  # at least the shared "."
    assert not torch.equal(
        answer.model.stats.sum_diff["mlp_out"], last.model.stats.sum_diff["mlp_out"]
    )


@pytest.mark.parametrize("site", ["attn_out", "mlp_act", "resid_post"])
def test_every_site_of_the_table_runs(site, tiny_backbone_dir, tmp_path):
    """Every site of the sites table is an AU site (mlp_act: the FFN variant on the down_proj
    input), with the default all-position steering."""
    cli = _fit(
        "configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path,
        f"--model.site={site}", "--model.k=2", "--model.alpha=5.0",
    )  # fmt: skip
    module = cli.model
    assert module.hparams.site == site and list(module.edit.params) == [site]
    assert module.edit.positions == "all"
    width = module.dims.width(site)
    assert module.edit.params[site].shape[-1] == width
    assert 1 <= module.edit.num_steered() <= 2
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    assert metrics["site"] == site


def test_defaults_steer_every_position(tiny_backbone_dir):
    from interventions.core.sites import SITES
    from interventions.methods.austeer.module import AUSteerModule

    module = AUSteerModule(backbone=tiny_backbone_dir)
    assert module.hparams.positions == "all" and module.hparams.zero_tol == 1e-3
    assert module.stat_sites == list(SITES)
    for config in CONFIGS:
        text = (ROOT / config).read_text()
        if "austeer_" in config:
            assert "positions: all" in text, config
        if "austeer_ffn" in config:
            assert "site: mlp_out" in text, config
