"""Every config family under Lightning's DDP: 2 CPU processes (gloo), tiny backbone.

Each test runs ``train.py fit`` with ``--trainer.strategy ddp --trainer.accelerator cpu
--trainer.devices 2`` in a subprocess (Lightning re-launches the script for rank 1), checks
that it exits 0 and writes metrics.json, the export and the plots, and compares its numbers with
the same config in one process:

* computed statistics (CAA vectors, AUSteer momentum statistics, attribution scores, the A2A
  graph and grid, the W2S sweep and labels): equal (float64 sums; compared to 1e-6, or 1e-5
  where a float32 forward pass on a different number of threads enters);
* trained edits: one process with batch 2b against two processes with batch b over the same
  examples (one full-batch step per epoch, so both see the same gradient): equal to 1e-5.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interventions.edits import load_intervention
from interventions.reporting.artifacts import numbers
from interventions.reporting.run_folder import resolve_run

ROOT = Path(__file__).resolve().parents[1]
DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def _fit_subprocess(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    env.pop("MASTER_PORT", None)
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _fit_in_process(args: list[str]) -> None:
    from interventions.cli import build_cli

    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule)


def _run_both(config: str, tmp_path: Path, common: list[str], one: list[str], two: list[str]):
    """(metrics of 1 process, metrics of 2 processes, run folders)."""
    runs = {}
    for name in ("one", "two"):
        run = tmp_path / name
        base = ["--config", str(ROOT / config), f"--trainer.default_root_dir={run}", *QUIET]
        if name == "one":
            _fit_in_process([*base, *common, *one])
        else:
            _fit_subprocess([*base, *common, *two, *DDP], tmp_path)
        assert (resolve_run(run) / "metrics.json").is_file(), f"{name}: no metrics.json"
        assert list((resolve_run(run) / "plots").glob("*.png")), f"{name}: no plots"
        runs[name] = run
    one_m = json.loads((resolve_run(runs["one"]) / "metrics.json").read_text())
    two_m = json.loads((resolve_run(runs["two"]) / "metrics.json").read_text())
    return one_m, two_m, runs


def _assert_numbers_close(a: dict, b: dict, tol: float, skip: tuple[str, ...] = ()) -> None:
    skip = ("seconds", "time", *skip)
    fa, fb = numbers(a), numbers(b)
    keys = [k for k in fa if not any(s in k for s in skip)]
    assert keys, "nothing to compare"
    assert set(keys) <= set(fb)
    bad = [
        (k, fa[k], fb[k])
        for k in keys
        if not (math.isnan(fa[k]) and math.isnan(fb[k]))
        and not math.isclose(fa[k], fb[k], rel_tol=tol, abs_tol=tol)
    ]
    assert not bad, bad[:10]


def _lists_close(a, b, tol: float) -> None:
    assert torch.allclose(
        torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
        atol=tol, rtol=tol, equal_nan=True,
    )  # fmt: skip


def _same_export(one: Path, two: Path, tol: float) -> None:
    a, b = load_intervention(one), load_intervention(two)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=tol, rtol=tol), name


@pytest.mark.parametrize("config", ["configs/ioi/activscalar.yaml", "configs/ccc/activscalar.yaml"])
def test_scaling_trains_under_ddp_like_one_process(config, tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}",
        "--trainer.max_epochs=2", "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1", "--model.num_samples=1",
        "--model.sample_tokens=2",
        "--data.num_train=8", "--data.num_val=4", "--data.num_test=6",
    ]  # fmt: skip
    one, two, runs = _run_both(
        config, tmp_path, common, ["--data.batch_size=8"], ["--data.batch_size=4"]
    )
    # the same two full-batch steps: the same edit and the same final metrics (all prompts)
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-5
    )
    _assert_numbers_close(one["test"], two["test"], 1e-4)
    _assert_numbers_close(one["train"], two["train"], 1e-4)
    assert (resolve_run(runs["two"]) / "samples.md").is_file()
    assert (resolve_run(runs["two"]) / "checkpoints" / "last.ckpt").is_file()


def test_caa_sweep_under_ddp_equals_one_process(tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}",
        "--data.max_examples=21", "--data.behavior=corrigible-neutral-HHH",
        "--model.sweep_chunk_size=2",
    ]  # fmt: skip
    one, two, runs = _run_both(
        "configs/mwe/caa_sweep.yaml", tmp_path, common,
        [f"--model.sweep_cache_dir={tmp_path / 'c1'}"],
        [f"--model.sweep_cache_dir={tmp_path / 'c2'}"],
    )  # fmt: skip
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-6
    )
    _assert_numbers_close(one, two, 1e-6)
    _lists_close(one["test/steerability_per_layer"], two["test/steerability_per_layer"], 1e-6)
    # both ranks wrote their share of the sweep cache: the same chunk files as one process
    assert sorted(p.name for p in (tmp_path / "c1").rglob("*.safetensors")) == sorted(
        p.name for p in (tmp_path / "c2").rglob("*.safetensors")
    )


def test_w2s_pipeline_under_ddp_equals_one_process(tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}",
        "--data.max_examples=20", "--data.behavior=corrigible-neutral-HHH",
        "--data.ood_variants=[sys_pos]", "--trainer.max_epochs=2",
        "--model.encoder=lm_internal", "--model.sweep_chunk_size=2",
    ]  # fmt: skip
    one, two, runs = _run_both(
        "configs/mwe/w2s_caa.yaml", tmp_path, common,
        [f"--model.sweep_cache_dir={tmp_path / 'c1'}"],
        [f"--model.sweep_cache_dir={tmp_path / 'c2'}"],
    )  # fmt: skip
    s1, s2 = one["summary"], two["summary"]
    for key in ("fixed_layer", "label_layers", "top1_layers", "label_counts", "num_examples"):
        assert s1[key] == s2[key], key
    _lists_close(s1["train_steerability_per_layer"], s2["train_steerability_per_layer"], 1e-6)
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-6
    )
    assert (resolve_run(runs["two"]) / "w2s_predictor" / "w2s_predictor.json").is_file()
    assert set(two["results"]) == set(one["results"])


@pytest.mark.parametrize(
    "config", ["configs/commonsense/austeer_ffn_boolq.yaml", "configs/commonsense/caa_copa.yaml"]
)
def test_commonsense_under_ddp_equals_one_process(config, tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}",
        "--data.pool_size=9", "--data.num_val=5", "--data.max_test=5", "--data.batch_size=2",
        "--model.k_grid=[1,3]", "--model.alpha_grid=[1.0,10.0]",
        "--model.caa_layers=[0,2]", "--model.caa_multipliers=[1.0,4.0]",
    ]  # fmt: skip
    one, two, runs = _run_both(
        config, tmp_path, common,
        [f"--model.cache_dir={tmp_path / 's1'}"], [f"--model.cache_dir={tmp_path / 's2'}"],
    )  # fmt: skip
    assert one["num_pairs"] == two["num_pairs"] == 9  # every pair exactly once
    assert one["choice"] == two["choice"]
    _assert_numbers_close(one, two, 1e-6)
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-6
    )
    # one writer of the statistics cache, holding all nine pairs
    (cache,) = list((tmp_path / "s2").glob("*.pt"))
    assert torch.load(cache, weights_only=True)["n"] == 9


def test_a2a_under_ddp_equals_one_process(tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}", "--model.steps=1", "--model.top_k=2",
        "--data.num_train=5", "--data.num_val=4", "--data.num_test=5", "--data.batch_size=2",
    ]  # fmt: skip
    one, two, _ = _run_both("configs/a2a/ioi.yaml", tmp_path, common, [], [])
    for name, scores in one["layer_scores"].items():
        _lists_close(scores, two["layer_scores"][name], 1e-6)
    _lists_close(one["test/accuracy"], two["test/accuracy"], 1e-9)
    _assert_numbers_close(one["ndcg"], two["ndcg"], 1e-6)


def test_attribution_under_ddp_equals_one_process(tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}",
        "--data.num_train=5", "--data.num_val=3", "--data.num_test=3", "--data.batch_size=2",
        "--model.beta_grid=[-4,-1,-0.25,0.25,1,4]",
    ]  # fmt: skip
    one, two, runs = _run_both("configs/attribution/ioi.yaml", tmp_path, common, [], [])
    assert one["num_train"] == two["num_train"] == 5
    assert one["beta"] == two["beta"]
    _assert_numbers_close(one["test"], two["test"], 1e-5)
    # float32 forwards on 1 vs 2 threads differ in the last bits: the normalised scores agree
    # to 1e-5 (near-zero scores are rounding noise of the patching difference)
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-5
    )


def test_ddp_spawn_runs_a_computed_method(tiny_backbone_dir, tmp_path):
    run = tmp_path / "spawn"
    _fit_subprocess(
        [
            "--config", str(ROOT / "configs/commonsense/caa_copa.yaml"),
            f"--trainer.default_root_dir={run}", *QUIET,
            f"--model.backbone={tiny_backbone_dir}",
            "--data.pool_size=6", "--data.num_val=3", "--data.max_test=3",
            "--data.batch_size=2", "--model.caa_layers=[0,2]", "--model.caa_multipliers=[1.0]",
            f"--model.cache_dir={tmp_path / 's'}",
            "--trainer.strategy=ddp_spawn", "--trainer.accelerator=cpu", "--trainer.devices=2",
        ],
        tmp_path,
    )  # fmt: skip
    metrics = json.loads((resolve_run(run) / "metrics.json").read_text())
    assert metrics["num_pairs"] == 6


# The file data modules (your own data, configs/files/): the same checks as the built-in sets.
def _example(name: str) -> str:
    return f"--data.init_args.path={ROOT / 'examples' / 'data' / name}"


def test_contrastive_file_trains_under_ddp_like_one_process(tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}", _example("capitals.jsonl"),
        "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1",
        "--data.init_args.num_train=8", "--data.init_args.num_val=2",
        "--data.init_args.num_test=2",
    ]  # fmt: skip
    one, two, runs = _run_both(
        "configs/files/contrastive.yaml", tmp_path, common,
        ["--data.init_args.batch_size=8"], ["--data.init_args.batch_size=4"],
    )  # fmt: skip
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-5
    )
    _assert_numbers_close(one["test"], two["test"], 1e-4)
    _assert_numbers_close(one["train"], two["train"], 1e-4)


def test_behavior_file_caa_under_ddp_equals_one_process(tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}", _example("caution_ab.jsonl"),
        "--model.sweep_chunk_size=2",
    ]  # fmt: skip
    one, two, runs = _run_both(
        "configs/files/behavior_caa.yaml", tmp_path, common,
        [f"--model.sweep_cache_dir={tmp_path / 'c1'}"],
        [f"--model.sweep_cache_dir={tmp_path / 'c2'}"],
    )  # fmt: skip
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-6
    )
    _assert_numbers_close(one, two, 1e-6)
    _lists_close(one["test/steerability_per_layer"], two["test/steerability_per_layer"], 1e-6)


def test_multiple_choice_file_austeer_under_ddp_equals_one_process(tiny_backbone_dir, tmp_path):
    common = [
        f"--model.backbone={tiny_backbone_dir}", _example("science_quiz.jsonl"),
        "--data.init_args.batch_size=2", "--model.k_grid=[1,3]", "--model.alpha_grid=[1.0,10.0]",
    ]  # fmt: skip
    one, two, runs = _run_both(
        "configs/files/multiple_choice_austeer.yaml", tmp_path, common,
        [f"--model.cache_dir={tmp_path / 's1'}"], [f"--model.cache_dir={tmp_path / 's2'}"],
    )  # fmt: skip
    assert one["num_pairs"] == two["num_pairs"] > 0  # every pair exactly once
    assert one["choice"] == two["choice"]
    _assert_numbers_close(one, two, 1e-6)
    _same_export(
        resolve_run(runs["one"]) / "intervention", resolve_run(runs["two"]) / "intervention", 1e-6
    )
