"""GPU checks: run where a CUDA device exists, skipped with the reason elsewhere.

An edit on a GPU backbone equals the CPU result; ``load_intervention(device="cuda")`` steers a
GPU model; a ``bf16-mixed`` ActivScalar fit and the W2S pipeline run on the GPU (tiny backbone)
and write their files.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from lightning.pytorch import Callback

from interventions.core.hooks import attach, last_token_logits
from interventions.core.sites import model_dims
from interventions.edits import ActivScalar, load_intervention, save_intervention
from interventions.reporting.run_folder import resolve_run

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"
)


def _edit(model) -> ActivScalar:
    edit = ActivScalar(model_dims(model), sites=["attn_out", "mlp_out"], positions="last")
    with torch.no_grad():
        for p in edit.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return edit


def test_edit_on_gpu_equals_cpu():
    model = tiny_model("llama")
    edit = _edit(model)
    ids = torch.randint(
        0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1)
    )
    mask = torch.ones_like(ids)
    with attach(model, edit, beta=1.0):
        cpu = last_token_logits(model, ids, mask)
    gpu_model = model.to("cuda")
    with attach(gpu_model, edit.to("cuda"), beta=1.0):
        gpu = last_token_logits(gpu_model, ids.cuda(), mask.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4, rtol=1e-4)


def test_load_intervention_on_cuda_steers_a_gpu_model(tmp_path):
    model = tiny_model("llama")
    edit = _edit(model)
    save_intervention(edit, tmp_path / "edit", backbone="tiny")
    loaded = load_intervention(tmp_path / "edit", device="cuda")
    assert all(p.device.type == "cuda" for p in loaded.parameters())
    model = model.to("cuda")
    ids = torch.randint(0, model.config.vocab_size, (2, 5), device="cuda")
    mask = torch.ones_like(ids)
    plain = last_token_logits(model, ids, mask)
    with attach(model, loaded, beta=1.0):
        steered = last_token_logits(model, ids, mask)
    assert not torch.allclose(plain, steered)


class _Devices(Callback):
    """Where the module's parameters are during training (``on_train_end``) and, for a frozen
    backbone module, where its backbone is while :meth:`end_of_fit` runs."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        inner = getattr(pl_module, "end_of_fit", None)
        if inner is None:
            return

        def recorded() -> None:
            self.seen["end_of_fit"] = next(pl_module.model.parameters()).device.type
            inner()

        pl_module.end_of_fit = recorded

    def on_train_end(self, trainer, pl_module) -> None:
        self.seen["train"] = pl_module.device.type


def _fit(config: str, backbone: str, run, *extra: str):
    """Fit ``config`` on the GPU; returns the CLI and the devices seen (:class:`_Devices`)."""
    from pathlib import Path

    from interventions.cli import build_cli

    root = Path(__file__).resolve().parents[1]
    cli = build_cli(
        [
            "--config", str(root / config), f"--model.backbone={backbone}",
            f"--trainer.default_root_dir={run}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=gpu",
            "--trainer.devices=1", *extra,
        ],
        run=False,
    )  # fmt: skip
    devices = _Devices()
    cli.trainer.callbacks.append(devices)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli, devices.seen


def test_activscalar_bf16_mixed_fit_on_gpu(tiny_backbone_dir, tmp_path):
    cli, seen = _fit(
        "configs/ioi/activscalar.yaml", tiny_backbone_dir, tmp_path,
        "--trainer.precision=bf16-mixed", "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1", "--data.num_train=8", "--data.num_val=4",
        "--data.num_test=4", "--data.batch_size=4",
    )  # fmt: skip
    # trained on the GPU, evaluated there at the end of fit (after Lightning's teardown moved
    # the module to the CPU), and left on the CPU as teardown leaves it
    assert seen == {"train": "cuda", "end_of_fit": "cuda"}
    assert next(cli.model.model.parameters()).device.type == "cpu"
    assert all(p.dtype == torch.float32 for p in cli.model.edit.parameters())
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    assert all(v == v for v in metrics["test"].values())  # finite, not NaN
    assert (resolve_run(tmp_path) / "intervention" / "intervention.json").is_file()


def test_w2s_pipeline_on_gpu(tiny_backbone_dir, tmp_path):
    cli, seen = _fit(
        "configs/mwe/w2s_caa.yaml", tiny_backbone_dir, tmp_path,
        "--data.max_examples=20", "--data.behavior=corrigible-neutral-HHH",
        "--data.ood_variants=[]", "--trainer.max_epochs=2", "--model.encoder=lm_internal",
        f"--model.sweep_cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert seen == {"train": "cuda"}  # the predictor trains on the GPU
    metrics = json.loads((resolve_run(tmp_path) / "metrics.json").read_text())
    assert metrics["summary"]["label_layers"]
    assert (resolve_run(tmp_path) / "w2s_predictor" / "w2s_predictor.json").is_file()


def test_austeer_fit_on_gpu_selects_what_the_cpu_selects(tiny_backbone_dir, tmp_path):
    """AUSteer (FFN on ``mlp_out``, all positions, answer-token statistic) on a GPU backbone:
    the momentum counts equal a CPU run's (float noise of another device is counted as zero by
    ``zero_tol``), so the ranking of units and the chosen edit are the same; the search and
    evaluation at the end of fit run on the GPU."""
    from test_austeer_module import _fit as austeer_fit

    from interventions.methods.austeer.units import top_k_units

    runs, seen = {}, {}
    for accel in ("cpu", "gpu"):
        devices = _Devices()
        runs[accel] = austeer_fit(
            "configs/commonsense/austeer_ffn_copa.yaml", tiny_backbone_dir, tmp_path / accel,
            f"--trainer.accelerator={accel}", "--trainer.devices=1", callbacks=[devices],
        )  # fmt: skip
        seen[accel] = devices.seen
    assert seen["gpu"]["end_of_fit"] == "cuda" and seen["cpu"]["end_of_fit"] == "cpu"
    cpu, gpu = runs["cpu"].model, runs["gpu"].model
    for site in cpu.stats.count_pos:
        assert torch.equal(cpu.stats.count_pos[site].cpu(), gpu.stats.count_pos[site].cpu()), site
        assert torch.equal(cpu.stats.count_neg[site].cpu(), gpu.stats.count_neg[site].cpu()), site
    cpu_scores = {s: v.cpu() for s, v in cpu.stats.scores.items()}
    gpu_scores = {s: v.cpu() for s, v in gpu.stats.scores.items()}
    assert top_k_units(cpu_scores, 20) == top_k_units(gpu_scores, 20)
    assert cpu.choice == gpu.choice
    metrics = json.loads((resolve_run(tmp_path / "gpu") / "metrics.json").read_text())
    assert 0.0 <= metrics["test/accuracy"] <= 1.0


def test_austeer_batched_statistics_equal_one_at_a_time_on_gpu():
    """The batch-invariance of the counts (issue 23) holds on a GPU too."""
    from test_austeer import batched_and_single_statistics, noise_pairs

    from interventions.methods.austeer.units import STAT_SITES, ZERO_TOL, top_k_units

    model = tiny_model("llama").to("cuda")
    batched, single = batched_and_single_statistics(model, noise_pairs(), ZERO_TOL)
    for site in STAT_SITES:
        assert torch.equal(batched.count_pos[site], single.count_pos[site]), site
        assert torch.equal(batched.count_neg[site], single.count_neg[site]), site
    assert top_k_units(batched.scores, 50) == top_k_units(single.scores, 50)
