"""Run folders: a fit never overwrites another run's artefacts (issue 20, part 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest

from datamodules import IOIDataModule
from interventions.cli import main
from interventions.methods.scaling.module import InterventionModule
from interventions.reporting.run_folder import (
    claim_version,
    latest_version,
    point_latest,
    resolve_run,
    unique_path,
    version_folder_of,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "ioi" / "activscalar.yaml")


def _cli(subcommand: str, backbone: str, root: Path, *extra: str) -> None:
    main(
        [
            subcommand, "--config", CONFIG, f"--model.backbone={backbone}",
            f"--trainer.default_root_dir={root}", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1",
            "--data.num_train=4", "--data.num_val=2", "--data.num_test=2",
            "--data.batch_size=2", "--model.num_samples=0", *extra,
        ]
    )  # fmt: skip


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: its mtime (ns) and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_claim_version_latest_and_unique_path(tmp_path):
    assert latest_version(tmp_path / "none") is None
    a, b = claim_version(tmp_path), claim_version(tmp_path)
    assert (a.name, b.name) == ("version_0", "version_1")
    (tmp_path / "version_7").mkdir()
    assert claim_version(tmp_path).name == "version_8"  # after the highest, never a gap
    with pytest.raises(FileExistsError, match="version_7 already exists.*--run_version"):
        claim_version(tmp_path, 7)
    assert latest_version(tmp_path).name == "version_8"  # no link yet: the highest
    point_latest(a)
    assert latest_version(tmp_path) == a.resolve() and os.readlink(tmp_path / "latest") == a.name
    point_latest(b)  # replaced, not nested
    assert latest_version(tmp_path) == b.resolve()
    assert resolve_run(tmp_path) == b.resolve() and resolve_run(a) == a
    assert version_folder_of(b / "checkpoints" / "last.ckpt") == b.resolve()
    f = tmp_path / "m.json"
    assert unique_path(f) == f
    f.write_text("{}")
    assert unique_path(f).name == "m-1.json"
    (tmp_path / "m-1.json").write_text("{}")
    assert unique_path(f).name == "m-2.json"


def test_second_fit_gets_its_own_folder_and_test_never_touches_the_fit(tiny_backbone_dir, tmp_path):
    root = tmp_path / "runs" / "ioi"
    _cli("fit", tiny_backbone_dir, root, "--trainer.max_steps=2")
    first = root / "version_0"
    for name in ("config.yaml", "metrics.json", "intervention/intervention.json"):
        assert (first / name).is_file(), name
    assert (first / "checkpoints" / "last.ckpt").is_file()
    assert latest_version(root) == first.resolve()
    before = _snapshot(first)

    # the same config again: a new folder; the first run's files are byte-for-byte unchanged
    _cli("fit", tiny_backbone_dir, root, "--trainer.max_steps=3")
    second = root / "version_1"
    assert latest_version(root) == second.resolve()
    assert _snapshot(first) == before
    assert sorted(p.name for p in (second / "checkpoints").iterdir() if "last" in p.name) == [
        "last.ckpt"
    ]  # no last-v1.ckpt beside a stale last.ckpt
    m1 = json.loads((first / "metrics.json").read_text())
    m2 = json.loads((second / "metrics.json").read_text())
    assert m1["fit_wall_time_s"] != m2["fit_wall_time_s"]

    # test evaluates the first run's checkpoint and writes beside it, config untouched
    ckpt = first / "checkpoints" / "last.ckpt"
    _cli("test", tiny_backbone_dir, root, f"--ckpt_path={ckpt}")
    _cli("test", tiny_backbone_dir, root, f"--ckpt_path={ckpt}")
    after = _snapshot(first)
    assert {k: v for k, v in after.items() if not k.startswith("test_metrics")} == before
    results = sorted(p.name for p in first.glob("test_metrics*.json"))
    assert results == ["test_metrics-1.json", "test_metrics.json"]
    values = json.loads((first / "test_metrics.json").read_text())
    assert 0.0 <= values["test/flip_rate"] <= 1.0
    assert not list(second.glob("test_metrics*"))  # the checkpoint's folder, not the latest


def test_resume_continues_in_its_folder_and_keeps_its_config(tiny_backbone_dir, tmp_path):
    root = tmp_path / "run"
    _cli("fit", tiny_backbone_dir, root, "--trainer.max_epochs=1")
    folder = root / "version_0"
    config = (folder / "config.yaml").read_bytes()
    _cli("fit", tiny_backbone_dir, root, "--trainer.max_epochs=2", "--ckpt_path=last")
    assert not (root / "version_1").exists()
    assert (folder / "config.yaml").read_bytes() == config  # the resumed fit saved its own
    assert "max_epochs: 2" in (folder / "config-1.yaml").read_text()


def test_run_version_names_the_folder(tiny_backbone_dir, tmp_path):
    root = tmp_path / "run"
    _cli("fit", tiny_backbone_dir, root, "--trainer.max_steps=1", "--run_version=4")
    assert (root / "version_4" / "metrics.json").is_file()
    with pytest.raises(FileExistsError, match="version_4 already exists"):
        _cli("fit", tiny_backbone_dir, root, "--trainer.max_steps=1", "--run_version=4")
    assert json.loads((root / "version_4" / "metrics.json").read_text())  # still there


def test_failed_fit_leaves_earlier_runs_and_latest_alone(tiny_backbone_dir, tmp_path):
    root = tmp_path / "run"
    _cli("fit", tiny_backbone_dir, root, "--trainer.max_steps=1")
    before = _snapshot(root / "version_0")
    with pytest.raises(ValueError):  # a bad setting found only once fit runs
        _cli("fit", tiny_backbone_dir, root, "--trainer.max_steps=1", "--data.fixed_length=false")
    assert _snapshot(root / "version_0") == before
    assert latest_version(root) == (root / "version_0").resolve()


def test_plain_trainer_does_not_scatter_files_in_the_working_directory(
    tiny_backbone_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)
    dm = IOIDataModule(backbone=tiny_backbone_dir, num_train=4, num_val=2, num_test=2, batch_size=2)
    module = InterventionModule(backbone=tiny_backbone_dir, num_samples=1, sample_tokens=2)
    trainer = L.Trainer(max_steps=1, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(module, dm)
    trainer.test(module, dm)
    assert sorted(os.listdir(tmp_path)) == ["lightning_logs"]
    (folder,) = (tmp_path / "lightning_logs").iterdir()
    assert folder.name == "version_0"
    for name in ("metrics.json", "intervention", "plots", "samples.md", "test_metrics.json"):
        assert (folder / name).exists(), name
    # a second plain fit: its own version
    module2 = InterventionModule(backbone=tiny_backbone_dir, num_samples=0)
    L.Trainer(max_steps=1, enable_progress_bar=False, accelerator="cpu", logger=False).fit(
        module2, dm
    )
    second = tmp_path / "lightning_logs" / "version_1"
    assert (second / "metrics.json").is_file()
    assert list((second / "checkpoints").glob("*.ckpt"))  # not ./checkpoints
    assert sorted(os.listdir(tmp_path)) == ["lightning_logs"]
