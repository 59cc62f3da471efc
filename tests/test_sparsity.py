"""Real sparsity and fewer passes for the three-term trainer: the proximal L1 step, cached clean
logits, early stopping."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import random_batch
from test_training import _batch, _datamodule, _trainer
from torch.utils.data import DataLoader

from interventions.core.hooks import attach, last_token_logits
from interventions.evaluation.objectives import objective_terms, soft_threshold_
from interventions.methods.scaling.module import InterventionModule


def test_soft_threshold_by_hand():
    theta = torch.tensor([0.5, -0.3, 0.05, -0.02, 0.0, 0.1])
    soft_threshold_([theta], 0.1)
    # sign(theta) * max(|theta| - 0.1, 0), worked by hand
    assert theta.tolist() == pytest.approx([0.4, -0.2, 0.0, 0.0, 0.0, 0.0], abs=1e-7)
    assert (theta[2:] == 0).all()  # exact zeros, not 1e-9
    soft_threshold_([theta], 0.1)  # zeros stay zero; the others keep shrinking
    assert theta.tolist() == pytest.approx([0.3, -0.1, 0.0, 0.0, 0.0, 0.0], abs=1e-7)
    assert (theta[2:] == 0).all() and theta.signbit()[1]
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        soft_threshold_([theta], -1.0)


def _one_batch_loader(batch):
    return DataLoader([batch], batch_size=None)


@pytest.mark.parametrize("lambda_m", [0.3, 2.0])
def test_proximal_step_is_adam_then_soft_threshold(tiny_backbone_dir, tmp_path, lambda_m):
    """One training step with sparsity=proximal equals an Adam step on the loss without L1,
    followed by the closed-form soft threshold at lr * lambda_M (computed here by hand)."""
    L.seed_everything(0)
    kw = dict(num_positions=6, lr=0.05, lambda_m=lambda_m, sparsity="proximal", init_std=0.05)
    module = InterventionModule(backbone=tiny_backbone_dir, **kw)
    reference = copy.deepcopy(module.edit)
    batch = _batch()
    # by hand: the loss without L1 (the proximal step handles it), Adam, then soft threshold
    hand = InterventionModule(backbone=tiny_backbone_dir, **kw)
    hand.edit.load_state_dict(reference.state_dict())
    parts, _ = hand.loss(batch)  # in proximal mode: hinge + lambda_F * KL, no L1
    opt = torch.optim.Adam(hand.edit.parameters(), lr=0.05)
    parts["loss"].backward()
    opt.step()
    threshold = 0.05 * lambda_m
    expected = {
        site: torch.sign(p) * torch.clamp(p.detach().abs() - threshold, min=0)
        for site, p in hand.edit.params.items()
    }
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, _one_batch_loader(batch))
    zeros = 0
    for site, p in module.edit.params.items():
        torch.testing.assert_close(p.detach(), expected[site], atol=1e-7, rtol=0)
        zeros += int((p == 0).sum())
    # exact zeros where the hand computation has them: every value within the threshold
    expected_zeros = sum(int((e == 0).sum()) for e in expected.values())
    assert zeros == expected_zeros
    total = module.edit.num_parameters()
    if lambda_m == 2.0:  # threshold 0.1 > Adam's first step (0.05) + most |init| (sigma 0.05)
        assert zeros > total // 2
    # minimality counts exact zeros and |theta| < 0.01 as negligible
    assert module.edit.count_nonnegligible() == sum(
        int((e.abs() >= 0.01).sum()) for e in expected.values()
    )


def test_penalty_mode_keeps_l1_in_the_loss(tiny_backbone_dir):
    kw = dict(backbone=tiny_backbone_dir, num_positions=6, lambda_m=0.5, init_std=0.3)
    a = InterventionModule(**kw)
    b = InterventionModule(**kw, sparsity="proximal")
    b.edit.load_state_dict(a.edit.state_dict())
    batch = _batch()
    pa, pb = a.loss(batch)[0], b.loss(batch)[0]
    assert float(pa["l1"]) > 1.0
    assert float(pa["loss"] - pb["loss"]) == pytest.approx(0.5 * float(pa["l1"]), rel=1e-5)
    with pytest.raises(ValueError, match="sparsity must be 'penalty' or 'proximal'"):
        InterventionModule(backbone=tiny_backbone_dir, num_positions=6, sparsity="l0")


def test_cached_clean_logits_equal_recomputed(tiny_backbone_dir):
    cached = InterventionModule(backbone=tiny_backbone_dir, num_positions=6, init_std=0.3)
    plain = InterventionModule(
        backbone=tiny_backbone_dir, num_positions=6, init_std=0.3, cache_clean_logits=False
    )
    plain.edit.load_state_dict(cached.edit.state_dict())
    batch = _batch(n=4)
    rows = []
    hook = cached.model.register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        first = cached.three_way_logits(batch)
        second = cached.three_way_logits(batch)
        # the same prompts shuffled and in another batch with a new one: only the new one runs
        ids, mask, _ = random_batch(1, [6], "left", seed=7)
        mixed = {
            "input_ids": torch.cat([batch["input_ids"].flip(0), ids + 1000]),
            "attention_mask": torch.cat([batch["attention_mask"], mask]),
        }
        third = cached.three_way_logits(mixed)
    finally:
        hook.remove()
    # first call: 4 clean rows + 8 edited rows; then only edited rows; then 1 new clean row
    assert rows == [4, 8, 8, 1, 10]
    assert len(cached._clean_cache) == 5
    reference = plain.three_way_logits(batch)
    for got, again, want in zip(first, second, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(got, again)
    unedited = last_token_logits(plain.model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(first[2], unedited, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(third[2][:4], first[2].flip(0), atol=0, rtol=0)
    assert not first[2].requires_grad and first[0].requires_grad


def test_one_pass_evaluation_equals_separate_passes(tiny_backbone_dir):
    """evaluate_with_curve (one pass; beta = 0 and +-1 logits shared with the metrics) gives the
    metrics of the three-way step and the curve of a plain loop over every beta."""
    module = InterventionModule(backbone=tiny_backbone_dir, num_positions=6, init_std=0.3)
    batches = [_batch(n=3), _batch(n=2, seed=1)]
    betas = [-2.0, -1.0, 0.0, 0.5, 1.0]
    metrics, curve = module.evaluate_with_curve(batches, betas)
    # independent: the training step's logits for the metrics, one attach per beta for the curve
    sums = {b: [0.0, 0.0] for b in betas}
    flips, kl = [], []
    for batch in batches:
        pos, neg, clean = module.three_way_logits(batch)
        terms = objective_terms(pos, neg, clean, batch["correct_id"], batch["wrong_id"], 1.0)
        flips += terms.flipped.float().tolist()
        kl += terms.kl.tolist()
        rows = torch.arange(batch["input_ids"].shape[0])
        for b in betas:
            with attach(module.model, module.edit, beta=b):
                logits = last_token_logits(
                    module.model, batch["input_ids"], batch["attention_mask"]
                )
            sums[b][0] += float(logits[rows, batch["correct_id"]].sum())
            sums[b][1] += float(logits[rows, batch["wrong_id"]].sum())
    assert metrics["flip_rate"] == pytest.approx(sum(flips) / 5)
    assert metrics["faithfulness"] == pytest.approx(-sum(kl) / 5, rel=1e-4, abs=1e-6)
    assert curve["beta"] == betas
    for i, b in enumerate(betas):
        assert curve["correct"][i] == pytest.approx(sums[b][0] / 5, rel=1e-4, abs=1e-5)
        assert curve["diff"][i] == pytest.approx((sums[b][0] - sums[b][1]) / 5, rel=1e-4, abs=1e-5)
    assert module.evaluate(batches) == metrics
    assert module.logit_diff_by_beta(batches, betas) == curve


@pytest.mark.parametrize("monitor", ["val/flip_rate", "val/loss"])
def test_early_stopping(tiny_backbone_dir, tmp_path, monitor):
    dm = _datamodule(tiny_backbone_dir)
    # an improvement of 1e9 is never reached: stop after patience + 1 validation epochs
    module = InterventionModule(
        backbone=tiny_backbone_dir,
        early_stopping_patience=2,
        early_stopping_monitor=monitor,
        early_stopping_min_delta=1e9,
    )
    trainer = _trainer(tmp_path, max_epochs=10)
    trainer.fit(module, dm)
    assert trainer.current_epoch == 3
    assert monitor in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    (stopper,) = [c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert stopper.monitor == monitor and stopper.mode == (
        "min" if monitor == "val/loss" else "max"
    )
    with pytest.raises(ValueError, match="early_stopping_monitor must be"):
        InterventionModule(backbone=tiny_backbone_dir, early_stopping_monitor="val/l1")
    with pytest.raises(ValueError, match="early_stopping_patience must be >= 1"):
        InterventionModule(backbone=tiny_backbone_dir, early_stopping_patience=0)
