"""The three-term trainer: gradients, checkpoints, resume, export, the CLI, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import random_batch

from datamodules import IOIDataModule
from interventions.core.hooks import attach, last_token_logits
from interventions.edits.artifact import load_intervention, save_intervention
from interventions.methods.scaling.module import InterventionModule
from interventions.reporting.run_folder import resolve_run

ROOT = Path(__file__).resolve().parents[1]


def _module(backbone, **kw):
    kw.setdefault("num_positions", 6)
    return InterventionModule(backbone=backbone, **kw)


def _batch(n=4, length=6, seed=0):
    ids, mask, _ = random_batch(n, [length] * n, "left", seed=seed)
    g = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=ids + 1000,
        attention_mask=mask,
        correct_id=torch.randint(0, 5000, (n,), generator=g),
        wrong_id=torch.randint(5000, 10000, (n,), generator=g),
    )


@pytest.mark.parametrize("edit", ["activscalar", "steervec", "dynscalar"])
def test_loss_gradient_matches_finite_differences(tiny_backbone_dir, edit):
    module = _module(
        tiny_backbone_dir,
        edit=edit,
        sites=["attn_out", "mlp_out", "attn_z"],
        positions="all",
        lambda_f=0.7,
        lambda_m=0.3,
        margin=5.0,
    ).to(torch.float64)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in module.edit.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    batch = _batch()
    parts, _ = module.loss(batch)
    parts["loss"].backward()
    # Llama's RMSNorm and rotary embeddings compute in float32 even in a float64 model, so
    # the step is large enough for float32 rounding (~1e-7) to stay far below the tolerance.
    eps = 1e-3
    for site, p in module.edit.params.items():
        flat = p.detach().view(-1)
        for i in torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(2))[:4]:
            with torch.no_grad():
                old = flat[i].item()
                flat[i] = old + eps
                up = module.loss(batch)[0]["loss"].item()
                flat[i] = old - eps
                down = module.loss(batch)[0]["loss"].item()
                flat[i] = old
            fd = (up - down) / (2 * eps)
            assert p.grad.view(-1)[i].item() == pytest.approx(fd, rel=2e-3, abs=2e-5), site


def test_three_term_loss_by_hand(tiny_backbone_dir):
    """The loss equals Eq. 6 + lambda_F * Eq. 7 + lambda_M * L1 computed independently."""
    module = _module(tiny_backbone_dir, lambda_f=2.0, lambda_m=0.5, margin=1.5).to(torch.float64)
    with torch.no_grad():
        for p in module.edit.parameters():
            p.normal_(0, 0.5)
    batch = _batch()
    parts, _ = module.loss(batch)
    model, edit = module.model, module.edit
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = {}
    for beta in (1.0, -1.0, 0.0):
        with attach(model, edit, beta=beta):
            logits[beta] = last_token_logits(model, ids, mask)
    hinge, kl = 0.0, 0.0
    for n in range(ids.shape[0]):
        c, w = batch["correct_id"][n], batch["wrong_id"][n]
        fp, fn, f = logits[1.0][n], logits[-1.0][n], logits[0.0][n]
        hinge += max(0.0, fp[w] - fp[c] + 1.5) + max(0.0, fn[c] - fn[w] + 1.5)
        q = torch.softmax(f, -1)
        for g in (fp, fn):
            pr = torch.softmax(g, -1)
            kl += float((pr * (pr / q).log()).sum())
    l1 = sum(float(p.abs().sum()) for p in edit.parameters())
    expected = hinge / 4 + 2.0 * kl / 4 + 0.5 * l1
    assert parts["loss"].item() == pytest.approx(float(expected), rel=1e-6)


def _datamodule(backbone, **kw):
    kw = dict(dict(num_train=8, num_val=4, num_test=4, batch_size=8), **kw)
    return IOIDataModule(backbone=backbone, **kw)


def _trainer(root, **kw):
    return L.Trainer(
        default_root_dir=str(root),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)],
        **kw,
    )


def test_checkpoint_has_no_backbone_and_resume_continues(tiny_backbone_dir, tmp_path):
    L.seed_everything(0)
    module = InterventionModule(backbone=tiny_backbone_dir, lr=0.05)
    _trainer(tmp_path / "a", max_epochs=2).fit(module, _datamodule(tiny_backbone_dir))
    ckpt = torch.load(tmp_path / "a" / "ckpt" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == {"edit.params.attn_out", "edit.params.mlp_out"}
    assert ckpt["hyper_parameters"]["backbone"] == tiny_backbone_dir
    assert ckpt["hyper_parameters"]["num_positions"] == module.edit.num_positions
    # a checkpoint reloads the backbone by name and restores the parameters
    reloaded = InterventionModule.load_from_checkpoint(tmp_path / "a" / "ckpt" / "last.ckpt")
    for site, p in module.edit.params.items():
        assert torch.equal(reloaded.edit.params[site], p)
    # resume 2 -> 4 epochs equals an uninterrupted 4-epoch run (Adam state included)
    resumed = InterventionModule(backbone=tiny_backbone_dir, lr=0.05)
    trainer = _trainer(tmp_path / "a", max_epochs=4)
    trainer.fit(resumed, _datamodule(tiny_backbone_dir), ckpt_path="last")
    assert trainer.global_step == 4
    L.seed_everything(0)
    straight = InterventionModule(backbone=tiny_backbone_dir, lr=0.05)
    _trainer(tmp_path / "b", max_epochs=4).fit(straight, _datamodule(tiny_backbone_dir))
    for site, p in straight.edit.params.items():
        torch.testing.assert_close(resumed.edit.params[site], p)
        assert not torch.equal(p, module.edit.params[site])
    # fit end exported the intervention, metrics and plots into the run folder
    run = tmp_path / "b"
    assert (resolve_run(run) / "intervention" / "intervention.safetensors").is_file()
    metrics = json.loads((resolve_run(run) / "metrics.json").read_text())
    assert set(metrics) == {"train", "val", "test", "fit_wall_time_s"}
    assert metrics["fit_wall_time_s"] > 0
    assert -1e9 < metrics["test"]["effectiveness"] <= 0
    assert metrics["test"]["num_parameters"] == module.edit.num_parameters()
    assert (resolve_run(run) / "plots" / "heatmap.png").stat().st_size > 1000
    assert (resolve_run(run) / "plots" / "logits_vs_beta.png").stat().st_size > 1000
    # steered text of the first num_samples (default 4) test prompts at beta = +1, 0, -1
    samples = (resolve_run(run) / "samples.md").read_text()
    assert samples.count("## Prompt") == 4
    assert samples.count("| +1 |") == samples.count("| +0 |") == samples.count("| -1 |") == 4


@pytest.mark.parametrize("edit", ["activscalar", "steervec", "dynscalar"])
def test_export_load_gives_identical_logits(tiny_backbone_dir, tmp_path, edit):
    module = _module(tiny_backbone_dir, edit=edit, sites=["resid_post", "attn_z"])
    with torch.no_grad():
        for p in module.edit.parameters():
            p.normal_(0, 0.3)
    save_intervention(module.edit, tmp_path / "x", backbone=tiny_backbone_dir)
    assert sorted(os.listdir(tmp_path / "x")) == ["intervention.json", "intervention.safetensors"]
    loaded = load_intervention(tmp_path / "x")
    assert type(loaded) is type(module.edit)
    batch = _batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with attach(module.model, module.edit, beta=-1.0):
        a = last_token_logits(module.model, ids, mask)
    with attach(module.model, loaded, beta=-1.0):
        b = last_token_logits(module.model, ids, mask)
    assert torch.equal(a, b)


def test_bad_intervention_files(tiny_backbone_dir, tmp_path):
    module = _module(tiny_backbone_dir)
    folder = save_intervention(module.edit, tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="No intervention at"):
        load_intervention(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No intervention.json"):
        load_intervention(tmp_path / "empty")
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "intervention.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_intervention(bad)
    (bad / "intervention.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a learned-interventions file"):
        load_intervention(bad)
    meta = json.loads((folder / "intervention.json").read_text())
    (bad / "intervention.json").write_text(json.dumps(dict(meta, type="lora")))
    with pytest.raises(ValueError, match="type 'lora'.*activscalar"):
        load_intervention(bad)
    (bad / "intervention.json").write_text(json.dumps(meta))
    (bad / "intervention.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_intervention(bad)
    meta["config"]["sites"] = ["resid_post"]
    (bad / "intervention.json").write_text(json.dumps(meta))
    (bad / "intervention.safetensors").write_bytes(
        (folder / "intervention.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="do not belong together"):
        load_intervention(bad)
    # unknown keys in newer files are tolerated
    meta = json.loads((folder / "intervention.json").read_text())
    (folder / "intervention.json").write_text(json.dumps(dict(meta, future_field=[1, 2])))
    assert load_intervention(folder).num_parameters() == module.edit.num_parameters()


def test_unequal_prompt_lengths_for_position_tied_edit(tiny_backbone_dir):
    module = _module(tiny_backbone_dir)
    ids, mask, _ = random_batch(2, [5, 6], "left")
    batch = dict(input_ids=ids, attention_mask=mask, correct_id=ids[:, 0], wrong_id=ids[:, 1])
    with pytest.raises(ValueError, match=r"6 prompt positions.*\[5, 6\] tokens.*fixed_length"):
        module.loss(batch)


def test_position_tied_edit_needs_fixed_length(tiny_backbone_dir, tmp_path):
    module = InterventionModule(backbone=tiny_backbone_dir)
    dm = _datamodule(tiny_backbone_dir, fixed_length=False)
    with pytest.raises(ValueError, match="fixed_length=true"):
        _trainer(tmp_path, max_steps=1).fit(module, dm)


def test_train_py_fit_subprocess(tiny_backbone_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "fit",
        "--config",
        str(ROOT / "configs" / "ioi" / "activscalar.yaml"),
        f"--model.backbone={tiny_backbone_dir}",
        f"--trainer.default_root_dir={run}",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--data.num_train=8",
        "--data.num_val=4",
        "--data.num_test=4",
        "--data.batch_size=4",
    ]
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (resolve_run(run) / "config.yaml").is_file()
    assert (resolve_run(run) / "checkpoints" / "last.ckpt").is_file()
    assert (resolve_run(run) / "intervention" / "intervention.json").is_file()
    assert list((resolve_run(run) / "wandb").glob("offline-run-*"))
    assert (run / "latest").resolve() == (run / "version_0").resolve()
    meta = json.loads((resolve_run(run) / "intervention" / "intervention.json").read_text())
    assert meta["type"] == "activscalar" and meta["backbone"] == tiny_backbone_dir
    ckpt = torch.load(resolve_run(run) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    # --print_config works and shows the linked backbone
    printed = subprocess.run(
        cmd[:5] + ["--print_config"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "class_path: interventions.methods.scaling.InterventionModule" in printed.stdout


@pytest.mark.parametrize(
    "config",
    sorted(
        str(p.relative_to(ROOT))
        for task in ("ioi", "ccc")
        for p in (ROOT / "configs" / task).rglob("*.yaml")
    ),
)
def test_every_config_runs(config, tiny_backbone_dir, tmp_path):
    """Each activation-scaling config parses and trains a step (tiny backbone, small splits); the
    MWE configs have their own test in test_w2s_pipeline.py."""
    from interventions.cli import build_cli

    cli = build_cli(
        [
            "--config", str(ROOT / config),
            f"--model.backbone={tiny_backbone_dir}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=1", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1",
            "--data.num_train=4", "--data.num_val=2", "--data.num_test=2",
        ],
        run=False,
    )  # fmt: skip
    assert cli.datamodule.backbone == tiny_backbone_dir  # linked to model.backbone
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 1
    meta = json.loads((resolve_run(tmp_path) / "intervention" / "intervention.json").read_text())
    assert meta["type"] == cli.model.hparams.edit


def test_fit_with_plain_dataloaders_still_exports(tiny_backbone_dir, tmp_path):
    dm = _datamodule(tiny_backbone_dir)
    module = InterventionModule(backbone=tiny_backbone_dir, num_positions=dm.prompt_length)
    _trainer(tmp_path, max_steps=1).fit(module, dm.train_dataloader(), dm.val_dataloader())
    assert (
        load_intervention(resolve_run(tmp_path) / "intervention").num_parameters()
        == module.edit.num_parameters()
    )
    assert not (resolve_run(tmp_path) / "metrics.json").exists()


def test_sites_are_checked_before_the_backbone_loads(tiny_backbone_dir, monkeypatch):
    """One site name is accepted like a one-item list; an unknown site is a one-line ConfigError
    (with the nearest valid name) raised before any backbone is loaded, in every module that
    takes sites."""
    from interventions.core import backbone as backbone_module
    from interventions.core.errors import ConfigError
    from interventions.methods.attribution.module import AttributionScalarModule

    module = _module(tiny_backbone_dir, sites="attn_out")
    assert module.sites == ["attn_out"] and module.edit.sites == ["attn_out"]

    def no_load(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the sites were checked")

    monkeypatch.setattr(backbone_module, "load_backbone_from", no_load)
    for make in (
        lambda: InterventionModule(backbone=tiny_backbone_dir, sites=["attn_out", "mlp"]),
        lambda: AttributionScalarModule(backbone=tiny_backbone_dir, sites=["attn_out", "mlp"]),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        message = str(info.value)
        assert "\n" not in message and "'mlp'" in message and "Did you mean 'mlp_out'" in message
    with pytest.raises(ConfigError, match="site 'attn_z' is not supported"):
        AttributionScalarModule(backbone=tiny_backbone_dir, sites="attn_z")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.sites=[attn_out, mlp]"], "Unknown site 'mlp'"),
        (["--model.backbone=smollm2-135m-instrcut"], "Did you mean 'smollm2-135m-instruct'"),
        (["--data.num_train=0"], "IOIDataModule has an empty training split"),
    ],
)
def test_cli_config_errors_are_found_under_jsonargparse(
    tiny_backbone_dir, tmp_path, args, expected
):
    """Through the CLI, a bad site or backbone (raised while jsonargparse builds the model) and
    an empty training split (raised by fit) are a ConfigError that find_config_error digs out of
    jsonargparse's wrapper, for the CLI's main() to print as one line."""
    from interventions.cli import build_cli
    from interventions.core.errors import find_config_error

    base = [
        "fit", "--config", str(ROOT / "configs" / "ioi" / "activscalar.yaml"),
        f"--model.backbone={tiny_backbone_dir}", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--data.num_train=4", "--data.num_val=2", "--data.num_test=2",
    ]  # fmt: skip
    with pytest.raises(Exception) as info:
        build_cli(base + args)
    found = find_config_error(info.value)
    assert found is not None, info.value
    assert expected in str(found) and "\n" not in str(found)


def test_cli_refuses_an_unsupported_architecture_in_one_line(tmp_path):
    from interventions.cli import build_cli
    from interventions.core.errors import find_config_error

    backbone = tmp_path / "opt"
    backbone.mkdir()
    (backbone / "config.json").write_text(json.dumps({"model_type": "opt"}))
    args = [
        "fit", "--config", str(ROOT / "configs" / "ioi" / "activscalar.yaml"),
        f"--model.backbone={backbone}", f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.logger=false",
    ]  # fmt: skip
    with pytest.raises(ValueError) as info:
        build_cli(args)
    found = find_config_error(info.value)
    assert found is not None and "\n" not in str(found)
    assert "'opt' (config.model_type)" in str(found)
    assert "add a row to ARCHITECTURES in interventions/core/sites.py" in str(found)
