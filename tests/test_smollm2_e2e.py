"""End to end on the real SmolLM2-135M-Instruct (packaged GGUF, cached as safetensors)."""

from __future__ import annotations

import lightning as L
import torch

from datamodules import IOIDataModule
from interventions.core.hooks import attach, last_token_logits
from interventions.edits.artifact import load_intervention
from interventions.methods.scaling.module import InterventionModule
from interventions.reporting.run_folder import resolve_run


def test_activscalar_learns_to_flip_ioi_on_smollm2(tmp_path):
    L.seed_everything(0)
    dm = IOIDataModule(num_train=16, num_val=16, num_test=16, batch_size=16)
    module = InterventionModule(lr=0.03, lambda_m=0.001, num_positions=_setup(dm).prompt_length)
    before = module.evaluate(dm.val_dataloader())
    assert before["flip_rate"] == 0.0  # SmolLM2 prefers IO: nothing flips without training
    assert before["logit_diff_clean"] > 1.0
    trainer = L.Trainer(
        max_epochs=8,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    after = module.evaluate(dm.train_dataloader())
    val = module.evaluate(dm.val_dataloader())
    assert after["flip_rate"] >= 0.75, after
    assert val["effectiveness"] > before["effectiveness"] / 2, (before, val)
    assert module.edit.num_parameters() == 30 * 2 * 15  # layers x sites x prompt tokens

    # the exported edit steers generation: beta=+1 keeps " Mary"-like IO answers, beta=-1 flips
    edit = load_intervention(resolve_run(tmp_path) / "intervention")
    batch = next(iter(dm.train_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with attach(module.model, edit, beta=-1.0):
        neg = last_token_logits(module.model, ids, mask)
        generated = module.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False
        )
    rows = torch.arange(ids.shape[0])
    flipped = neg[rows, batch["wrong_id"]] > neg[rows, batch["correct_id"]]
    assert flipped.float().mean() >= 0.75
    # greedy generation picks the wrong (subject) name wherever it beats the correct one
    first = generated[:, -1]
    assert bool((first[flipped] != batch["correct_id"][flipped]).all())


def _setup(dm: IOIDataModule) -> IOIDataModule:
    dm.setup("fit")
    return dm
