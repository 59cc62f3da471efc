"""Same seed, same precision, same machine: the same learned edit (issue 20, part 2)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules import IOIDataModule
from interventions.methods.scaling.module import InterventionModule


def _fit(backbone: str, root, seed: int, precision: str, **model) -> dict[str, torch.Tensor]:
    L.seed_everything(seed)
    dm = IOIDataModule(
        backbone=backbone, num_train=8, num_val=2, num_test=2, batch_size=4, seed=seed
    )
    module = InterventionModule(
        backbone=backbone, lr=0.05, lambda_m=0.3, sparsity="proximal", num_samples=0, **model
    )
    trainer = L.Trainer(
        default_root_dir=str(root), accelerator="cpu", precision=precision, max_epochs=3,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(module, dm)
    return {site: p.detach().clone() for site, p in module.edit.params.items()}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_same_seed_gives_the_same_scalars(tiny_backbone_dir, tmp_path, precision):
    a = _fit(tiny_backbone_dir, tmp_path / "a", 3, precision, refit_epochs=1)
    b = _fit(tiny_backbone_dir, tmp_path / "b", 3, precision, refit_epochs=1)
    other = _fit(tiny_backbone_dir, tmp_path / "c", 4, precision, refit_epochs=1)
    for site in a:
        assert a[site].abs().max() > 1e-3  # the edit trained
        torch.testing.assert_close(a[site], b[site], rtol=0, atol=1e-6)
    # the seed matters: another one gives another edit (so the check above can fail)
    assert max(float((a[s] - other[s]).abs().max()) for s in a) > 1e-4


def test_refit_keeps_the_support_and_drops_l1(tiny_backbone_dir, tmp_path):
    """The re-fit epochs (refit_epochs) never revive a zeroed scalar and never zero a kept one."""
    L.seed_everything(0)
    dm = IOIDataModule(backbone=tiny_backbone_dir, num_train=8, num_val=2, num_test=2, batch_size=4)
    module = InterventionModule(
        backbone=tiny_backbone_dir, lr=0.05, lambda_m=0.5, sparsity="proximal", num_samples=0,
        refit_epochs=2,
    )  # fmt: skip
    supports: list[list[torch.Tensor]] = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            supports.append([p.detach() != 0 for p in pl_module.edit.params.values()])

    trainer = L.Trainer(
        default_root_dir=str(tmp_path), accelerator="cpu", max_epochs=5, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=1, callbacks=[Watch()],
    )  # fmt: skip
    trainer.fit(module, dm)
    assert module.refit_start_epoch == 3
    fixed = module._support
    assert fixed is not None
    # after each re-fit epoch the nonzero set is exactly the support fixed at its start
    for epoch in (3, 4):
        for now, keep in zip(supports[epoch], fixed, strict=True):
            assert torch.equal(now, keep)
    # in the re-fit phase the loss has no L1 term, also with sparsity="penalty"
    penalty = InterventionModule(
        backbone=tiny_backbone_dir, lambda_m=0.5, sparsity="penalty", num_samples=0,
        num_positions=dm.prompt_length, init_std=0.1,
    )  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        parts, _ = penalty.loss(batch)
        assert float(parts["l1"]) > 0
        hinge_kl = -parts["effectiveness"] - parts["faithfulness"]
        assert float(parts["loss"]) == pytest.approx(float(hinge_kl + 0.5 * parts["l1"]))
        penalty._support = [torch.ones_like(p, dtype=torch.bool) for p in penalty.edit.parameters()]
        parts, _ = penalty.loss(batch)
        assert float(parts["loss"]) == pytest.approx(float(hinge_kl))
